"""Ingest with a million armed timers against none (issue 14): events/s, claims, memory.

Runs the real store (SQLite by default, or `--store postgresql://…`, in a
throwaway schema) the way ingest calls it: one `accept` per event, each arming
a watch timer, many in flight at once so commits are grouped as under load.
The armed timers are written straight into the table first (as that many
earlier events would have left them): keyed by delivery ids of the same shape
as the new events' (hashes, so new rows land all over the key and delivery
indexes, as real ids do), due over the next 4 hours but the first 50, which
are due now. After ingest it times the worker's claim: the 50 due ones out
of everything armed, then a claim that finds nothing. `--stored` puts that
many earlier deliveries' events (and their `deliveries` rows) in both stores
first, so the run without timers is a store of the same size, as a relay
with a million armed watches would have.
Not a test: run it on a quiet machine, `make bench-timers` or
`python bench/timers.py --armed 1000000`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import re
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import quote, urlsplit

from relay.events import event_from_dict
from relay.message import Message
from relay.pipeline import Notification
from relay.store import Store, TimerOp, open_store

T0 = 1_800_000_000.0
DUE_NOW = 50  # preloaded timers that are due when the claim is timed
AFTER = 4 * 3600.0
CONTEXT = '{"watch": "w"}'


def delivery(n: int) -> str:
    """Delivery n's id; the same function as PostgreSQL's `left(md5(n::text), 12)`."""
    return "D-" + hashlib.md5(str(n).encode()).hexdigest()[:12]


def preload_sqlite(path: Path, armed: int, stored: int) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO events (id, dedup_key, type, delivery_id, received_at, payload)"
                     " VALUES (1, 'preload', 'delivery.created', 'p', ?, '{}')", (T0,))
        conn.executemany(
            "INSERT INTO events (id, dedup_key, type, delivery_id, received_at, payload)"
            " VALUES (?, ?, 'delivery.created', ?, ?, '{}')",
            ((n + 2, f"old{n}", delivery(n), T0 - 60) for n in range(stored)))
        conn.executemany(
            "INSERT INTO deliveries (delivery_id, newest, cancelled, last_event_id)"
            " VALUES (?, ?, 0, ?)", ((delivery(n), T0 - 60, n + 2) for n in range(stored)))
        conn.executemany(
            "INSERT INTO timers (kind, key, delivery_id, event_id, due_at, armed_at, context)"
            " VALUES ('watch', ?, ?, 1, ?, ?, ?)",
            ((f"w:{d}", d, _due(n, armed), T0, CONTEXT)
             for n, d in ((n, delivery(n)) for n in range(armed))))


async def preload_postgres(dsn: str, armed: int, stored: int) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        event_id = await conn.fetchval(
            "INSERT INTO events (dedup_key, type, delivery_id, received_at, payload)"
            " VALUES ('preload', 'delivery.created', 'p', $1, '{}') RETURNING id", T0)
        await conn.execute(
            "INSERT INTO events (dedup_key, type, delivery_id, received_at, payload)"
            " SELECT 'old' || n, 'delivery.created', 'D-' || left(md5(n::text), 12), $1, '{}'"
            " FROM generate_series(0, $2 - 1) AS n", T0 - 60, stored)
        await conn.execute(
            "INSERT INTO deliveries (delivery_id, newest, cancelled, last_event_id)"
            " SELECT delivery_id, received_at, false, id FROM events WHERE dedup_key LIKE 'old%'")
        await conn.execute(
            "INSERT INTO timers (kind, key, delivery_id, event_id, due_at, armed_at, context)"
            " SELECT 'watch', 'w:D-' || left(md5(n::text), 12), 'D-' || left(md5(n::text), 12),"
            " $5, CASE WHEN n < $3 THEN $1 - 1 ELSE $1 + $6::float8 * n / $2 END, $1, $4"
            " FROM generate_series(0, $2 - 1) AS n", T0, armed, DUE_NOW, CONTEXT, event_id,
            AFTER)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


def _due(n: int, armed: int) -> float:
    """Due now for the first few, else spread over the next `AFTER` (armed before T0)."""
    return T0 - 1 if n < DUE_NOW else T0 + AFTER * n / armed


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


EVENT_AT = 1_800_000_000.0  # 2027-01-15T08:00:00Z, the events' timestamp


async def ingest(store: Store, first: int, events: int, concurrency: int) -> float:
    """Events of `events` new deliveries (numbered from `first`), each arming a watch."""
    jobs = [Notification("hook", 0, "r", Message("t", "b", "info", "text"))]
    sem = asyncio.Semaphore(concurrency)

    async def one(n: int) -> None:
        d = delivery(n)
        event = event_from_dict({"event": "delivery.created", "delivery_id": d,
                                 "timestamp": "2027-01-15T08:00:00Z"})
        async with sem:
            await store.accept(event, f"bench{n}", jobs, now=T0, timers=[
                TimerOp("arm", "watch", f"w:{d}", d, delay=AFTER,
                        # as relay.watches makes them: ordered by the event's timestamp
                        context={"watch": "w", "event_at": EVENT_AT})])

    start = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(first, first + events)))
    return events / (time.perf_counter() - start)


async def claims(store: Store, expected: int) -> tuple[float, float]:
    """ms for the claim of the due timers, and the median ms of 20 claims that find none."""
    t = time.perf_counter()
    due = await store.claim_timers(limit=DUE_NOW, now=T0, lease=30, owner="bench")
    first = (time.perf_counter() - t) * 1000
    assert len(due) == expected, f"claimed {len(due)} due timers, expected {expected}"
    idle = []
    for _ in range(20):
        t = time.perf_counter()
        assert await store.claim_timers(limit=DUE_NOW, now=T0, lease=30, owner="bench") == []
        idle.append((time.perf_counter() - t) * 1000)
    return first, statistics.median(idle)


HTTP_CONFIG = """\
server: {{listen: "127.0.0.1:{port}", tokens: ["bench-token"]}}
store: {{url: "sqlite:{db}", max_backlog: 10000000}}
receivers:
  - {{name: hook, urls: ["json://127.0.0.1:9/down"]}}
