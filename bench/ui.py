#!/usr/bin/env python3
"""Status page timings with a million events in the store (`make bench-ui`). Not a test.

Fills a fresh SQLite store with --events events over seven days: four events per delivery, one job each over
three receivers, one attempt per finished job, about 1 % dead and 0.5 %
waiting. Then starts the relay's web app on that store and times the pages
through HTTP with the admin token: the overview and one delivery's timeline
must answer in under 200 ms (median of --runs), the other pages are shown too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiohttp import ClientSession  # noqa: E402
from aiohttp.test_utils import TestServer  # noqa: E402

from relay.lifecycle import Relay  # noqa: E402
from relay.store.sqlite import SQLiteStore  # noqa: E402
from tests.conftest import free_port  # noqa: E402

RECEIVERS = ("ops-chat", "email", "log")
TARGET_MS = 200.0
CONFIG = """\
server: {{listen: "127.0.0.1:{port}", tokens: [hook], admin_token: bench-admin}}
store: {{url: "sqlite:{db}", max_backlog: 10000000}}
receivers:
  - {{name: ops-chat, urls: ["json://127.0.0.1:9/chat"]}}
  - {{name: email, urls: ["json://127.0.0.1:9/email"]}}
  - {{name: log, urls: ["json://127.0.0.1:9/log"]}}
routes:
  - {{name: all, match: {{event: "delivery.*"}}, receivers: [ops-chat]}}
"""


def rows(n: int, now: float):
    rnd = random.Random(1)
    span = 7 * 86400.0
    for i in range(1, n + 1):
        at = now - span + span * i / n
        delivery = f"D-{i // 4}"
        kind = "delivery.created" if i % 4 == 0 else "delivery.updated"
        payload = json.dumps({"event": kind, "delivery_id": delivery, "status": "in_transit",
                              "timestamp": "2026-01-01T00:00:00Z"})
        x = rnd.random()
        state, outcome, error = ("dead", "failed", "HTTP 500: send failed") if x < 0.01 else \
            ("pending", "retry", "HTTP 503") if x < 0.015 else ("sent", "sent", "")
        yield ((i, f"k{i}", kind, delivery, at, payload),
               (i, i, RECEIVERS[i % 3], 0, "all", f"Delivery {delivery}", "body " * 10, "info",
                "text", delivery, kind, 0, state, 1, at, at, error,
                None if state == "pending" else at + 0.2),
               (i, at + 0.2, outcome, error, 0.01))


def fill(path: Path, n: int, now: float) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous=OFF")
    batch: tuple[list, list, list] = ([], [], [])
    for ev, job, attempt in rows(n, now):
        batch[0].append(ev)
        batch[1].append(job)
        batch[2].append(attempt)
        if len(batch[0]) == 50_000:
            _flush(conn, batch)
    _flush(conn, batch)
    conn.execute("INSERT INTO receivers (name) VALUES ('ops-chat'), ('email'), ('log')")
    conn.commit()
    conn.close()


def _flush(conn: sqlite3.Connection, batch: tuple[list, list, list]) -> None:
    conn.executemany("INSERT INTO events (id, dedup_key, type, delivery_id, received_at, payload)"
                     " VALUES (?, ?, ?, ?, ?, ?)", batch[0])
    conn.executemany("INSERT INTO jobs (id, event_id, receiver, url_index, route, title, body,"
                     " type, format, delivery_id, event_type, suppress_stale, state, attempts,"
                     " created_at, next_attempt_at, last_error, finished_at)"
                     " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", batch[1])
    conn.executemany("INSERT INTO attempts (job_id, at, outcome, error, duration)"
                     " VALUES (?, ?, ?, ?, ?)", batch[2])
    for part in batch:
        part.clear()


async def time_pages(base: str, runs: int, n: int) -> dict[str, list[float]]:
    pages = {"overview": "/ui/", "delivery": f"/ui/delivery?id=D-{n // 8}",
             "deliveries": "/ui/deliveries", "dead letters": "/ui/dead"}
    out: dict[str, list[float]] = {name: [] for name in pages}
    async with ClientSession(headers={"Authorization": "Bearer bench-admin"}) as session:
        for _ in range(runs):
            for name, path in pages.items():
                start = time.perf_counter()
                async with session.get(base + path) as resp:
                    await resp.read()
                    assert resp.status == 200, (path, resp.status)
                out[name].append((time.perf_counter() - start) * 1000)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--keep", help="keep the store in this directory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kourier-bench-ui-") as tmp:
        await run(Path(args.keep or tmp), args.events, args.runs)


async def run(work: Path, events: int, runs: int) -> None:
    work.mkdir(parents=True, exist_ok=True)
    db = work / "relay.db"
    db.unlink(missing_ok=True)
    store = SQLiteStore(str(db))
    await store.open()  # the schema, with every migration step
    await store.close()
    started = time.perf_counter()
    fill(db, events, time.time())
    print(f"filled {events:,} events in {time.perf_counter() - started:.0f} s ({db})")
    port = free_port()
    cfg = work / "config.yaml"
    cfg.write_text(CONFIG.format(port=port, db=db))
    relay = Relay(str(cfg), env={})
    relay.worker.run = _idle  # type: ignore[method-assign]  # measure reads, not sending
    server = TestServer(relay.web_app(), host="127.0.0.1", port=port)
    await server.start_server()
    try:
        timings = await time_pages(f"http://127.0.0.1:{port}", runs, events)
    finally:
        await server.close()
    print(f"{'page':<14}{'median ms':>10}{'max ms':>9}  target")
    for name, ms in timings.items():
        mark = ""
        if name in ("overview", "delivery"):
            mark = "MET" if statistics.median(ms) < TARGET_MS else "NOT MET"
            mark += f" (< {TARGET_MS:.0f} ms)"
        print(f"{name:<14}{statistics.median(ms):>10.1f}{max(ms):>9.1f}  {mark}")


async def _idle() -> None:
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
