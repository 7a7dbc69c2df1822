"""Ingest with a million armed timers against none (issue 14): events/s and memory.

Runs the real store (SQLite by default, or `--store postgresql://…`) the way
ingest calls it: one `accept` per event, each arming a watch timer, many in
flight at once so commits are grouped as under load. The million armed
timers are written straight into the table first (as a million earlier
events would have left them). Not a test: run it on a quiet machine,
`make bench-timers` or `python bench/timers.py --armed 1000000`.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sqlite3
import tempfile
import time
from pathlib import Path

from relay.events import event_from_dict
from relay.pipeline import Notification
from relay.store import TimerOp, open_store

T0 = 1_800_000_000.0


def preload_sqlite(path: Path, armed: int) -> None:
    """`armed` armed watch timers, due in the far future, and the events that armed them."""
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO events (id, dedup_key, type, delivery_id, received_at, payload)"
                     " VALUES (1, 'preload', 'delivery.created', 'p', ?, '{}')", (T0,))
        conn.executemany(
            "INSERT INTO timers (kind, key, delivery_id, event_id, due_at, armed_at, context)"
            " VALUES ('watch', ?, ?, 1, ?, ?, '{\"watch\": \"w\"}')",
            ((f"w:p{n}", f"p{n}", T0 + 86400 + n, T0) for n in range(armed)))


async def ingest(url: str, events: int, concurrency: int) -> float:
    store = open_store(url)
    await store.open()
    jobs = [Notification("hook", 0, "r", "t", "b", "info", "text")]
    sem = asyncio.Semaphore(concurrency)

    async def one(n: int) -> None:
        event = event_from_dict({"event": "delivery.created", "delivery_id": f"b{n}",
                                 "timestamp": "2027-01-15T08:00:00Z"})
        async with sem:
            await store.accept(event, f"bench{n}", jobs, now=T0, timers=[
                TimerOp("arm", "watch", f"w:b{n}", f"b{n}", delay=4 * 3600,
                        context={"watch": "w"})])

    start = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(events)))
    elapsed = time.perf_counter() - start
    claimed = await store.claim_timers(limit=10, now=T0 + 60, lease=30, owner="bench")
    await store.close()
    assert claimed == [], "nothing is due: a claim must find nothing, quickly"
    return events / elapsed


async def run(args: argparse.Namespace) -> None:
    for armed in (0, args.armed):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "relay.db"
            url = args.store or f"sqlite:{path}"
            if not args.store:
                store = open_store(url)
                await store.open()  # the schema
                await store.close()
                t = time.perf_counter()
                preload_sqlite(path, armed)
                print(f"preloaded {armed:,} armed timers in {time.perf_counter() - t:.1f}s")
            rate = await ingest(url, args.events, args.concurrency)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"armed={armed:>9,}  ingest {rate:8.0f} events/s (each arming a timer)"
                  f"  max RSS {rss:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--armed", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--store", help="a postgresql:// URL (preloading is SQLite only)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
