#!/usr/bin/env python3
"""kourier-relay benchmark suite (`make bench`). Not part of the test suite.

Starts the relay the way its users do (`kourier-relay serve -c bench/config-*.yaml`,
a fresh SQLite store per start, default durability and logging), loads it with
wrk and bench/events.lua (unique events, send time embedded), and measures what
arrives at a local sink behind json:// (bench/sink.py, its own process).

Scenarios (medians over --runs runs):
  1 ingest      acked events/s and ack p50/p99 at 10 and 50 connections, deliveries
                flowing, next to a bare aiohttp token-check handler in the same run
  2 end-to-end  notifications/s at the sink and event-to-notification latency, at a
                steady 200 events/s and for a burst of 20,000 events
  3 slow        a 2 s receiver and an always-failing one next to a healthy one:
                ack latency and the healthy receiver's latency
  4 backlog     100,000 events accepted while the sink is down, then the sink starts:
                RSS over time and the drain rate (one run); then ack p50/p99 at 50
                connections while another relay's 30,000 backlog drains
  5 footprint   start-up to /readyz, idle RSS, peak RSS per scenario, installed size
                of the runtime dependencies

    .venv/bin/python bench/run.py             # ~10 minutes
    .venv/bin/python bench/run.py --quick     # ~2 minutes, smaller counts
    .venv/bin/python bench/run.py --profile   # py-spy profiles of ingest and delivery

Prints a table and writes bench/results/<timestamp>.json. Installs wrk (apt-get)
and, for --profile, py-spy (pip, into this interpreter's environment) when missing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
LUA = BENCH / "events.lua"
TOKEN = "bench-token"
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The marks from issues 6 and 17, checked at the end.
TARGET_RATIO = 0.70
TARGET_PINNED_RATIO = 0.45
TARGET_ACK_P99_MS = 25.0
TARGET_E2E_RATE = 620.0
TARGET_ALL_PROCESSES_MB = 200.0
TARGET_E2E_P50_MS = 50.0
TARGET_PEAK_RSS_MB = 100.0
TARGET_STARTUP_S = 1.5
# "stays what it was" / "does not grow": within 25 % or 5 ms, whichever is larger.
TOLERANCE = (1.25, 5.0)
# "memory stays flat": RSS grows by at most this much while the backlog waits and drains.
FLAT_MB = 10.0


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- tools


def ensure_tools(profile: bool) -> None:
    """wrk from Debian; py-spy into this venv for --profile; the relay itself."""
    if not shutil.which("wrk"):
        log("wrk not found: installing it with apt-get")
        sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if subprocess.run([*sudo, "apt-get", "install", "-y", "-q", "wrk"], env=env,
                          stdout=subprocess.DEVNULL).returncode != 0:
            subprocess.run([*sudo, "apt-get", "update", "-q"], env=env, check=True,
                           stdout=subprocess.DEVNULL)
            subprocess.run([*sudo, "apt-get", "install", "-y", "-q", "wrk"], env=env,
                           check=True, stdout=subprocess.DEVNULL)
        if not shutil.which("wrk"):
            sys.exit("bench: could not install wrk (apt-get install wrk)")
    if profile and not py_spy():
        log("py-spy not found: installing it into this environment with pip")
        subprocess.run([PY, "-m", "pip", "install", "-q", "py-spy"], check=True)
        if not py_spy():
            sys.exit("bench: could not install py-spy (pip install py-spy)")
    if not relay_command():
        log("kourier-relay is not installed in this environment: pip install -e .")
        subprocess.run([PY, "-m", "pip", "install", "-q", "-e", str(ROOT)], check=True)


def py_spy() -> str | None:
    local = Path(PY).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def relay_command() -> list[str] | None:
    script = Path(PY).parent / "kourier-relay"
    return [str(script)] if script.exists() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(url: str, method: str = "GET", timeout: float = 5.0) -> tuple[int, str]:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return 0, ""


# ---------------------------------------------------------------- processes


def rss_kb(pid: int, key: str = "VmRSS") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """Child processes of `pid`, recursively (e.g. send processes)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                for child in (task / "children").read_text().split():
                    out += [int(child), *descendants(int(child))]
    return out


def tree_cpu_seconds(relay: Proc) -> float:
    """CPU of the relay, its replicas and their send processes."""
    pids = [p.pid for p in relay.extra.get("replicas") or [relay]]
    return sum(cpu_seconds(p) for pid in pids for p in (pid, *descendants(pid)))


def fresh_pg_schema(dsn: str, schema: str) -> str:
    """A new, empty schema on the PostgreSQL server at `dsn`; the DSN that uses it."""
    from urllib.parse import quote, urlsplit

    psql(dsn, f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")
    sep = "&" if urlsplit(dsn).query else "?"
    return f"{dsn}{sep}options={quote('-csearch_path=' + schema, safe='')}"


def psql(dsn: str, sql: str) -> None:
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", dsn, "-c", sql], check=True,
                   stdout=subprocess.DEVNULL,
                   env={**os.environ, "PGOPTIONS": "--client-min-messages=warning"})


def merge_wrk(parts: list[dict[str, Any]], connections: int) -> dict[str, Any]:
    """Several wrk runs at once (one per replica) as one: counts and rates add up; latency
    percentiles cannot be merged exactly, so p50 is the mean and p99 the worst of them."""
    out = dict(parts[0])
    for key in ("requests", "sent", "accepted", "rejected", "other", "acked_per_s"):
        out[key] = round(sum(p.get(key, 0) for p in parts), 1)
    out["seconds"] = max(p["seconds"] for p in parts)
    out["ack_p50_ms"] = round(statistics.mean(p["ack_p50_ms"] for p in parts), 2)
    out["ack_p99_ms"] = max(p["ack_p99_ms"] for p in parts)
    out["connections"] = connections
    out["parts"] = parts
    return out


def cpu_seconds(pid: int) -> float:
    try:
        parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def thread_cpu(pid: int) -> dict[int, tuple[float, float]]:
    """Per native thread of `pid`: (user, system) CPU seconds."""
    out = {}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parts = (task / "stat").read_text().rsplit(")", 1)[1].split()
                out[int(task.name)] = (int(parts[11]) / CLK_TCK, int(parts[12]) / CLK_TCK)
    return out


