-- wrk script: unique Kourier webhook events with the send time embedded.
--
--   wrk -t2 -c50 -d10s -s bench/events.lua http://127.0.0.1:8080/webhook
--
-- Every request is a `delivery.updated` event with its own delivery_id
-- ("<run>-<thread>-<n>") and `sent_at`: the wall-clock time (epoch
-- microseconds, CLOCK_REALTIME) at which wrk built the request, right before
-- writing it. The bench routes put `{{ sent_at }}` into the notification body,
-- so the sink can compute event-to-notification latency.
--
-- Settings come from the environment (all optional):
--   BENCH_TOKEN    bearer token                       (default bench-token)
--   BENCH_RUN      prefix that makes ids unique per run (default: the time)
--   BENCH_RATE     total events/s over all threads, 0 = as fast as possible
--   BENCH_COUNT    total events to send, 0 = until -d runs out. A thread whose
--                  share is sent keeps its connections on a cheap 404 (every
--                  20 ms) until all its events are answered, then stops and
--                  prints THREADDONE (wrk itself waits for -d or SIGINT:
--                  bench/run.py sends SIGINT once every thread is done)
--   BENCH_THREADS  the -t value (to split RATE and COUNT per thread)
--   BENCH_PAD      extra payload bytes (a `note` field), default 0
--   BENCH_SCATTER  1: delivery ids start with a scrambled number ("D-<8 hex>-…"), so
--                  new deliveries land all over the store's delivery-keyed indexes,
--                  as real ids do, instead of next to each other (bench/timers.py --http)
--
-- done() prints one line `BENCHJSON {...}` with requests, status counts,
-- duration and ack latency percentiles (microseconds) for bench/run.py.

local ffi = require("ffi")
pcall(ffi.cdef, [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]])
local ts = ffi.new("bench_timespec")

local function now_us()
   ffi.C.clock_gettime(0, ts) -- CLOCK_REALTIME, the sink's time.time_ns()
   return tonumber(ts.tv_sec) * 1000000 + math.floor(tonumber(ts.tv_nsec) / 1000)
end

local function env_num(name, default)
   local v = tonumber(os.getenv(name) or "")
   if v == nil then return default end
   return v
end

local token = os.getenv("BENCH_TOKEN") or "bench-token"
local run = os.getenv("BENCH_RUN") or tostring(os.time())
local threads_total = math.max(1, env_num("BENCH_THREADS", 1))
local rate = env_num("BENCH_RATE", 0) / threads_total
local count_total = env_num("BENCH_COUNT", 0)
local quota = 0 -- this thread's share of BENCH_COUNT, set in init()
local pad = string.rep("x", env_num("BENCH_PAD", 0))
local scatter = os.getenv("BENCH_SCATTER") == "1"
local interval_ms = 0
if rate > 0 then interval_ms = 1000.0 / rate end

-- main state: number the threads and collect them for done()
local threads = {}
local next_id = 0

function setup(thread)
   thread:set("id", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

-- thread state
id = 0
sent = 0
accepted = 0
answered = 0
other = 0
rejected = 0
local stopped = false
local next_slot = 0
local headers = nil
local stamp = nil
local path = nil

local verify_pending = false

function init(args)
   -- wrk 4 calls request() once on thread 0 right after init() to check the
   -- request parses; that one is never sent, so it must not count
   verify_pending = (id == 0)
   if count_total > 0 then
      quota = math.floor(count_total / threads_total)
      if id < count_total % threads_total then quota = quota + 1 end
   end
   path = wrk.path
   headers = {
      ["Content-Type"] = "application/json",
      ["Authorization"] = "Bearer " .. token,
   }
   stamp = os.date("!%Y-%m-%dT%H:%M:%SZ")
end

function delay()
   if quota > 0 and sent >= quota then return 20 end -- idle fillers until the last answers
   if interval_ms <= 0 then return 0 end
   local t = now_us() / 1000.0
   if next_slot < t then next_slot = t end
   local d = next_slot - t
   next_slot = next_slot + interval_ms
   return math.floor(d)
end

function request()
   if verify_pending then
      verify_pending = false
      return wrk.format("GET", "/-bench-verify")
   end
   if quota > 0 and sent >= quota then
      -- share sent: keep the connection busy with a cheap 404 until every event is answered
      return wrk.format("GET", "/-bench-idle")
   end
   sent = sent + 1
   local delivery = string.format("%s-%d-%d", run, id, sent)
   if scatter then  -- Knuth's multiplicative hash: a bijection on 32 bits, exact in doubles
      delivery = string.format("D-%08x-%s", (sent * 2654435761) % 4294967296, delivery)
   end
   local body
   if #pad > 0 then
      body = string.format(
         '{"event":"delivery.updated","delivery_id":"%s","timestamp":"%s",' ..
         '"status":"in_transit","sent_at":%.0f,"note":"%s"}',
         delivery, stamp, now_us(), pad)
   else
      body = string.format(
         '{"event":"delivery.updated","delivery_id":"%s","timestamp":"%s",' ..
         '"status":"in_transit","sent_at":%.0f}',
         delivery, stamp, now_us())
   end
   return wrk.format("POST", path, headers, body)
end

function response(status, headers, body)
   if status == 404 then return end -- an idle filler
   answered = answered + 1
   if status == 202 or status == 200 then
      accepted = accepted + 1
   elseif status >= 400 then
      rejected = rejected + 1
   else
      other = other + 1
   end
   if quota > 0 and sent >= quota and answered >= sent and not stopped then
      stopped = true
      wrk.thread:stop()
      io.write("THREADDONE\n") -- bench/run.py interrupts wrk once every thread is done
      io.flush()
   end
end

function done(summary, latency, requests)
   local s, a, r, o = 0, 0, 0, 0
   for _, t in ipairs(threads) do
      s = s + (t:get("sent") or 0)
      a = a + (t:get("accepted") or 0)
      r = r + (t:get("rejected") or 0)
      o = o + (t:get("other") or 0)
   end
   local e = summary.errors
   io.write(string.format(
      'BENCHJSON {"requests":%d,"sent":%d,"accepted":%d,"rejected":%d,"other":%d,' ..
      '"duration_us":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,' ..
      '"timeout":%d},"latency_us":{"min":%d,"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,' ..
      '"p999":%d,"max":%d}}\n',
      summary.requests, s, a, r, o, summary.duration,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.min, latency.mean, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency:percentile(99.9), latency.max))
end
