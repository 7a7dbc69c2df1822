"""Digest windows and held notifications survive kill -9; digests and summaries go out
once across PostgreSQL replicas.

Real `python -m relay serve` processes, a real json:// sink, real SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from collections import Counter

import pytest

from tests import pgutil
from tests.conftest import TOKEN, free_port, post_event, spawn_relay, wait_for, write_config
from tests.test_crash import ready
from tests.test_watch_durability import OPS_HEAD, two_replicas

CONFIG = OPS_HEAD + """\
routes:
  - name: failures
    match: {event: delivery.updated, status: failed}
    receivers: [ops]
    digest: {window: {window}, group_by: [hub]}
    title: "{{ count }} failed at {{ group.hub }}"
    body: "{% for e in events %}{{ e.delivery_id }} {% endfor %}"
"""
# A receiver that is always in quiet hours: what it holds must outlive a kill -9 too.
NIGHT = """  - name: night
    urls: ["{night}"]
    quiet_hours:
      timezone: Europe/Berlin
      windows: [{days: daily, from: "00:00", to: "24:00"}]
"""


async def post(port: int, delivery_id: str, hub: str = "Hub 3") -> int:
    return await post_event(port, {"event": "delivery.updated", "status": "failed",
                                   "delivery_id": delivery_id, "hub": hub,
                                   "timestamp": "2024-09-14T14:30:00Z"})


def digests(sink) -> list[tuple[str, str]]:
    return [(m["title"], m["message"]) for m in sink.messages("ops")]


async def test_kill_9_mid_window_loses_and_repeats_nothing(tmp_path, sink):
    port = free_port()
    db = tmp_path / "relay.db"
    text = CONFIG.replace("routes:\n", NIGHT + "routes:\n") + \
        "    continue: true\n  - name: all\n    match: {}\n    receivers: [night]\n"
    cfg = write_config(tmp_path / "relay.yaml", text, port=port, token=TOKEN,
                       store=f"sqlite:{db}", url=sink.url("ops"), window="1s",
                       night=sink.url("night"))
    log = tmp_path / "relay.log"
    proc = spawn_relay(cfg, log=log)
    await ready(port, proc)
    for n in range(3):
        assert await post(port, f"D{n}") == 202
    proc.send_signal(signal.SIGKILL)  # the window is open: its events are only in the store
    proc.wait(timeout=10)
    assert digests(sink) == []
    proc = spawn_relay(cfg, log=log)
    try:
        await ready(port, proc)
        await wait_for(lambda: digests(sink), timeout=15, message="the digest after restart")

        def settled() -> bool:
            with sqlite3.connect(db) as conn:
                return conn.execute(
                    "SELECT (SELECT count(*) FROM digest_items WHERE fired_at IS NULL)"
                    " + (SELECT count(*) FROM jobs WHERE state NOT IN ('sent', 'held'))"
                    " + (SELECT count(*) FROM timers WHERE kind = 'digest' AND state <> 'fired')"
                    ).fetchone()[0] == 0

        await wait_for(settled, message="every item fired and every job sent")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 15) == 0
    assert digests(sink) == [("3 failed at Hub 3", "D0 D1 D2")]
    assert sink.messages("night") == []
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT delivery_id, attempts FROM jobs WHERE state = 'held'"
                            " ORDER BY id").fetchall() == [("D0", 0), ("D1", 0), ("D2", 0)]
        assert conn.execute("SELECT kind, state FROM timers ORDER BY id").fetchall() == \
            [("digest", "fired"), ("quiet", "armed")]


@pytest.mark.postgres
async def test_two_replicas_on_postgresql_send_one_digest_per_group(tmp_path, sink):
    async with pgutil.fresh_schema(await pgutil.base_dsn()) as dsn, \
            two_replicas(tmp_path, CONFIG, dsn, sink, window="2s") as ports:
        sent = await asyncio.gather(*(post(ports[n % 2], f"D{n}", f"Hub {n % 2}")
                                      for n in range(20)))
        assert set(sent) == {202}
        await wait_for(lambda: len(digests(sink)) >= 2, timeout=20, message="two digests")

        async def settled() -> bool:
            return await pgutil.fetchval(
                dsn, "SELECT (SELECT count(*) FROM digest_items WHERE fired_at IS NULL)"
                " + (SELECT count(*) FROM jobs WHERE state <> 'sent')"
                " + (SELECT count(*) FROM timers WHERE state <> 'fired')") == 0

        await wait_for(settled, message="every item fired and every job sent")
    assert sorted(title for title, _ in digests(sink)) == ["10 failed at Hub 0",
                                                           "10 failed at Hub 1"]
    shown = Counter(d for _, body in digests(sink) for d in body.split())
    assert shown == Counter({f"D{n}": 1 for n in range(20)})


@pytest.mark.postgres
async def test_two_relays_on_postgresql_on_one_clock_send_one_summary_and_one_digest(tmp_path,
                                                                                     sink, caplog):
    """Both workers pass at the same instant of a fake clock: each timer is claimed once.

    The lease outlasts the whole fake span (21:55 to 07:00). Leases are measured
    on the fake clock, but a send runs in real time: with the default 60 s lease,
    a background loop's send of d2 that was still in flight while the test moved
    the clock on had, in fake time, taken hours, so the other relay rightly took
    the job over when its lease expired and sent it again (at least once, as for
    a replica that vanished mid-send). In production the lease and
    `attempt_timeout` (15 s, under the 60 s lease) run on the same clock.
    """
    from aiohttp import ClientSession
    from aiohttp.test_utils import TestServer

    from relay.lifecycle import Relay
    from tests.conftest import FakeClock
    from tests.test_less_noise import QUIET, at, failed, moving

    clock = FakeClock(at("2026-12-02T21:55"))
    async with pgutil.fresh_schema(await pgutil.base_dsn()) as dsn:
        servers, relays = [], []
        try:
            for n in range(2):
                port = free_port()
                cfg = write_config(tmp_path / f"r{n}.yaml", f"""\