def system_busy_s() -> float:
    """CPU seconds all processes on the machine spent busy, from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLK_TCK


def own_children_s() -> float:
    """CPU of this script and of the children it has waited for (wrk runs)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class Sampler(threading.Thread):
    """VmRSS of one process every `interval` seconds, with a label for the phase."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int, str]] = []  # (t, kB, phase)
        self.tree_peak_kb = 0  # the process and its children (send processes) together
        self.phase = "start"
        self.t0 = time.monotonic()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            kb = rss_kb(self.pid)
            if kb:
                self.samples.append((time.monotonic() - self.t0, kb, self.phase))
                kids = descendants(self.pid)
                tree = kb + sum(rss_kb(k) for k in kids) if kids else kb
                self.tree_peak_kb = max(self.tree_peak_kb, tree)
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(2)

    def peak_mb(self, phases: set[str] | None = None) -> float:
        values = [kb for _, kb, p in self.samples if phases is None or p in phases]
        return round(max(values, default=0) / 1024, 1)

    def last_mb(self, phase: str) -> float:
        values = [kb for _, kb, p in self.samples if p == phase]
        return round(values[-1] / 1024, 1) if values else 0.0


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path
    startup_s: float = 0.0
    sampler: Sampler | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, timeout: float = 20.0) -> dict[str, Any]:
        """SIGTERM, wait, SIGKILL if it has to; report peak RSS (VmHWM) and CPU."""
        info = {"hwm_mb": round(rss_kb(self.pid, "VmHWM") / 1024, 1),
                "cpu_s": round(cpu_seconds(self.pid), 2)}
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        if self.sampler:
            self.sampler.stop()
        return info


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.procs: list[Proc] = []
        self.starts: list[float] = []     # every relay start-up time
        self.peaks: dict[str, float] = defaultdict(float)  # scenario -> peak RSS MB
        self.tree_peaks: dict[str, float] = defaultdict(float)  # with send processes
        self.sink: Proc | None = None
        self.n = 0
        self.schemas: list[str] = []  # --pg: dropped at the end

    # -------------------------------------------------- process management

    def _spawn(self, name: str, cmd: list[str], port: int, env: dict[str, str] | None = None,
               ) -> Proc:
        self.n += 1
        log_path = self.workdir / f"{self.n:02d}-{name}.log"
        out = open(log_path, "wb")  # noqa: SIM115 - closed with the process
        popen = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir,
                                 env={**os.environ, **(env or {})})
        out.close()
        proc = Proc(name, popen, port, log_path)
        self.procs.append(proc)
        return proc

    def _wait_ready(self, proc: Proc, path: str, timeout: float = 30.0) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}; see"
                                   f" {proc.log_path}:\n{proc.log_path.read_text()[-2000:]}")
            status, _ = http(f"http://127.0.0.1:{proc.port}{path}", timeout=1.0)
            if status == 200:
                return time.monotonic() - t0
            time.sleep(0.005)
        raise RuntimeError(f"{proc.name} not ready after {timeout}s; see {proc.log_path}")

    def start_relay(self, config: str, sink_port: int, scenario: str, pin: str = "") -> Proc:
        """A fresh relay (and its --replicas on the same store); `pin`: taskset CPU list."""
        port = free_port()
        store = f"sqlite:{self.workdir / f'relay-{self.n + 1:02d}.db'}"
        if self.args.pg:
            schema = f"bench_{os.getpid()}_{self.n + 1}"
            store = fresh_pg_schema(self.args.pg, schema)
            self.schemas.append(schema)
        env = {"BENCH_LISTEN": f"127.0.0.1:{port}", "BENCH_STORE": store,
               "BENCH_SINK": f"127.0.0.1:{sink_port}", "BENCH_TOKEN": TOKEN}
        base = self.args.relay.split() if self.args.relay else (relay_command()
                                                                or [PY, "-m", "relay"])
        if self.args.whatif:
            base = [PY, str(BENCH / "whatif.py"), self.args.whatif]
        if pin:
            base = ["taskset", "-c", pin, *base]  # its send processes inherit the affinity
        config_path = BENCH / config
        if self.args.receiver_concurrency or self.args.processes:
            text = config_path.read_text()
            if self.args.receiver_concurrency:
                text = re.sub(r"concurrency: \d+(\s+# sends in flight to the sink)",
                              rf"concurrency: {self.args.receiver_concurrency}\1", text)
            if self.args.processes:
                text = re.sub(r"processes: \d+(\s+# sending processes)",
                              rf"processes: {self.args.processes}\1", text)
            config_path = self.workdir / config
            config_path.write_text(text)
        cmd = [*base, "serve", "-c", str(config_path)]
        t0 = time.monotonic()
        proc = self._spawn(f"relay-{scenario}", cmd, port, env)
        proc.sampler = Sampler(proc.pid)
        proc.sampler.start()
        self._wait_ready(proc, "/readyz")
        proc.startup_s = time.monotonic() - t0
        proc.extra["scenario"] = scenario
        self.starts.append(proc.startup_s)
        # --extra-workers: more relay processes on the same store that only deliver
        proc.extra["workers"] = []
        if self.args.extra_workers and not scenario.startswith("5"):
            for _ in range(self.args.extra_workers):
                wport = free_port()
                worker = self._spawn(f"worker-{scenario}", cmd, wport,
                                     {**env, "BENCH_LISTEN": f"127.0.0.1:{wport}",
                                      "BENCH_ROLE": "worker"})
                self._wait_ready(worker, "/readyz")
                proc.extra["workers"].append(worker)
        # --replicas N: N-1 more full relays on the same (PostgreSQL) store; load is split
        proc.extra["replicas"] = [proc]
        for _ in range(self.args.replicas - 1):
            rport = free_port()
            replica = self._spawn(f"replica-{scenario}", cmd, rport,
                                  {**env, "BENCH_LISTEN": f"127.0.0.1:{rport}"})
            replica.sampler = Sampler(replica.pid)
            replica.sampler.start()
            self._wait_ready(replica, "/readyz")
            proc.extra["workers"].append(replica)
            proc.extra["replicas"].append(replica)
        return proc

    def stop_relay(self, proc: Proc) -> dict[str, Any]:
        others = [w.stop() | {"tree_peak_mb": round(w.sampler.tree_peak_kb / 1024, 1)}
                  if w.sampler else w.stop() for w in proc.extra.get("workers", [])]
        info = proc.stop()
        if others:
            info["replicas"] = others
        peak = max(info["hwm_mb"], proc.sampler.peak_mb() if proc.sampler else 0.0)
        scenario = proc.extra.get("scenario", "?")
        self.peaks[scenario] = max(self.peaks[scenario], peak)
        info["peak_mb"] = peak
        # the relay with its send processes (and replicas, each at its own peak)
        tree_kb = sum(r.sampler.tree_peak_kb for r in proc.extra.get("replicas") or [proc]
                      if r.sampler)
        if tree_kb > peak * 1024 + 1024:
            info["tree_peak_mb"] = round(tree_kb / 1024, 1)
            self.tree_peaks[scenario] = max(self.tree_peaks[scenario], info["tree_peak_mb"])
        return info

    def start_sink(self, port: int | None = None) -> Proc:
        port = port or free_port()
        proc = self._spawn("sink", [PY, str(BENCH / "sink.py"), "--port", str(port),
                                    "--slow", str(self.args.slow)], port)
        self._wait_ready(proc, "/-/health")
        return proc

    def start_bare(self, pin: str = "") -> Proc:
        port = free_port()
        cmd = [PY, str(BENCH / "bare.py"), "--port", str(port), "--token", TOKEN]
        proc = self._spawn("bare", ["taskset", "-c", pin, *cmd] if pin else cmd, port)
        self._wait_ready(proc, "/readyz")
        return proc

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.popen.poll() is None:
                with contextlib.suppress(Exception):
                    proc.stop(5)
        if self.schemas and not self.args.keep:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                psql(self.args.pg, "; ".join(f"DROP SCHEMA IF EXISTS {s} CASCADE"
                                             for s in self.schemas))

    # -------------------------------------------------- load and measurements

    def load(self, relay: Proc, connections: int, duration: float = 0.0, rate: float = 0.0,
             count: int = 0, threads: int | None = None, tag: str = "", pin: str = "",
             ) -> dict[str, Any]:
        """wrk against the relay, or split evenly over its --replicas, all at once."""
        replicas = relay.extra.get("replicas") or [relay]
        if len(replicas) == 1:
            return self.wrk(relay.port, connections, duration, rate, count, threads, tag, pin)
        k = len(replicas)
        parts: list[dict[str, Any]] = [{} for _ in replicas]

        def one(i: int) -> None:
            parts[i] = self.wrk(replicas[i].port, max(1, connections // k), duration, rate / k,
                                count // k, max(1, (threads or min(2, connections)) // k),
                                f"{tag}{i}", pin, measure_noise=False)

        workers = [threading.Thread(target=one, args=(i,)) for i in range(k)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return merge_wrk(parts, connections)

    def wrk(self, port: int, connections: int, duration: float = 0.0, rate: float = 0.0,
            count: int = 0, threads: int | None = None, tag: str = "", pin: str = "",
            measure_noise: bool = True) -> dict[str, Any]:
        """wrk with bench/events.lua; with `count`, stop once every thread's share is answered.

        `pin`: run wrk under `taskset -c pin`.
        """
        threads = threads or min(2, connections)
        run_id = f"{tag or 'r'}{self.n}x{int(time.time() * 1000) % 10**9}"
        env = {**os.environ, "BENCH_TOKEN": TOKEN, "BENCH_RUN": run_id,
               "BENCH_RATE": str(rate), "BENCH_COUNT": str(count),
               "BENCH_THREADS": str(threads)}
        seconds = duration if duration else count / 100 + 60  # a bound; SIGINT ends it
        cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{int(seconds)}s", "--timeout", "30s",
               "-s", str(LUA), f"http://127.0.0.1:{port}/webhook"]
        if pin:
            cmd = ["taskset", "-c", pin, *cmd]
        live = [q for p in self.procs if p.popen.poll() is None
                for q in (p.pid, *descendants(p.pid))]  # send processes are ours too
        busy0, own0, t0 = system_busy_s(), own_children_s(), time.monotonic()
        procs0 = sum(cpu_seconds(p) for p in live)
        popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                 text=True)
        assert popen.stdout is not None
        finished = 0
        result: dict[str, Any] | None = None
        lines = []
        for line in popen.stdout:
            lines.append(line)
            if line.startswith("THREADDONE"):
                finished += 1
                if finished >= threads:
                    popen.send_signal(signal.SIGINT)  # wrk prints its summary and exits
            elif line.startswith("BENCHJSON "):
                result = json.loads(line.split(" ", 1)[1])
        popen.wait()
        if result is None:
            raise RuntimeError("wrk gave no result:\n" + "".join(lines[-20:]))
        # CPU that other processes on the machine used meanwhile: noise in these numbers
        elapsed = time.monotonic() - t0
        ours = (own_children_s() - own0) + sum(cpu_seconds(p) for p in live) - procs0
        foreign = max(0.0, system_busy_s() - busy0 - ours)
        if measure_noise:  # (wrk runs side by side would count each other as noise)
            result["foreign_cpu_pct"] = round(100 * foreign / (elapsed * (os.cpu_count() or 1)),
                                              1)
        secs = result["duration_us"] / 1e6
        result["seconds"] = round(secs, 3)
        result["acked_per_s"] = round(result["accepted"] / secs, 1) if secs else 0.0
        lat = result["latency_us"]
        result["ack_p50_ms"] = round(lat["p50"] / 1000, 2)
        result["ack_p99_ms"] = round(lat["p99"] / 1000, 2)
        result.update(connections=connections, threads=threads, rate=rate, count=count)
        return result

    def sink_summary(self, path: str = "/fast") -> dict[str, Any]:
        assert self.sink
        status, text = http(f"http://127.0.0.1:{self.sink.port}/-/summary?path={path}")
        return json.loads(text) if status == 200 else {"count": 0}

    def sink_reset(self) -> None:
        assert self.sink
        http(f"http://127.0.0.1:{self.sink.port}/-/reset", "POST")

    def accepted(self, relay: Proc) -> int:
        """Events the relay (all its --replicas) accepted, from their own /metrics."""
        total = 0.0
        for replica in relay.extra.get("replicas") or [relay]:
            status, text = http(f"http://127.0.0.1:{replica.port}/metrics")
            for line in text.splitlines():
                if (line.startswith("kourier_relay_events_total{")
                        and 'outcome="accepted"' in line):
                    total += float(line.rsplit(" ", 1)[1])
        return int(total)

    def wait_arrivals(self, expected: int, path: str = "/fast", stall: float = 30.0,
                      limit: float = 1800.0, timeline: list[Any] | None = None,
                      ) -> dict[str, Any]:
        """Wait until `expected` notifications arrived at `path`, arrivals stall, or `limit`."""
        t0 = last_change = time.monotonic()
        last = -1
        while True:
            summary = self.sink_summary(path)
            count = summary.get("count", 0)
            now = time.monotonic()
            if timeline is not None:
                timeline.append((round(now - t0, 1), count))
            if count >= expected:
                return summary
            if count != last:
                last, last_change = count, now
            if now - last_change > stall:
                log(f"  arrivals stalled at {count}/{expected} on {path}")
                summary["stalled"] = True
                return summary
            if now - t0 > limit:
                log(f"  stopped waiting after {limit:.0f} s: {count}/{expected} on {path}")
                summary["incomplete"] = True
                return summary
            time.sleep(0.25 if timeline is None else 1.0)

    # -------------------------------------------------- scenarios

    def scenario1(self, run: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for conns in (10, 50):
            self.sink_reset()
            relay = self.start_relay("config-e2e.yaml", self.sink.port, "1-ingest")
            cpu0 = cpu_seconds(relay.pid)
            tree0 = tree_cpu_seconds(relay)
            r = self.load(relay, conns, duration=self.args.duration, tag="i")
            r["relay_cpu_s"] = round(cpu_seconds(relay.pid) - cpu0, 2)
            r["relay_tree_cpu_s"] = round(tree_cpu_seconds(relay) - tree0, 2)
            r["delivered_during"] = self.sink_summary().get("count", 0)
            r["relay"] = self.stop_relay(relay)
            bare = self.start_bare()
            b = self.wrk(bare.port, conns, duration=self.args.duration, tag="b")
            bare.stop()
            ratio = r["acked_per_s"] / b["acked_per_s"] if b["acked_per_s"] else 0.0
            out[f"c{conns}"] = {"relay": r, "bare": b, "ratio": round(ratio, 3)}
            log(f"  1 ingest run {run} c={conns}: relay {r['acked_per_s']:.0f}/s"
                f" p50 {r['ack_p50_ms']} ms p99 {r['ack_p99_ms']} ms;"
                f" bare {b['acked_per_s']:.0f}/s p99 {b['ack_p99_ms']} ms; ratio {ratio:.2f};"
                f" {r['delivered_during']} delivered meanwhile")
        return out

    def pinned_pair(self, pair: int) -> dict[str, Any]:
        """Ingest @50 vs the bare handler, each held to CPU 0; wrk and the sink on CPU 1."""
        assert self.sink
        conns, relay_cpu, load_cpu = 50, "0", "1"
        everything = os.sched_getaffinity(self.sink.pid)
        os.sched_setaffinity(self.sink.pid, {int(load_cpu)})
        try:
            self.sink_reset()
            relay = self.start_relay("config-e2e.yaml", self.sink.port, "1-ingest", relay_cpu)
            cpu0 = tree_cpu_seconds(relay)
            r = self.load(relay, conns, duration=self.args.duration, tag="q", pin=load_cpu)
            r["relay_tree_cpu_s"] = round(tree_cpu_seconds(relay) - cpu0, 2)
            r["delivered_during"] = self.sink_summary().get("count", 0)
            r["relay"] = self.stop_relay(relay)
            bare = self.start_bare(relay_cpu)
            b = self.wrk(bare.port, conns, duration=self.args.duration, tag="c", pin=load_cpu)
            bare.stop()
        finally:
            os.sched_setaffinity(self.sink.pid, everything)
        ratio = r["acked_per_s"] / b["acked_per_s"] if b["acked_per_s"] else 0.0
        log(f"  1 pinned pair {pair} c={conns}: relay {r['acked_per_s']:.0f}/s p99"
            f" {r['ack_p99_ms']} ms; bare {b['acked_per_s']:.0f}/s; ratio {ratio:.2f};"
            f" {r['delivered_during']} delivered meanwhile")
        return {"relay": r, "bare": b, "ratio": round(ratio, 3)}

    def scenario2(self, run: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        # steady rate
        self.sink_reset()
        relay = self.start_relay("config-e2e.yaml", self.sink.port, "2-e2e")
        w = self.load(relay, 4, duration=self.args.steady_duration, rate=self.args.rate,
                     threads=1, tag="s")
        expected = self.accepted(relay)
        s = self.wait_arrivals(expected)
        out["steady"] = {"wrk": w, "sink": s, "expected": expected,
                         "lost": max(0, expected - s.get("distinct", 0)),
                         "duplicates": s.get("duplicates", 0),
                         "p50_ms": s.get("latency_ms", {}).get("p50"),
                         "p99_ms": s.get("latency_ms", {}).get("p99"),
                         "relay": self.stop_relay(relay)}
        log(f"  2 steady run {run}: {w['acked_per_s']:.0f} ev/s offered, ack p99"
            f" {w['ack_p99_ms']} ms; e2e p50 {out['steady']['p50_ms']} ms p99"
            f" {out['steady']['p99_ms']} ms; {s.get('count')}/{expected} arrived")
        # burst
        self.sink_reset()
        relay = self.start_relay("config-e2e.yaml", self.sink.port, "2-e2e")
        t0 = time.time()
        cpu0, tree0 = cpu_seconds(relay.pid), tree_cpu_seconds(relay)
        w = self.load(relay, 50, count=self.args.burst, tag="u")
        expected = self.accepted(relay)
        s = self.wait_arrivals(expected)
        w["relay_cpu_s"] = round(cpu_seconds(relay.pid) - cpu0, 2)
        w["relay_tree_cpu_s"] = round(tree_cpu_seconds(relay) - tree0, 2)
        span = (s.get("last_arrival_us", 0) - s.get("first_arrival_us", 0)) / 1e6
        total = (s.get("last_arrival_us", 0) / 1e6 - t0) if s.get("count") else 0.0
        out["burst"] = {"wrk": w, "sink": s, "expected": expected,
                        "lost": max(0, expected - s.get("distinct", 0)),
                        "duplicates": s.get("duplicates", 0),
                        "notifications_per_s": round(s.get("count", 0) / span, 1) if span else 0,
                        "ingest_s": w["seconds"], "drained_after_s": round(total, 2),
                        "p50_ms": s.get("latency_ms", {}).get("p50"),
                        "p99_ms": s.get("latency_ms", {}).get("p99"),
                        "relay": self.stop_relay(relay)}
        b = out["burst"]
        log(f"  2 burst run {run}: {expected} events in {w['seconds']:.1f} s"
            f" ({w['acked_per_s']:.0f}/s); {s.get('count')} arrived at"
            f" {b['notifications_per_s']:.0f}/s; all done after {b['drained_after_s']} s;"
            f" e2e p50 {b['p50_ms']} ms p99 {b['p99_ms']} ms")
        return out

    def scenario3(self, run: int) -> dict[str, Any]:
        self.sink_reset()
        relay = self.start_relay("config-slow.yaml", self.sink.port, "3-slow")
        steady = self.load(relay, 4, duration=self.args.steady_duration, rate=self.args.rate,
                          threads=1, tag="s")
        expected = self.accepted(relay)
        healthy = self.wait_arrivals(expected, "/fast", stall=15.0)
        load = self.load(relay, 50, duration=self.args.duration, tag="l")
        slow, failing = self.sink_summary("/slow"), self.sink_summary("/fail")
        out = {"steady": steady, "healthy": healthy, "expected": expected, "load50": load,
               "healthy_p50_ms": healthy.get("latency_ms", {}).get("p50"),
               "healthy_p99_ms": healthy.get("latency_ms", {}).get("p99"),
               "slow_arrivals": slow.get("count", 0), "failing_arrivals": failing.get("count", 0),
               "relay": self.stop_relay(relay)}
        log(f"  3 slow run {run}: healthy e2e p50 {out['healthy_p50_ms']} ms p99"
            f" {out['healthy_p99_ms']} ms ({healthy.get('count')}/{expected});"
            f" steady ack p99 {steady['ack_p99_ms']} ms; at 50 conns"
            f" {load['acked_per_s']:.0f}/s ack p99 {load['ack_p99_ms']} ms;"
            f" slow got {out['slow_arrivals']}, failing got {out['failing_arrivals']}")
        return out

    def scenario4(self) -> dict[str, Any]:
        sink_port = free_port()
        relay = self.start_relay("config-e2e.yaml", sink_port, "4-backlog")
        sampler = relay.sampler
        assert sampler
        time.sleep(2.0)
        sampler.phase = "ingest"
        idle_mb = sampler.last_mb("start")
        w = self.load(relay, 50, count=self.args.backlog, tag="k")
        expected = self.accepted(relay)
        sampler.phase = "paused"
        time.sleep(self.args.pause)
        sink = self.start_sink(sink_port)
        released = time.time()
        cpu_release, tree_release = cpu_seconds(relay.pid), tree_cpu_seconds(relay)
        sampler.phase = "drain"
        old_sink, self.sink = self.sink, sink
        timeline: list[tuple[float, int]] = []
        try:
            s = self.wait_arrivals(expected, stall=60.0, limit=self.args.drain_limit,
                                   timeline=timeline)
        finally:
            self.sink = old_sink
        sampler.phase = "drained"
        drain_cpu = cpu_seconds(relay.pid) - cpu_release
        drain_tree_cpu = tree_cpu_seconds(relay) - tree_release
        time.sleep(1.0)
        span = (s.get("last_arrival_us", 0) - s.get("first_arrival_us", 0)) / 1e6
        first_after = s.get("first_arrival_us", 0) / 1e6 - released if s.get("count") else None
        # drain rate while the backlog is still (nearly) full: the first 30 s of arrivals
        started = next((t for t, c in timeline if c > 0), None)
        early = [(t, c) for t, c in timeline if started is not None and t <= started + 30]
        early_rate = ((early[-1][1] - early[0][1]) / (early[-1][0] - early[0][0])
                      if len(early) > 1 and early[-1][0] > early[0][0] else None)
        info = self.stop_relay(relay)
        sink.stop()
        after_ingest = sampler.last_mb("ingest")
        out = {"wrk": w, "expected": expected, "sink": s,
               "lost": (max(0, expected - s.get("distinct", 0))
                        if s.get("count", 0) >= expected else None),
               "duplicates": s.get("duplicates", 0),
               "ingest_per_s": w["acked_per_s"], "ingest_s": w["seconds"],
               "drain_per_s": round(s.get("count", 0) / span, 1) if span else 0.0,
               "drain_first_30s_per_s": round(early_rate, 1) if early_rate else None,
               "drain_s": round(span, 1), "drained": s.get("count", 0),
               "drain_cpu_ms_per_notification": (round(1000 * drain_cpu / s["count"], 2)
                                                 if s.get("count") else None),
               "drain_all_cpu_ms_per_notification": (
                   round(1000 * drain_tree_cpu / s["count"], 2) if s.get("count") else None),
               "complete": s.get("count", 0) >= expected,
               "drain_timeline": timeline[:: max(1, len(timeline) // 120)],
               "first_arrival_after_release_s": round(first_after, 2) if first_after else None,
               "rss_mb": {"idle": idle_mb, "after_ingest": after_ingest,
                          "peak_ingest": sampler.peak_mb({"ingest"}),
                          "peak_paused": sampler.peak_mb({"paused"}),
                          "peak_drain": sampler.peak_mb({"drain"}),
                          "after_drain": sampler.last_mb("drain"),
                          "peak": info["peak_mb"]},
               "rss_timeline": _thin(sampler.samples, 200),
               "relay": info}
        out["growth_while_waiting_and_draining_mb"] = round(
            max(out["rss_mb"]["peak_paused"], out["rss_mb"]["peak_drain"]) - after_ingest, 1)
        log(f"  4 backlog: {expected} accepted in {w['seconds']:.1f} s ({w['acked_per_s']:.0f}/s);"
            f" drained {s.get('count')} in {span:.1f} s ({out['drain_per_s']:.0f}/s);"
            f" RSS idle {idle_mb} MB, after ingest {after_ingest} MB, peak drain"
            f" {out['rss_mb']['peak_drain']} MB")
        return out

    def scenario4_loaded(self) -> dict[str, Any]:
        """Issue 17: ack latency @50 connections while a backlog drains. A backlog is queued
        with the sink down; once the sink is up and the drain has run alone for a while,
        wrk loads ingest for --duration s; the drain rate alone and meanwhile is reported."""
        sink_port = free_port()
        relay = self.start_relay("config-e2e.yaml", sink_port, "4-drain-load")
        backlog = min(self.args.backlog, 30_000)
        queued = self.load(relay, 50, count=backlog, tag="m")
        sink = self.start_sink(sink_port)
        old_sink, self.sink = self.sink, sink
        try:
            self.wait_arrivals(1, stall=30.0, limit=30.0)
            time.sleep(3.0)  # past the circuit's probe: the drain at full speed
            c0, t0 = self.sink_summary().get("count", 0), time.monotonic()
            time.sleep(3.0)
            c1, t1 = self.sink_summary().get("count", 0), time.monotonic()
            w = self.load(relay, 50, duration=self.args.duration, tag="n")
            c2, t2 = self.sink_summary().get("count", 0), time.monotonic()
        finally:
            self.sink = old_sink
        info = self.stop_relay(relay)
        sink.stop()
        out = {"backlog": queued["accepted"], "wrk": w,
               "drain_alone_per_s": round((c1 - c0) / (t1 - t0), 1),
               "drain_during_per_s": round((c2 - c1) / (t2 - t1), 1),
               "left_at_end": backlog + w["accepted"] - c2, "relay": info}
        log(f"  4 drain under load: {w['acked_per_s']:.0f} ev/s acked @50, p99"
            f" {w['ack_p99_ms']} ms; drain alone {out['drain_alone_per_s']:.0f} n/s, meanwhile"
            f" {out['drain_during_per_s']:.0f} n/s; {out['left_at_end']} still queued at the end")
        return out

    def scenario5_idle(self) -> dict[str, Any]:
        relay = self.start_relay("config-e2e.yaml", self.sink.port, "5-idle")
        time.sleep(self.args.idle_wait)
        idle = round(rss_kb(relay.pid) / 1024, 1)
        pids = [p for r in relay.extra.get("replicas") or [relay] for p in (r.pid, *descendants(r.pid))]
        idle_all = round(sum(rss_kb(p) for p in pids) / 1024, 1)
        startup = relay.startup_s
        self.stop_relay(relay)
        return {"idle_rss_mb": idle, "idle_rss_all_mb": idle_all, "processes": len(pids),
                "startup_s": round(startup, 3)}

    # -------------------------------------------------- profiling

    def profile(self) -> dict[str, Any]:
        """py-spy on the relay: ingest only (sink down), then delivery only (draining a backlog).

        Each phase is sampled twice at once: every thread that is not idle (wall view, shows
        time in SQLite, fsync and sockets too) and only the thread holding the GIL (--gil:
        the Python CPU that bounds one process).
        """
        out: dict[str, Any] = {}
        sink_port = free_port()
        relay = self.start_relay("config-e2e.yaml", sink_port, "profile")
        seconds = int(self.args.duration)
        # ingest: the sink is down, so the receiver's circuit is open and only ingest runs
        spies = self._spy(relay.pid, "ingest", seconds)
        time.sleep(0.3)
        cpu0 = cpu_seconds(relay.pid)
        w = self.load(relay, 50, duration=seconds - 1, tag="p")
        w["relay_cpu_ms_per_event"] = round(1000 * (cpu_seconds(relay.pid) - cpu0)
                                            / max(1, w["accepted"]), 3)
        out["ingest"] = {"wrk": w, "seconds": seconds, **self._spied(spies, seconds)}
        expected = self.accepted(relay)
        # delivery: no more ingest; the sink starts and the backlog drains
        sink = self.start_sink(sink_port)
        old_sink, self.sink = self.sink, sink
        try:
            time.sleep(2.5)  # the circuit's half-open probe, then full speed
            c0, t0 = self.sink_summary().get("count", 0), time.monotonic()
            cpu0, sink0, busy0 = cpu_seconds(relay.pid), cpu_seconds(sink.pid), system_busy_s()
            spies = self._spy(relay.pid, "delivery", seconds)
            for _, rec in spies:
                rec.wait()
            c1, t1 = self.sink_summary().get("count", 0), time.monotonic()
            cpu1, sink1, busy1 = cpu_seconds(relay.pid), cpu_seconds(sink.pid), system_busy_s()
        finally:
            self.sink = old_sink
        out["delivery"] = {"backlog_at_start": expected - c0, "seconds": seconds,
                           "notifications_per_s": round((c1 - c0) / (t1 - t0), 1),
                           "relay_cpu_ms_per_notification": round(1000 * (cpu1 - cpu0)
                                                                  / max(1, c1 - c0), 2),
                           "sink_cpu_ms_per_notification": round(1000 * (sink1 - sink0)
                                                                 / max(1, c1 - c0), 2),
                           "machine_busy_cores": round((busy1 - busy0) / (t1 - t0), 2),
                           "relay_cores": round((cpu1 - cpu0) / (t1 - t0), 2),
                           **self._spied(spies, seconds)}
        self.stop_relay(relay)
        sink.stop()
        return out

    def _spy(self, pid: int, phase: str, seconds: int) -> list[tuple[Path, Any]]:
        spy = py_spy()
        assert spy
        self._tcpu = (pid, thread_cpu(pid), time.monotonic())
        spies = []
        for kind, flags in (("wall", []), ("gil", ["--gil"])):
            path = RESULTS / f"{self.args.stamp}-profile-{phase}-{kind}.txt"
            cmd = [spy, "record", "--pid", str(pid), "--rate", str(PROFILE_RATE), "--format",
                   "raw", "--threads", "--nonblocking", "--duration", str(seconds),
                   "--output", str(path), *flags]
            spies.append((path, subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                                 stderr=subprocess.DEVNULL)))
        return spies

    def _spied(self, spies: list[tuple[Path, Any]], seconds: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        pid, before, t0 = self._tcpu
        for _, rec in spies:
            rec.wait()
        after, elapsed = thread_cpu(pid), time.monotonic() - t0
        for path, _ in spies:
            kind = path.stem.rsplit("-", 1)[1]
            out[kind] = {"file": str(path.relative_to(ROOT)),
                         "summary": summarize_profile(path, seconds * PROFILE_RATE)}
        # CPU per thread kind, from /proc (kernel time included), named from py-spy's tids
        names: dict[int, str] = {}
        for path, _ in spies:
            with contextlib.suppress(OSError):
                for line in path.read_text().splitlines():
                    m = re.match(r"(?:process [^;]*;)?thread \((\d+)\):?\s*([^;]*)", line)
                    if m:
                        names.setdefault(int(m.group(1)), _thread_kind(m.group(0)))
        cores: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for tid, (u1, s1) in after.items():
            u0, s0 = before.get(tid, (0.0, 0.0))
            kind = names.get(tid, "other threads")
            cores[kind][0] += (u1 - u0) / elapsed
            cores[kind][1] += (s1 - s0) / elapsed
        out["cpu_cores"] = {k: {"user": round(u, 2), "sys": round(sy, 2)}
                            for k, (u, sy) in sorted(cores.items(), key=lambda kv: -sum(kv[1]))
                            if u + sy >= 0.005}
        return out


def _thin(samples: list[tuple[float, int, str]], n: int) -> list[list[Any]]:
    step = max(1, len(samples) // n)
    return [[round(t, 1), round(kb / 1024, 1), p] for t, kb, p in samples[::step]]


# ---------------------------------------------------------------- py-spy summaries

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
PROFILE_RATE = 200  # samples/s


def _short(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    file = m.group("file")
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{m.group('func')} ({file})"


# Frames that only carry other frames: the event loop, click, thread and pool plumbing.
_WRAPPER = re.compile(r"\((click/|asyncio/runners|threading\.py|kourier-relay\))|"
                      r"^(BaseEventLoop\.(run_forever|run_until_complete|_run_once)|"
                      r"Handle\._run|serve|guarded\.<locals>\.wrapper|_worker|"
                      r"_WorkItem\.run) ")


def _thread_kind(name: str) -> str:
    """py-spy's `thread (tid): name` -> what the thread is in the relay."""
    name = re.sub(r"^thread \(\d+\):?\s*", "", name).strip()
    if name == "MainThread":
        return "event loop"
    if name.startswith("sqlite-store"):
        return "store writer"
    if name.startswith("send_"):
        return "relay send pool"
    if name.startswith("ThreadPoolExecutor-"):
        return "apprise shared pool"
    if name.startswith("asyncio_"):
        return "asyncio default pool"
    return name or "unnamed thread"


