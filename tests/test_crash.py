"""Crash safety: SIGKILL at random moments under load loses nothing; SIGTERM drains."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
from collections import Counter

import aiohttp
import pytest

from tests.conftest import TOKEN, free_port, serve_head, spawn_relay, wait_for, write_config

CONFIG = serve_head() + """\
sending:
  concurrency: {concurrency}
  grace_period: {grace}
  retry: {schedule: [0, 0.05, 0.1, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2], jitter: 0}
  circuit: {failures: 1000}
receivers:
  - name: a
    urls: ["{url_a}"]
    concurrency: 4
  - name: b
    urls: ["{url_b}"]
    concurrency: 4
routes:
  - match: {event: delivery.created}
    receivers: [a, b]
    title: "{{ delivery_id }}"
"""


def config(tmp_path, sink, port, grace="5s", concurrency=8):
    return write_config(tmp_path / "relay.yaml", CONFIG, port=port, token=TOKEN,
                        db=tmp_path / "relay.db", url_a=sink.url("a"), url_b=sink.url("b"),
                        grace=grace, concurrency=concurrency)


async def ready(port: int, proc) -> None:
    async def up() -> bool:
        assert proc.poll() is None, "relay exited during start-up"
        try:
            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/readyz") as r:
                return r.status == 200
        except aiohttp.ClientError:
            return False

    await wait_for(up, timeout=15, message="relay ready")


async def post(session, port, delivery_id) -> int:
    body = {"event": "delivery.created", "delivery_id": delivery_id,
            "timestamp": "2024-09-14T14:30:00Z"}
    async with session.post(f"http://127.0.0.1:{port}/webhook", json=body,
                            headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        return r.status


async def load(port: int, acked: list[str], prefix: str, stop: asyncio.Event) -> None:
    """Post unique events back to back; remember the ones the relay acknowledged."""
    n = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while not stop.is_set():
            n += 1
            delivery_id = f"{prefix}-{n}"
            try:
                if 200 <= await post(session, port, delivery_id) < 300:
                    acked.append(delivery_id)
            except (TimeoutError, aiohttp.ClientError):
                await asyncio.sleep(0.01)  # the relay is down: back off a little


def arrived(sink, receiver: str) -> Counter[str]:
    return Counter(m["title"] for m in sink.messages(receiver))


@pytest.mark.slow
async def test_sigkill_at_random_moments_under_load_loses_no_acknowledged_event(tmp_path, sink):
    rng = random.Random(int(os.environ.get("KOURIER_TEST_SEED", "7")))
    port = free_port()
    cfg = config(tmp_path, sink, port)
    acked: list[str] = []
    kills = 0
    for iteration in range(6):
        # Vary where the kill lands: during ingest, during slow sends, during retries.
        sink.delay = rng.choice([0.0, 0.02, 0.1])
        sink.script["/a"] = [500] * rng.randint(0, 20)
        proc = spawn_relay(cfg, log=tmp_path / "relay.log")
        await ready(port, proc)
        stop = asyncio.Event()
        loader = asyncio.create_task(load(port, acked, f"i{iteration}", stop))
        target = len(acked) + rng.randint(5, 40)
        await wait_for(lambda t=target: len(acked) > t, timeout=15,
                       message="some events acknowledged")
        proc.send_signal(signal.SIGKILL)
        kills += 1
        proc.wait(timeout=10)
        stop.set()
        await loader
    sink.delay = 0.0
    sink.script.clear()
    proc = spawn_relay(cfg, log=tmp_path / "relay.log")
    try:
        await ready(port, proc)
        for receiver in ("a", "b"):
            await wait_for(lambda r=receiver: set(acked) <= set(arrived(sink, r)), timeout=60,
                           message=f"every acknowledged event at receiver {receiver}")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    assert len(acked) > 30
    for receiver in ("a", "b"):
        extra = sum(c - 1 for c in arrived(sink, receiver).values())
        # A duplicate is only possible for a send that had left when the process died:
        # at most the receiver's concurrency per kill.
        assert extra <= kills * 4, (receiver, extra)


async def test_sigterm_lets_in_flight_sends_finish_and_exits_zero(tmp_path, sink):
    port = free_port()
    cfg = config(tmp_path, sink, port)
    sink.delay = 0.3
    proc = spawn_relay(cfg)
    await ready(port, proc)
    async with aiohttp.ClientSession() as session:
        for n in range(3):
            assert await post(session, port, f"t{n}") == 202
    await wait_for(lambda: sink.hits, message="a send in flight")
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 15) == 0
    done = sqlite3.connect(tmp_path / "relay.db").execute(
        "SELECT count(*) FROM jobs WHERE state='sent'").fetchone()[0]
    pending = sqlite3.connect(tmp_path / "relay.db").execute(
        "SELECT count(*) FROM jobs WHERE state IN ('pending','claimed')").fetchone()[0]
    assert done >= 1 and done + pending == 6
    assert not sqlite3.connect(tmp_path / "relay.db").execute(
        "SELECT count(*) FROM jobs WHERE state='claimed'").fetchone()[0]


async def test_sigterm_past_the_grace_period_releases_jobs_for_the_next_run(tmp_path, sink):
    port = free_port()
    cfg = config(tmp_path, sink, port, grace="0.3s")
    sink.script["/a"] = ["hang"]
    proc = spawn_relay(cfg)
    await ready(port, proc)
    async with aiohttp.ClientSession() as session:
        assert await post(session, port, "held") == 202
    await wait_for(lambda: "/a" in sink.hits, message="the hanging send")
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 15) == 0
    row = sqlite3.connect(tmp_path / "relay.db").execute(
        "SELECT state, attempts FROM jobs WHERE receiver='a'").fetchone()
    assert row == ("pending", 0)  # released, no attempt burned
    proc = spawn_relay(cfg)
    try:
        await ready(port, proc)
        await wait_for(lambda: arrived(sink, "a")["held"] == 1, message="sent after restart")
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 15)