server:
  listen: 127.0.0.1:{port}
  tokens: ["{TOKEN}"]
store:
  url: "{dsn}"
sending:
  lease: 1d
receivers:
  - name: ops
    urls: ["{sink.url('ops')}"]
{QUIET.replace("[failure]", "[]")}  - name: team
    urls: ["{sink.url('team')}"]
routes:
  - name: failures
    match: {{status: failed}}
    receivers: [team]
    digest: {{window: 10m}}
  - name: all
    match: {{}}
    receivers: [ops]
""")
                relay = Relay(str(cfg), clock=clock)
                server = TestServer(relay.web_app(), host="127.0.0.1", port=port)
                await server.start_server()
                servers.append(server)
                relays.append(relay)
            async with ClientSession() as session:
                for n in range(6):
                    body = failed(n) if n % 2 else moving(n)
                    clock.advance(60)  # 21:56 … 22:01: the last ones are held
                    async with session.post(f"http://127.0.0.1:{servers[n % 2].port}/webhook",
                                            json=body,
                                            headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                        assert r.status == 202
            clock.now = at("2026-12-03T07:00")
            for _ in range(3):
                await asyncio.gather(*(relay.worker.run_once() for relay in relays))
            await wait_for(lambda: sink.messages("team") and len(sink.messages("ops")) >= 3)
            for _ in range(2):
                await asyncio.gather(*(relay.worker.run_once() for relay in relays))
        finally:
            for server in servers:
                await server.close()
    assert [m["title"] for m in sink.messages("team")] == ["3 events (failures)"]
    assert sorted(m["title"] for m in sink.messages("ops")) == [
        "1 notification during quiet hours", "Delivery d0: In transit",
        "Delivery d2: In transit"]
    assert "taken over" not in caplog.text  # no claim outlived its lease