def summarize_profile(path: Path, possible: int, top: int = 25) -> dict[str, Any]:
    """Per thread kind: busy share of wall time, and functions by share of wall time.

    `possible` is samples per thread if it were busy all the time (rate x seconds); a
    kind with several threads (a pool) can pass 100 %. Frames present in every sample of
    a kind (thread bootstrap, the event loop's run_forever ...) are left out.
    """
    if not path.exists():
        return {"error": "no profile written"}
    selfc: dict[str, Counter[str]] = defaultdict(Counter)
    inclusive: dict[str, Counter[str]] = defaultdict(Counter)
    totals: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        if frames[0].startswith("process "):
            frames = frames[1:]
        if not frames:
            continue
        kind = _thread_kind(frames[0])
        calls = [_short(f) for f in frames[1:]]
        if not calls:
            continue
        totals[kind] += n
        selfc[kind][calls[-1]] += n
        for c in set(calls):
            inclusive[kind][c] += n
    out: dict[str, Any] = {"possible_samples_per_thread": possible, "threads": {}}
    for kind in sorted(totals, key=lambda k: -totals[k]):
        t = totals[kind]
        out["threads"][kind] = {
            "busy_pct": round(100 * t / possible, 1),
            "self_pct": [[f, round(100 * c / possible, 1)]
                         for f, c in selfc[kind].most_common(top)],
            "inclusive_pct": [[f, round(100 * c / possible, 1)]
                              for f, c in inclusive[kind].most_common(top + 40)
                              if c < 0.95 * t and not _WRAPPER.search(f)][:top],
        }
    return out


