"""`sending.processes: 3`: the relay process and two send processes, no job sent twice."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections import Counter

import aiohttp

from tests.conftest import TOKEN, free_port, serve_head, spawn_relay, wait_for, wait_healthy, write_config

HOOK = """\
receivers:
  - name: hook
    urls: ["{url}"]
    concurrency: %d
routes:
  - match: {event: delivery.created}
    receivers: [hook]
    title: "{{ delivery_id }}"
"""


def processes_config(sending: str, concurrency: int) -> str:
    """A `relay serve` config with these `sending:` lines and one receiver at `{url}`, sent
    every delivery.created titled with its delivery_id."""
    return serve_head() + "sending:\n" + sending + HOOK % concurrency


CONFIG = processes_config("  processes: 3\n", concurrency=2)


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


async def test_three_sending_processes_send_every_job_exactly_once(tmp_path, sink):
    port = free_port()
    cfg = write_config(tmp_path / "relay.yaml", CONFIG, port=port, token=TOKEN,
                       db=tmp_path / "relay.db", url=sink.url("hook"))
    sink.delay = 0.01  # sends overlap, so every process gets work
    proc = spawn_relay(cfg)
    try:
        await asyncio.to_thread(wait_healthy, port)
        assert len(children_of(proc.pid)) == 2
        async with aiohttp.ClientSession() as session:
            for n in range(150):
                body = {"event": "delivery.created", "delivery_id": f"p{n}",
                        "timestamp": "2024-09-14T14:30:00Z"}
                async with session.post(f"http://127.0.0.1:{port}/webhook", json=body,
                                        headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                    assert r.status == 202
        await wait_for(lambda: len(sink.messages("hook")) >= 150, timeout=30)
        counts = Counter(m["title"] for m in sink.messages("hook"))
        assert set(counts) == {f"p{n}" for n in range(150)}
        assert max(counts.values()) == 1
    finally:
        children = children_of(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0
    assert children and not any(alive(pid) for pid in children)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_sending_processes_leave_when_their_parent_is_killed(tmp_path, sink):
    port = free_port()
    cfg = write_config(tmp_path / "relay.yaml", CONFIG, port=port, token=TOKEN,
                       db=tmp_path / "relay.db", url=sink.url("hook"))
    proc = spawn_relay(cfg)
    await asyncio.to_thread(wait_healthy, port)
    children = children_of(proc.pid)
    assert len(children) == 2
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    await wait_for(lambda: not any(alive(pid) and not zombie(pid) for pid in children),
                   timeout=15, message="orphaned sending processes to exit")


def zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True
