"""Watches survive kill -9, fire when due during downtime, and fire once across replicas.

Real `python -m relay serve` processes, a real json:// sink, real SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests import pgutil
from tests.conftest import TOKEN, Sink, free_port, post_event, serve_head, spawn_relay, wait_for, write_config
from tests.test_crash import ready

# Shared with tests/test_noise_durability.py: short grace and lease, one json:// receiver.
OPS_HEAD = serve_head("{store}") + """\
sending:
  grace_period: 1s
  lease: 3s
receivers:
  - name: ops
    urls: ["{url}"]
"""
CONFIG = OPS_HEAD + """\
watches:
  - name: stuck
    start: {event: delivery.created}
    stop: {event: delivery.cancelled}
    after: {after}
    receivers: [ops]
    title: "{{ delivery_id }}"
"""


async def post(port: int, delivery_id: str) -> int:
    return await post_event(port, {"event": "delivery.created", "delivery_id": delivery_id,
                                   "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")})


def sent_jobs(db) -> int:
    with closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("SELECT count(*) FROM jobs WHERE state = 'sent'").fetchone()[0])


def titles(sink) -> Counter[str]:
    return Counter(m["title"] for m in sink.messages("ops"))


@asynccontextmanager
async def two_replicas(tmp_path: Path, config: str, dsn: str, sink: Sink,
                       **values: str) -> AsyncIterator[list[int]]:
    """Two ready `relay serve` processes of `config` on one database, sending to the sink's
    /ops; yields their ports and stops both with SIGTERM on the way out."""
    procs, ports = [], [free_port(), free_port()]
    try:
        for port in ports:
            cfg = write_config(tmp_path / f"r{port}.yaml", config, port=port, token=TOKEN,
                               store=dsn, url=sink.url("ops"), **values)
            procs.append(spawn_relay(cfg, log=tmp_path / f"r{port}.log"))
        for port, proc in zip(ports, procs, strict=True):
            await ready(port, proc)
        yield ports
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            await asyncio.to_thread(proc.wait, 15)


async def test_kill_9_loses_no_armed_timer_and_one_due_in_downtime_fires_at_start(tmp_path,
                                                                                  sink):
    port = free_port()
    db = tmp_path / "relay.db"
    cfg = write_config(tmp_path / "relay.yaml", CONFIG, port=port, token=TOKEN,
                       store=f"sqlite:{db}", url=sink.url("ops"), after="1s")
    log = tmp_path / "relay.log"
    proc = spawn_relay(cfg, log=log)
    await ready(port, proc)
    assert await post(port, "D-down") == 202
    due = time.time() + 1
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    # Stay down until the timer is due: it falls due while no relay runs.
    await wait_for(lambda: time.time() > due + 0.5, message="the timer to fall due in downtime")
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT state FROM timers").fetchall() == [("armed",)]
    assert titles(sink)["D-down"] == 0
    proc = spawn_relay(cfg, log=log)
    try:
        await ready(port, proc)
        await wait_for(lambda: titles(sink)["D-down"] == 1, message="the alert due in downtime")
        # Killed between a send and its record, a job is sent again (at least once): the
        # kill below is about the armed timer, so it waits for the alert's record first.
        await wait_for(lambda: sent_jobs(db) == 1, message="the alert's job recorded as sent")
        assert await post(port, "D-armed") == 202
        proc.send_signal(signal.SIGKILL)  # armed, not yet due
        proc.wait(timeout=10)
        with sqlite3.connect(db) as conn:  # what the restart must find (it was killed in time)
            assert conn.execute("SELECT state FROM timers WHERE key = 'stuck:D-armed'"
                                ).fetchone() == ("armed",)
        proc = spawn_relay(cfg, log=log)
        await ready(port, proc)
        await wait_for(lambda: titles(sink)["D-armed"] == 1, message="the alert armed before")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 15) == 0
    assert titles(sink) == Counter({"D-down": 1, "D-armed": 1})
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT key, state FROM timers ORDER BY id").fetchall() == \
            [("stuck:D-down", "fired"), ("stuck:D-armed", "fired")]


@pytest.mark.postgres
async def test_two_replicas_on_postgresql_fire_each_timer_once(tmp_path, sink):
    async with pgutil.fresh_schema(await pgutil.base_dsn()) as dsn:
        async with two_replicas(tmp_path, CONFIG, dsn, sink, after="1s") as ports:
            ids = [f"D-{n}" for n in range(30)]
            for n, delivery_id in enumerate(ids):
                assert await post(ports[n % 2], delivery_id) == 202
            await wait_for(lambda: set(titles(sink)) == set(ids), timeout=30,
                           message="every watch's alert")

            async def all_fired() -> bool:
                return await pgutil.fetchval(
                    dsn, "SELECT count(*) FROM timers WHERE state = 'fired'") == len(ids)

            await wait_for(all_fired, message="every timer fired")
        assert titles(sink) == Counter({i: 1 for i in ids})