# ---------------------------------------------------------------- footprint


def installed_size() -> dict[str, Any]:
    """Bytes on disk of kourier-relay's runtime dependencies (no extras), from their RECORDs."""
    from importlib import metadata

    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip vendors it
        from pip._vendor.packaging.requirements import Requirement  # type: ignore

    seen: dict[str, int] = {}

    def walk(name: str) -> None:
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            return
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            return
        size = 0
        for f in dist.files or []:
            with contextlib.suppress(OSError):
                size += Path(dist.locate_file(f)).stat().st_size
        seen[key] = size
        for req in dist.requires or []:
            r = Requirement(req)
            if r.marker and not r.marker.evaluate({"extra": ""}):
                continue
            walk(r.name)

    walk("kourier-relay")
    seen.pop("kourier-relay", None)
    total = sum(seen.values())
    return {"total_mb": round(total / 1e6, 1),
            "packages_mb": {k: round(v / 1e6, 2) for k, v in
                            sorted(seen.items(), key=lambda kv: -kv[1])}}


# ---------------------------------------------------------------- report


def med(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(statistics.median(vals), 2) if vals else None


def within(value: float | None, ref: float | None) -> bool:
    if value is None or ref is None:
        return False
    return value <= max(ref * TOLERANCE[0], ref + TOLERANCE[1])


def build_report(res: dict[str, Any]) -> tuple[list[list[str]], list[dict[str, Any]]]:
    rows: list[list[str]] = []
    targets: list[dict[str, Any]] = []
    med_ = res["medians"] = {}

    def target(name: str, value: Any, goal: str, ok: bool | None, unit: str = "") -> None:
        targets.append({"target": name, "value": value, "unit": unit, "goal": goal,
                        "met": ok if value is not None else None})

    def row(scn: str, metric: str, value: Any, unit: str = "", note: str = "") -> None:
        shown = "—" if value is None else (f"{value:,.1f}" if isinstance(value, float)
                                            else f"{value:,}" if isinstance(value, int)
                                            else str(value))
        rows.append([scn, metric, f"{shown} {unit}".strip(), note])

    runs1 = res["scenarios"].get("1", [])
    if runs1:
        m: dict[str, Any] = {}
        for c in ("c10", "c50"):
            m[c] = {
                "relay_per_s": med([r[c]["relay"]["acked_per_s"] for r in runs1]),
                "relay_p50_ms": med([r[c]["relay"]["ack_p50_ms"] for r in runs1]),
                "relay_p99_ms": med([r[c]["relay"]["ack_p99_ms"] for r in runs1]),
                "bare_per_s": med([r[c]["bare"]["acked_per_s"] for r in runs1]),
                "bare_p50_ms": med([r[c]["bare"]["ack_p50_ms"] for r in runs1]),
                "bare_p99_ms": med([r[c]["bare"]["ack_p99_ms"] for r in runs1]),
                "ratio": med([r[c]["ratio"] for r in runs1]),
                "relay_cpu_per_event_ms": med([1000 * r[c]["relay"]["relay_cpu_s"]
                                               / max(1, r[c]["relay"]["accepted"])
                                               for r in runs1]),
                "delivered_during_per_s": med([r[c]["relay"]["delivered_during"]
                                               / r[c]["relay"]["seconds"] for r in runs1]),
            }
            conns = c[1:]
            row("1 ingest", f"relay acked/s @{conns} conns", m[c]["relay_per_s"], "ev/s",
                f"bare {m[c]['bare_per_s']:,.0f}/s, ratio {m[c]['ratio']:.2f}")
            row("1 ingest", f"relay ack p50 / p99 @{conns}",
                f"{m[c]['relay_p50_ms']} / {m[c]['relay_p99_ms']}", "ms",
                f"bare {m[c]['bare_p50_ms']} / {m[c]['bare_p99_ms']} ms")
        row("1 ingest", "relay CPU per accepted event @50", m["c50"]["relay_cpu_per_event_ms"],
            "ms", f"deliveries meanwhile {m['c50']['delivered_during_per_s']:.0f}/s")
        med_["1"] = m
        target("ingest @50 conns ≥ 70 % of bare ceiling (unpinned)", m["c50"]["ratio"],
               "≥ 0.70", m["c50"]["ratio"] is not None and m["c50"]["ratio"] >= TARGET_RATIO)
        target("ack p99 @50 conns, deliveries flowing", m["c50"]["relay_p99_ms"], "≤ 25 ms",
               m["c50"]["relay_p99_ms"] is not None
               and m["c50"]["relay_p99_ms"] <= TARGET_ACK_P99_MS, " ms")

    pairs = res["scenarios"].get("1p", [])
    if pairs:
        m = {"ratio": med([p["ratio"] for p in pairs]),
             "relay_per_s": med([p["relay"]["acked_per_s"] for p in pairs]),
             "relay_p99_ms": med([p["relay"]["ack_p99_ms"] for p in pairs]),
             "bare_per_s": med([p["bare"]["acked_per_s"] for p in pairs]),
             "delivered_during_per_s": med([p["relay"]["delivered_during"]
                                            / p["relay"]["seconds"] for p in pairs]),
             "ratios": [p["ratio"] for p in pairs]}
        med_["1p"] = m
        row("1 ingest", "pinned @50: relay acked/s (relay and bare on CPU 0)",
            m["relay_per_s"], "ev/s", f"bare {m['bare_per_s']:,.0f}/s; ratio {m['ratio']:.2f}"
            f" (median of {len(pairs)} pairs: {', '.join(f'{r:.2f}' for r in m['ratios'])});"
            f" ack p99 {m['relay_p99_ms']} ms; deliveries meanwhile"
            f" {m['delivered_during_per_s']:.0f}/s")
        target("ingest @50, pinned (relay and bare on one core) ≥ 45 % of bare", m["ratio"],
               "≥ 0.45", m["ratio"] is not None and m["ratio"] >= TARGET_PINNED_RATIO)

    runs2 = res["scenarios"].get("2", [])
    if runs2:
        m = {"steady_p50_ms": med([r["steady"]["p50_ms"] for r in runs2]),
             "steady_p99_ms": med([r["steady"]["p99_ms"] for r in runs2]),
             "steady_ack_p99_ms": med([r["steady"]["wrk"]["ack_p99_ms"] for r in runs2]),
             "steady_rate": med([r["steady"]["wrk"]["acked_per_s"] for r in runs2]),
             "burst_per_s": med([r["burst"]["notifications_per_s"] for r in runs2]),
             "burst_p50_ms": med([r["burst"]["p50_ms"] for r in runs2]),
             "burst_p99_ms": med([r["burst"]["p99_ms"] for r in runs2]),
             "burst_ingest_per_s": med([r["burst"]["wrk"]["acked_per_s"] for r in runs2]),
             "burst_drained_after_s": med([r["burst"]["drained_after_s"] for r in runs2]),
             "lost": sum(r["steady"]["lost"] + r["burst"]["lost"] for r in runs2),
             "duplicates": sum(r["steady"]["duplicates"] + r["burst"]["duplicates"]
                               for r in runs2)}
        med_["2"] = m
        row("2 e2e", f"steady {m['steady_rate']:.0f} ev/s: e2e p50 / p99",
            f"{m['steady_p50_ms']} / {m['steady_p99_ms']}", "ms",
            f"ack p99 {m['steady_ack_p99_ms']} ms")
        row("2 e2e", f"burst {res['params']['burst']:,}: notifications/s at sink",
            m["burst_per_s"], "n/s", f"ingest {m['burst_ingest_per_s']:,.0f} ev/s;"
            f" all arrived {m['burst_drained_after_s']} s after the first send")
        row("2 e2e", "burst: e2e p50 / p99", f"{m['burst_p50_ms']} / {m['burst_p99_ms']}", "ms",
            "queueing: the burst arrives faster than it drains")
        row("2 e2e", "lost / duplicated notifications", f"{m['lost']} / {m['duplicates']}", "",
            "over all runs")
        target("e2e throughput to one json:// receiver", m["burst_per_s"], "≥ 620 n/s",
               m["burst_per_s"] is not None and m["burst_per_s"] >= TARGET_E2E_RATE, " n/s")
        target("e2e p50 at a steady 200 ev/s", m["steady_p50_ms"], "≤ 50 ms",
               m["steady_p50_ms"] is not None and m["steady_p50_ms"] <= TARGET_E2E_P50_MS, " ms")

    runs3 = res["scenarios"].get("3", [])
    if runs3:
        m = {"healthy_p50_ms": med([r["healthy_p50_ms"] for r in runs3]),
             "healthy_p99_ms": med([r["healthy_p99_ms"] for r in runs3]),
             "steady_ack_p99_ms": med([r["steady"]["ack_p99_ms"] for r in runs3]),
             "load_per_s": med([r["load50"]["acked_per_s"] for r in runs3]),
             "load_p50_ms": med([r["load50"]["ack_p50_ms"] for r in runs3]),
             "load_p99_ms": med([r["load50"]["ack_p99_ms"] for r in runs3]),
             "slow_arrivals": med([r["slow_arrivals"] for r in runs3]),
             "failing_arrivals": med([r["failing_arrivals"] for r in runs3])}
        med_["3"] = m
        row("3 slow", "healthy receiver e2e p50 / p99 at steady rate",
            f"{m['healthy_p50_ms']} / {m['healthy_p99_ms']}", "ms",
            "vs scenario 2 steady " + (f"{med_['2']['steady_p50_ms']} / "
                                       f"{med_['2']['steady_p99_ms']} ms" if "2" in med_ else "—"))
        row("3 slow", "ack p50 / p99 @50 conns", f"{m['load_p50_ms']} / {m['load_p99_ms']}", "ms",
            f"{m['load_per_s']:,.0f} ev/s; scenario 1: "
            + (f"{med_['1']['c50']['relay_p50_ms']} / {med_['1']['c50']['relay_p99_ms']} ms"
               if "1" in med_ else "—"))
        row("3 slow", "arrivals at slow / failing receiver",
            f"{m['slow_arrivals']:.0f} / {m['failing_arrivals']:.0f}", "",
            "slow: 2 s each; failing: circuit opens after 5")
        if "1" in med_:
            ref = med_["1"]["c50"]["relay_p99_ms"]
            target("slow+failing receivers: ack p99 @50 stays as in scenario 1",
                   m["load_p99_ms"], f"≤ {max(ref * TOLERANCE[0], ref + TOLERANCE[1]):.1f} ms"
                   f" (scenario 1: {ref} ms)", within(m["load_p99_ms"], ref), " ms")
        if "2" in med_:
            ref = med_["2"]["steady_p50_ms"]
            ref99 = med_["2"]["steady_p99_ms"]
            target("slow+failing receivers: healthy receiver's e2e p50 does not grow",
                   m["healthy_p50_ms"], f"≤ {max(ref * TOLERANCE[0], ref + TOLERANCE[1]):.1f} ms"
                   f" (scenario 2: {ref} ms)", within(m["healthy_p50_ms"], ref), " ms")
            target("slow+failing receivers: healthy receiver's e2e p99 does not grow",
                   m["healthy_p99_ms"], f"≤ {max(ref99 * TOLERANCE[0], ref99 + TOLERANCE[1]):.1f}"
                   f" ms (scenario 2: {ref99} ms)", within(m["healthy_p99_ms"], ref99), " ms")

    noise = [r.get("foreign_cpu_pct") for r in _all_wrk_runs(res)]
    noise = [n for n in noise if n is not None]
    if noise:
        res["noise"] = {"foreign_cpu_pct_median": med(noise), "foreign_cpu_pct_max": max(noise)}
        rows.append(["noise", "other processes' CPU during load runs (median / max)",
                     f"{med(noise)} / {max(noise)} % of the machine",
                     "above ~5 % the numbers are disturbed" if max(noise) > 5 else "quiet machine"])

    s4 = res["scenarios"].get("4")
    if s4:
        rss = s4["rss_mb"]
        row("4 backlog", f"{s4['expected']:,} events accepted (sink down)", s4["ingest_per_s"],
            "ev/s", f"{s4['ingest_s']:.1f} s")
        row("4 backlog", "drain rate after release (first 30 s / overall)",
            f"{s4.get('drain_first_30s_per_s')} / {s4['drain_per_s']}", "n/s",
            f"{s4['drained']:,} of {s4['expected']:,} in {s4['drain_s']} s"
            + ("" if s4.get("complete") else " (stopped at --drain-limit)")
            + f"; duplicates {s4['duplicates']}; relay CPU"
            f" {s4.get('drain_cpu_ms_per_notification')} ms per notification"
            + (f" ({s4['drain_all_cpu_ms_per_notification']} with its send processes)"
               if s4.get("drain_all_cpu_ms_per_notification") != s4.get(
                   "drain_cpu_ms_per_notification") else ""))
        row("4 backlog", "RSS idle → after ingest → peak waiting/draining",
            f"{rss['idle']} → {rss['after_ingest']} → {max(rss['peak_paused'], rss['peak_drain'])}",
            "MB", f"growth {s4['growth_while_waiting_and_draining_mb']} MB")
        target("backlog: memory flat while waiting and draining",
               s4["growth_while_waiting_and_draining_mb"], f"≤ {FLAT_MB:.0f} MB growth",
               s4["growth_while_waiting_and_draining_mb"] <= FLAT_MB, " MB")

    s4l = res["scenarios"].get("4l")
    if s4l:
        w = s4l["wrk"]
        row("4 backlog", "ingest @50 while it drains: acked/s, ack p50 / p99",
            f"{w['acked_per_s']:,.0f} ev/s, {w['ack_p50_ms']} / {w['ack_p99_ms']} ms", "",
            f"drain alone {s4l['drain_alone_per_s']:.0f} n/s, meanwhile"
            f" {s4l['drain_during_per_s']:.0f} n/s (ingest first); {s4l['left_at_end']:,} left")
        target("ack p99 @50 conns while a backlog drains", w["ack_p99_ms"], "≤ 25 ms",
               w["ack_p99_ms"] is not None and w["ack_p99_ms"] <= TARGET_ACK_P99_MS, " ms")

    s5 = res["scenarios"].get("5")
    if s5:
        row("5 footprint", "start-up to /readyz (median of all starts)", s5["startup_s"], "s",
            f"max {s5['startup_max_s']} s over {s5['starts']} starts")
        row("5 footprint", "idle RSS", s5["idle_rss_mb"], "MB",
            f"all {s5['processes']} relay processes together {s5['idle_rss_all_mb']} MB"
            if s5.get("processes", 1) > 1 else "")
        trees = s5.get("peak_rss_all_processes_mb", {})
        for scn, peak in sorted(s5["peak_rss_mb"].items()):
            row("5 footprint", f"peak RSS, scenario {scn}", peak, "MB",
                f"all relay processes together {trees[scn]} MB" if scn in trees else "")
        row("5 footprint", "installed size of runtime deps", s5["deps"]["total_mb"], "MB",
            ", ".join(f"{k} {v:.1f}" for k, v in list(s5["deps"]["packages_mb"].items())[:4]))
        peak = max(s5["peak_rss_mb"].values(), default=None)
        target("peak RSS in every scenario (the relay process)", peak, "≤ 100 MB",
               peak is not None and peak <= TARGET_PEAK_RSS_MB, " MB")
        if trees:
            tree = max(trees.values())
            target("peak RSS of all relay processes together", tree, "≤ 200 MB",
                   tree <= TARGET_ALL_PROCESSES_MB, " MB")
        target("start-up to ready", s5["startup_s"], "≤ 1.5 s",
               s5["startup_s"] is not None and s5["startup_s"] <= TARGET_STARTUP_S, " s")
    return rows, targets


def _all_wrk_runs(res: dict[str, Any]) -> list[dict[str, Any]]:
    out = []

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            if "latency_us" in x and "acked_per_s" in x:
                out.append(x)
            else:
                for v in x.values():
                    walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(res.get("scenarios", {}))
    return out


def print_table(rows: list[list[str]], targets: list[dict[str, Any]], res: dict[str, Any],
                ) -> None:
    p = res["params"]
    print(f"\nkourier-relay bench — {res['machine']['cpus']} CPUs, Python"
          f" {res['machine']['python']}, {p['runs']} run(s) per scenario (medians),"
          f" {'quick' if p['quick'] else 'full'}\n")
    widths = [max(len(r[i]) for r in rows + [["scenario", "metric", "value", "notes"]])
              for i in range(4)]
    header = ["scenario", "metric", "value", "notes"]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    last = ""
    for r in rows:
        cells = [r[0] if r[0] != last else ""] + r[1:]
        last = r[0]
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    print("\nTargets (issues 6 and 17)")
    tw = max(len(t["target"]) for t in targets) if targets else 10
    for t in targets:
        mark = {True: "MET    ", False: "NOT MET", None: "n/a    "}[t["met"]]
        shown = "n/a" if t["value"] is None else f"{t['value']}{t.get('unit', '')}"
        print(f"  [{mark}] {t['target'].ljust(tw)}  {shown}  (goal {t['goal']})")
    print()


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--quick", action="store_true", help="~2 minutes: 1 run, small counts")
    parser.add_argument("--runs", type=int, help="runs per scenario (default 3, quick 1)")
    parser.add_argument("--scenarios", default="1,2,3,4,5", help="which to run, e.g. 1,2")
    parser.add_argument("--duration", type=float, help="seconds per wrk ingest run (default 8)")
    parser.add_argument("--steady-duration", type=float, help="seconds at the steady rate")
    parser.add_argument("--rate", type=float, default=200.0, help="steady events/s (200)")
    parser.add_argument("--burst", type=int, help="burst size (20000)")
    parser.add_argument("--backlog", type=int, help="backlog size (100000)")
    parser.add_argument("--pause", type=float, default=5.0, help="s the backlog waits")
    parser.add_argument("--drain-limit", type=float,
                        help="s to wait for the backlog to drain (default 240, quick 60)")
    parser.add_argument("--slow", type=float, default=2.0, help="s the slow receiver takes")
    parser.add_argument("--idle-wait", type=float, default=3.0, help="s before idle RSS")
    parser.add_argument("--profile", action="store_true",
                        help="only profile the relay with py-spy (ingest, then delivery)")
    parser.add_argument("--whatif", default="", metavar="PATCHES",
                        help="start the relay through bench/whatif.py with these patches")
    parser.add_argument("--extra-workers", type=int, default=0, metavar="N",
                        help="N more relay processes on the same store (they deliver too)")
    parser.add_argument("--processes", type=int, metavar="N",
                        help="sending.processes in the bench configs (config: 1; 3 = two send"
                             " processes)")
    parser.add_argument("--receiver-concurrency", type=int, metavar="N",
                        help="sends in flight to the healthy sink receiver (config: 8)")
    parser.add_argument("--relay", default="", metavar="CMD",
                        help="the kourier-relay command to measure (default: this venv's), e.g."
                             " another checkout's .venv/bin/kourier-relay for a before/after")
    parser.add_argument("--pg", default="", metavar="DSN",
                        help="PostgreSQL store (a fresh schema per relay start) instead of SQLite")
    parser.add_argument("--replicas", type=int, default=1, metavar="N",
                        help="N relays on the same store, each serving HTTP; load is split")
    parser.add_argument("--pinned-pairs", type=int, default=3, metavar="N",
                        help="scenario 1: relay/bare pairs held to CPU 0, wrk on CPU 1 (3)")
    parser.add_argument("--out", type=Path, help="JSON path (default bench/results/<ts>.json)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, stores)")
    args = parser.parse_args()
    q = args.quick
    args.runs = args.runs or (1 if q else 3)
    args.duration = args.duration or (5.0 if q else 8.0)
    args.steady_duration = args.steady_duration or (6.0 if q else 10.0)
    args.burst = args.burst or (5000 if q else 20000)
    args.backlog = args.backlog or (10000 if q else 100000)
    args.drain_limit = args.drain_limit or (60.0 if q else 240.0)
    if q:
        args.pause = min(args.pause, 2.0)
        args.idle_wait = min(args.idle_wait, 2.0)
    args.stamp = time.strftime("%Y%m%d-%H%M%S")
    scenarios = {s.strip() for s in args.scenarios.split(",") if s.strip()}

    ensure_tools(args.profile)
    RESULTS.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="kourier-bench-"))
    bench = Bench(args, workdir)
    res: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(workdir),
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "scenarios": {},
    }
    t_start = time.monotonic()

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        bench.sink = bench.start_sink()
        if args.profile:
            log("profiling the relay with py-spy: ingest (sink down), then delivery (drain)")
            res["profile"] = bench.profile()
            print_profile(res["profile"])
        else:
            if "1" in scenarios:
                log(f"scenario 1: ingest vs bare handler, {args.runs} run(s) x 10/50 conns")
                res["scenarios"]["1"] = [bench.scenario1(i + 1) for i in range(args.runs)]
                if args.pinned_pairs and (os.cpu_count() or 1) >= 2:
                    log(f"scenario 1, pinned: {args.pinned_pairs} relay/bare pairs on CPU 0,"
                        " wrk and the sink on CPU 1")
                    res["scenarios"]["1p"] = [bench.pinned_pair(i + 1)
                                              for i in range(args.pinned_pairs)]
            if "2" in scenarios:
                log(f"scenario 2: end to end, steady {args.rate:.0f} ev/s and a burst of"
                    f" {args.burst}")
                res["scenarios"]["2"] = [bench.scenario2(i + 1) for i in range(args.runs)]
            if "3" in scenarios:
                log("scenario 3: slow (2 s) and failing receivers next to a healthy one")
                res["scenarios"]["3"] = [bench.scenario3(i + 1) for i in range(args.runs)]
            if "4" in scenarios:
                log(f"scenario 4: backlog of {args.backlog} with the sink down, then released")
                res["scenarios"]["4"] = bench.scenario4()
                log("scenario 4, loaded: ingest @50 while a backlog drains")
                res["scenarios"]["4l"] = bench.scenario4_loaded()
            if "5" in scenarios:
                log("scenario 5: footprint")
                s5 = bench.scenario5_idle()
                s5["deps"] = installed_size()
                s5["starts"] = len(bench.starts)
                s5["startup_s"] = med(bench.starts)
                s5["startup_max_s"] = round(max(bench.starts), 3)
                s5["peak_rss_mb"] = {k: v for k, v in bench.peaks.items() if k != "5-idle"}
                s5["peak_rss_all_processes_mb"] = dict(bench.tree_peaks)
                res["scenarios"]["5"] = s5
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        bench.cleanup()
        if args.keep:
            log(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    res["elapsed_s"] = round(time.monotonic() - t_start, 1)
    if not args.profile:
        rows, targets = build_report(res)
        res["targets"] = targets
        print_table(rows, targets, res)
    out = args.out or RESULTS / f"{args.stamp}{'-profile' if args.profile else ''}.json"
    out.write_text(json.dumps(res, indent=1, default=str))
    log(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}"
        f" ({res['elapsed_s']:.0f} s)")
    return 0