routes:
  - {{name: r, match: {{}}, receivers: [hook], title: "{{{{ delivery_id }}}}"}}
watches:
  - name: w
    start: {{event: delivery.updated}}
    stop: [{{event: delivery.cancelled}}]
    after: 4h
    receivers: [hook]
"""


def http_ingest(db: Path, seconds: int) -> str:
    """The real relay on the preloaded file, wrk @50 with bench/events.lua for `seconds`:
    every event is a new delivery that arms the watch; the receiver is down (ingest only)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = db.parent / "relay.yaml"
    config.write_text(HTTP_CONFIG.format(port=port, db=db))
    relay = subprocess.Popen([sys.executable, "-m", "relay", "serve", "-c", str(config)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        env = {**os.environ, "BENCH_TOKEN": "bench-token", "BENCH_RUN": f"h{time.time_ns()}",
               "BENCH_RATE": "0", "BENCH_COUNT": "0", "BENCH_THREADS": "2", "BENCH_SCATTER": "1"}
        out = subprocess.run(["wrk", "-t2", "-c50", f"-d{seconds}s", "--latency", "-s",
                              str(Path(__file__).parent / "events.lua"),
                              f"http://127.0.0.1:{port}/webhook"],
                             env=env, capture_output=True, text=True, check=True).stdout
    finally:
        relay.terminate()
        relay.wait()
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"\s99%\s+([\d.]+\w+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return (f"HTTP ingest {float(rate.group(1)) if rate else 0:6.0f} events/s, ack p99"
            f" {p99.group(1) if p99 else '?'} @50 conns (each arming a timer)"
            + (f", {errors.group(1)} refused" if errors else ""))


async def one_run(args: argparse.Namespace, armed: int, tmp: Path) -> None:
    url, schema = args.store, ""
    if url:
        schema = f"bench_timers_{uuid.uuid4().hex[:8]}"
        await _pg(url, f"CREATE SCHEMA {schema}")
        url = f"{url}{'&' if urlsplit(url).query else '?'}options=" \
              + quote(f"-csearch_path={schema}", safe="")
    else:
        url = f"sqlite:{tmp / 'relay.db'}"
    try:
        store = open_store(url)
        await store.open()  # the schema
        await store.close()
        t = time.perf_counter()
        if args.store:
            await preload_postgres(url, armed, args.stored)
        else:
            preload_sqlite(tmp / "relay.db", armed, args.stored)
        loaded = time.perf_counter() - t
        if args.http:
            print(f"stored={args.stored:>9,} armed={armed:>9,} (loaded in {loaded:5.1f}s)  "
                  + http_ingest(tmp / "relay.db", args.http), flush=True)
            return
        store = open_store(url)
        await store.open()
        before = rss_mib()
        rate = await ingest(store, armed, args.events, args.concurrency)
        after = rss_mib()
        first, idle = await claims(store, min(armed, DUE_NOW))
        await store.close()
        size = f"  db {(tmp / 'relay.db').stat().st_size / 2**20:.0f} MiB" if not args.store else ""
        print(f"stored={args.stored:>9,} armed={armed:>9,} (loaded in {loaded:5.1f}s)"
              f"  ingest {rate:6.0f} events/s (each arming a timer)"
              f"  claim {min(armed, DUE_NOW)} due {first:6.2f} ms, none due {idle:5.2f} ms"
              f"  RSS {before:.0f} -> {after:.0f} MiB{size}",
              flush=True)
    finally:
        if schema:
            await _pg(args.store, f"DROP SCHEMA {schema} CASCADE")


async def _pg(dsn: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def run(args: argparse.Namespace) -> None:
    for _ in range(args.runs):
        for armed in (0, args.armed):
            with tempfile.TemporaryDirectory() as tmp:
                await one_run(args, armed, Path(tmp))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--armed", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--stored", type=int, default=0,
                        help="earlier deliveries' events in the store, for both runs")
    parser.add_argument("--runs", type=int, default=1, help="alternate none / --armed this often")
    parser.add_argument("--store", help="a postgresql:// URL (a throwaway schema is used)")
    parser.add_argument("--http", type=int, default=0, metavar="SECONDS",
                        help="SQLite: ingest through the real relay with wrk @50 for SECONDS")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
