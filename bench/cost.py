#!/usr/bin/env python3
"""CPU cost per event, in instructions: a number this noisy machine cannot move (`make bench-cost`).

`make bench` measures rates, and two runs of the same code here differ by 20 % and more (the
machine's speed changes during the day). This counts what the relay does instead: it runs
`python -m relay serve` under valgrind's callgrind with instrumentation off, waits for
/readyz, switches it on (`callgrind_control -i on`), posts `--events` unique events from a
client outside valgrind, waits until the store has finished every job, and dumps the count
(`callgrind_control -d`). Start-up and shut-down are not counted; the idle worker's polls
during the (slow, ~100x) run are, and are a fraction of a percent.

One client by default: with several, how many requests share a commit depends on timing,
and so on whatever else the machine runs (4 clients: ±3 % between quiet and busy runs of
the same code; 1 client: within 1 %, two runs of the same code within 0.2 %).

Scenarios, each on a fresh SQLite store with the relay's defaults (in-process sending):
  ingest    the route matches nothing: authenticate, parse, store, route; no job
  pipeline  one json:// job per event to a local sink (bench/sink.py): ingest, plan,
            render, send through Apprise, record

    .venv/bin/python bench/cost.py                         # this checkout
    .venv/bin/python bench/cost.py --base ../other-checkout # interleaved: base, this, base, this

`--base` (and `--checkout`) name a checkout with its own .venv; a checkout from before the
`sending:` section reads the same config (it has no such section). Prints Minstr/event per
scenario and run, and the change against the base. Needs valgrind (apt-get install valgrind).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

BENCH = Path(__file__).resolve().parent
TOKEN = "cost-token"
CONFIG = """\
server:
  listen: "127.0.0.1:{port}"
  path: /webhook
  tokens: ["{token}"]
store:
  url: "sqlite:{db}"
receivers:
  - name: sink
    urls: ["json://127.0.0.1:{sink}/fast"]
routes:
  - name: all
    match: {match}
    receivers: [sink]
    title: "{{{{ delivery_id }}}}"
    body: "{{{{ status }}}} at {{{{ timestamp }}}}"
"""
MATCH = {"ingest": '{event: "delivery.never"}', "pipeline": "{}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for(check, what: str, timeout: float, proc: subprocess.Popen[bytes] | None = None,
                   ) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not after {timeout:g}s")
        await asyncio.sleep(0.05)


async def status(session: aiohttp.ClientSession, url: str) -> int:
    try:
        async with session.get(url) as r:
            return r.status
    except aiohttp.ClientError:
        return 0


def unfinished(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return int(conn.execute("SELECT count(*) FROM jobs WHERE state IN ('pending', 'claimed')"
                                ).fetchone()[0])


def callgrind(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=60)


def counted(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith("totals:") or line.startswith("summary:"):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


async def one_run(checkout: Path, scenario: str, events: int, sink: int, work: Path,
                  tag: str, clients: int) -> float:
    """Instructions per event of one relay run (millions)."""
    port, db = free_port(), work / f"{tag}-{scenario}.db"
    config = work / f"{tag}-{scenario}.yaml"
    config.write_text(CONFIG.format(port=port, token=TOKEN, db=db, sink=sink,
                                    match=MATCH[scenario]))
    out = work / f"{tag}-{scenario}.cg"
    python = checkout / ".venv" / "bin" / "python"
    cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
           str(python), "-m", "relay", "serve", "-c", str(config)]
    log = open(work / f"{tag}-{scenario}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=checkout,
                            env={**os.environ, "PYTHONHASHSEED": "0"})
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            await wait_for(lambda: _is(status(session, base + "/readyz"), 200), "readyz", 600,
                           proc)
            callgrind("-i", "on", str(proc.pid))
            headers = {"Authorization": f"Bearer {TOKEN}"}
            queue = iter(range(events))

            async def client() -> None:
                for n in queue:
                    body = {"event": "delivery.updated", "delivery_id": f"{tag}-{n}",
                            "timestamp": f"2026-12-01T10:{n // 60 % 60:02d}:{n % 60:02d}Z",
                            "status": "in_transit"}
                    async with session.post(base + "/webhook", json=body,
                                            headers=headers) as r:
                        if r.status != 202:
                            raise RuntimeError(f"event {n}: {r.status} {await r.text()}")

            await asyncio.gather(*(client() for _ in range(clients)))

            async def finished() -> bool:
                return unfinished(db) == 0

            await wait_for(finished, "every job finished", 1200, proc)
            callgrind("-d", str(proc.pid))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    dumps = sorted(work.glob(f"{out.name}.*"))
    if not dumps:
        raise RuntimeError(f"no callgrind dump; see {work / f'{tag}-{scenario}.log'}")
    return counted(dumps[0]) / events / 1e6


async def _is(coro, want: int) -> bool:
    return await coro == want


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, default=BENCH.parent,
                        help="the checkout measured (default: this one)")
    parser.add_argument("--base", type=Path, help="a checkout to compare with, interleaved")
    parser.add_argument("--events", type=int, default=300, help="events per run (300)")
    parser.add_argument("--runs", type=int, default=1, help="runs per relay and scenario (1)")
    parser.add_argument("--scenarios", default="ingest,pipeline")
    parser.add_argument("--clients", type=int, default=1,
                        help="concurrent posters (1: no two requests share a commit, so the"
                             " count does not depend on timing)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir and its dumps")
    args = parser.parse_args()
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        print("bench/cost.py: valgrind is not installed (apt-get install valgrind)",
              file=sys.stderr)
        return 2
    checkouts = {"this": args.checkout.resolve()}
    if args.base:
        checkouts = {"base": args.base.resolve(), **checkouts}
    for path in checkouts.values():
        if not (path / ".venv" / "bin" / "python").exists():
            print(f"bench/cost.py: {path} has no .venv (make .venv/.installed there)",
                  file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="kourier-cost-"))
    sink_port = free_port()
    sink = subprocess.Popen([sys.executable, str(BENCH / "sink.py"), "--port", str(sink_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results: dict[tuple[str, str], list[float]] = {}
    try:
        async with aiohttp.ClientSession() as session:
            await wait_for(lambda: _is(status(session, f"http://127.0.0.1:{sink_port}/-/health"),
                                       200), "the sink", 30, sink)
        for scenario in args.scenarios.split(","):
            for run in range(args.runs):
                for name, path in checkouts.items():
                    t0 = time.monotonic()
                    value = await one_run(path, scenario, args.events, sink_port, work,
                                          f"{name}{run}", args.clients)
                    results.setdefault((scenario, name), []).append(value)
                    print(f"{scenario:9} {name:5} run {run + 1}: {value:8.3f} Minstr/event"
                          f"  ({time.monotonic() - t0:.0f} s)", flush=True)
    finally:
        sink.terminate()
        sink.wait()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work dir kept: {work}")
    print()
    for scenario in args.scenarios.split(","):
        line = f"{scenario:9}"
        for name in checkouts:
            values = results.get((scenario, name), [])
            line += f"  {name}: {statistics.median(values):.3f}" if values else ""
        if args.base and results.get((scenario, "base")) and results.get((scenario, "this")):
            b = statistics.median(results[(scenario, "base")])
            t = statistics.median(results[(scenario, "this")])
            line += f"  change {100 * (t - b) / b:+.1f} %"
        print(line + "  (Minstr/event, median)")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
