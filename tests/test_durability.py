"""Nothing acknowledged is lost: kill -9 mid-send, and duplicate storms.

The crash test runs the relay as its users do (`python -m relay serve` in a
subprocess) against a `json://` sink in this process that holds requests
instead of answering them, so the relay dies with sends in flight.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web

from tests.conftest import (
    ROOT,
    TOKEN,
    free_port,
    serve_head,
    serve_posts,
    spawn_relay,
    wait_for,
    wait_healthy,
)
from tests.forkserver import RelayProcess

EVENT = {"event": "delivery.updated", "status": "in_transit",
         "timestamp": "2024-09-14T14:30:00Z"}

CONFIG = serve_head() + """\
sending:
  grace_period: 1s
  lease: 10m          # recovery must not wait for a lease: the dead owner is released
  retry: {{schedule: [0, 0.1, 0.2], jitter: 0}}
receivers:
  - name: hook
    urls: ["json://127.0.0.1:{sink_port}/hook"]
    concurrency: 4
default_receiver: hook
"""


@dataclass
class HoldingSink:
    """A json:// endpoint that, while `holding`, keeps requests open and never says 2xx."""

    holding: bool = True
    release: asyncio.Event = field(default_factory=asyncio.Event)
    held: list[str] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)  # titles answered 200
    port: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        title = (await request.json())["title"]
        if self.holding:
            self.held.append(title)
            await self.release.wait()
            return web.Response(status=503, text="held")  # its sender is gone by now
        self.answered.append(title)
        return web.Response(text="ok")


@pytest.fixture
async def holding_sink() -> AsyncIterator[HoldingSink]:
    s = HoldingSink()
    server = await serve_posts(s.handle)
    s.port = server.port or 0
    yield s
    s.release.set()
    await server.close()


@pytest.fixture
def processes() -> Iterator[list[RelayProcess]]:
    """Relay subprocesses started by a test; none outlives it."""
    started: list[RelayProcess] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def job_states(db: Path) -> list[str]:
    with closing(sqlite3.connect(db)) as conn:
        return [s for s, in conn.execute("SELECT state FROM jobs")]


async def start_relay(cfg: Path, port: int, log: Path,
                      processes: list[RelayProcess]) -> RelayProcess:
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = spawn_relay(cfg, env=env, log=log)
    processes.append(proc)
    try:
        await asyncio.to_thread(wait_healthy, port, 15.0)
    except AssertionError:
        raise AssertionError(f"relay did not start:\n{log.read_text()}") from None
    return proc


async def test_events_acknowledged_before_kill_9_all_reach_the_sink_after_restart(
        tmp_path, holding_sink, processes):
    port = free_port()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(CONFIG.format(port=port, token=TOKEN, db=tmp_path / "relay.db",
                                 sink_port=holding_sink.port))
    first = await start_relay(cfg, port, tmp_path / "first.log", processes)
    ids = [f"crash-{i:02d}" for i in range(12)]

    async with ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        async def post(delivery_id: str) -> int:
            async with http.post(f"http://127.0.0.1:{port}/webhook",
                                 json={**EVENT, "delivery_id": delivery_id}) as r:
                return r.status
        statuses = await asyncio.gather(*(post(i) for i in ids))
    assert statuses == [202] * len(ids)

    # Four sends (the receiver's concurrency) reach the sink and get no answer.
    await wait_for(lambda: len(holding_sink.held) == 4, message="four sends held at the sink")
    first.kill()
    assert await asyncio.to_thread(first.wait, 10) == -9
    assert sorted(job_states(tmp_path / "relay.db")).count("claimed") == 4
    assert holding_sink.answered == []

    holding_sink.holding = False
    holding_sink.release.set()
    await start_relay(cfg, port, tmp_path / "second.log", processes)

    expected = {f"Delivery {i}: In transit" for i in ids}
    await wait_for(lambda: set(holding_sink.answered) == expected, timeout=15,
                   message="every acknowledged event at the sink")
    await wait_for(lambda: job_states(tmp_path / "relay.db") == ["sent"] * len(ids),
                   message="every job recorded as sent")


async def test_duplicate_storm_yields_one_notification_per_receiver(running, sink, tmp_path):
    r = await running(f"""
    receivers:
      - name: chat
        urls: ["{sink.url('chat')}"]
      - name: mail
        urls: ["{sink.url('mail')}"]
    routes:
      - name: everyone
        match: {{event: "delivery.*"}}
        receivers: [chat, mail]
    """)
    payload: dict[str, Any] = {**EVENT, "delivery_id": "storm-1"}

    answers = await asyncio.gather(*(r.post(payload) for _ in range(20)))

    statuses = sorted(a[0] for a in answers)
    assert statuses == [200] * 19 + [202]
    assert len({a[1]["id"] for a in answers}) == 1
    assert sorted(a[1]["status"] for a in answers) == ["accepted"] + ["duplicate"] * 19
    await wait_for(lambda: job_states(tmp_path / "relay.db") == ["sent", "sent"],
                   message="both notifications sent")
    assert [m["title"] for m in sink.messages("chat")] == ["Delivery storm-1: In transit"]
    assert [m["title"] for m in sink.messages("mail")] == ["Delivery storm-1: In transit"]