def print_profile(prof: dict[str, Any]) -> None:
    for phase in ("ingest", "delivery"):
        p = prof.get(phase)
        if not p:
            continue
        rate = (f"{p['wrk']['acked_per_s']:.0f} events/s acked, relay CPU"
                f" {p['wrk']['relay_cpu_ms_per_event']} ms per event" if "wrk" in p else
                f"{p['notifications_per_s']:.0f} notifications/s from a backlog of"
                f" {p['backlog_at_start']}, relay CPU {p['relay_cpu_ms_per_notification']} ms"
                f" and sink CPU {p['sink_cpu_ms_per_notification']} ms per notification;"
                f" relay {p['relay_cores']} cores, machine {p['machine_busy_cores']} cores busy")
        cores = p.get("cpu_cores", {})
        print(f"\n=== {phase}: CPU cores by thread (user+sys, from /proc): "
              + ", ".join(f"{k} {v['user']}+{v['sys']}" for k, v in cores.items()))
        for kind in ("wall", "gil"):
            s = p[kind]["summary"]
            print(f"\n=== {phase} ({rate}), {kind} view: {p[kind]['file']}")
            for thread, data in s.get("threads", {}).items():
                print(f"--- {thread}: busy {data['busy_pct']}% of wall time"
                      f"{' (holding the GIL)' if kind == 'gil' else ''}; inclusive:")
                for f, pct in data["inclusive_pct"][:14]:
                    print(f"  {pct:5.1f}%  {f}")
                print("    self:")
                for f, pct in data["self_pct"][:8]:
                    print(f"  {pct:5.1f}%  {f}")


def machine_info(workdir: Path) -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                            "platform": platform.platform()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        info["store_fs"] = subprocess.run(["df", "-T", str(workdir)], capture_output=True,
                                          text=True).stdout.splitlines()[-1].split()[1]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        info["wrk"] = subprocess.run(["wrk", "-v"], capture_output=True, text=True
                                     ).stdout.splitlines()[0]
    from importlib import metadata
    for name in ("aiohttp", "apprise", "jinja2", "kourier-relay"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            info[name] = metadata.version(name)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        info["git"] = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                                     capture_output=True, text=True).stdout.strip()
    return info


if __name__ == "__main__":
    sys.exit(main())
