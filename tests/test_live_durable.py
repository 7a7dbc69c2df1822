"""Live messages and holds across processes: kill -9 (real subprocess relays), two replicas
on PostgreSQL editing one delivery's message."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from relay.lifecycle import Relay
from tests import pgutil
from tests.conftest import (
    BASE_CONFIG,
    DEFAULTS,
    TOKEN,
    free_port,
    post_event,
    serve_head,
    spawn_relay,
    wait_for,
    write_config,
)
from tests.test_crash import ready
from tests.test_live_matrix import Room, room  # noqa: F401  (fixture)
from tests.test_live_routes import SLACK_URL, STATES, config, event

SUBPROCESS = serve_head()


def rows(db: Path, query: str) -> list[Any]:
    with sqlite3.connect(db) as conn:
        return conn.execute(query).fetchall()


post = post_event


def stop(proc: Any) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


async def test_a_hold_survives_kill_9_and_sends_one_message_after_the_restart(
        tmp_path, sink) -> None:
    port, db = free_port(), tmp_path / "relay.db"
    cfg = write_config(tmp_path / "relay.yaml", SUBPROCESS + config(sink.url("ops"),
                                                                    route="hold: 2s"),
                       port=port, token=TOKEN, db=db)
    proc = spawn_relay(cfg, log=tmp_path / "relay.log")
    await ready(port, proc)
    assert [await post(port, event(0)), await post(port, event(1))] == [202, 202]
    proc.send_signal(signal.SIGKILL)  # within the hold: nothing was sent
    proc.wait(10)
    assert rows(db, "SELECT state FROM jobs ORDER BY id") == [("suppressed",), ("pending",)]
    assert sink.messages("ops") == []
    proc = spawn_relay(cfg, log=tmp_path / "relay.log")
    try:
        await ready(port, proc)
        await wait_for(lambda: rows(db, "SELECT state FROM jobs WHERE id = 2") == [("sent",)],
                       message="the held notification sent after the restart")
    finally:
        await asyncio.to_thread(stop, proc)
    assert [m["message"] for m in sink.messages("ops")] == ["in_transit"]


async def test_kill_9_between_a_post_and_its_edit_edits_the_same_matrix_message(
        tmp_path, room: Room) -> None:  # noqa: F811
    port, db = free_port(), tmp_path / "relay.db"
    cfg = write_config(tmp_path / "relay.yaml", SUBPROCESS + config(
        room.url(), route="live: true\n    hold: 1s"), port=port, token=TOKEN, db=db)
    proc = spawn_relay(cfg, log=tmp_path / "relay.log")
    await ready(port, proc)
    await post(port, event(0))
    await wait_for(lambda: rows(db, "SELECT ref FROM live_messages WHERE ref IS NOT NULL"),
                   message="the post and its ref")
    assert await post(port, event(1)) == 202
    proc.send_signal(signal.SIGKILL)  # the edit is held for a second: it has not gone out
    proc.wait(10)
    (root,) = room.top_level()
    assert room.hs.relations(room.room_id, root["event_id"], "m.replace", room.watcher) == []
    proc = spawn_relay(cfg, log=tmp_path / "relay.log")
    try:
        await ready(port, proc)
        await wait_for(lambda: room.hs.relations(room.room_id, root["event_id"], "m.replace",
                                                 room.watcher), message="the edit")
    finally:
        await asyncio.to_thread(stop, proc)
    assert [e["event_id"] for e in room.top_level()] == [root["event_id"]]
    (edit,) = room.hs.relations(room.room_id, root["event_id"], "m.replace", room.watcher)
    assert edit["content"]["m.new_content"]["body"] == "Delivery D1\nin_transit"


# ------------------------------------------------------------------ PostgreSQL replicas


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """In-process relays on one PostgreSQL schema, each with its own store, worker and port."""
    servers: list[TestServer] = []

    async def start(dsn: str, extra: str, live_api: dict[str, str]) -> int:
        port = free_port()
        text = BASE_CONFIG.replace('"sqlite:{db}"', f'"{dsn}"') + textwrap.dedent(extra)
        cfg = write_config(tmp_path / f"replica-{port}.yaml", text,
                           **{**DEFAULTS, "port": port})
        server = TestServer(Relay(str(cfg), env={}, live_api=live_api).web_app(),
                            host="127.0.0.1", port=port)
        await server.start_server()
        servers.append(server)
        return port

    yield start
    for server in reversed(servers):
        await server.close()


def in_order(history: list[str], states: list[str]) -> bool:
    """The message only ever moved forward through the delivery's states."""
    positions = [states.index(text) for text in history]
    return positions == sorted(set(positions))


@pytest.mark.postgres
async def test_two_replicas_on_postgresql_edit_one_message_per_delivery_in_order(
        replicas, slack) -> None:
    async with pgutil.fresh_schema(await pgutil.base_dsn()) as dsn:
        extra = config(SLACK_URL).replace("urls:", "concurrency: 2\n    urls:")
        ports = [await replicas(dsn, extra, {"slack": slack.base}) for _ in range(2)]
        deliveries = ["D1", "D2", "D3"]
        for n in range(len(STATES)):
            await asyncio.gather(*(post(ports[(n + i) % 2], event(n, d))
                                   for i, d in enumerate(deliveries)))

        async def finished() -> bool:
            return await pgutil.fetchval(dsn, "SELECT count(*) FILTER (WHERE state = 'sent')"
                                         " = 12 FROM jobs")

        await wait_for(finished, timeout=30, message="every job of the three deliveries sent")
        roots = {m.text.split("*")[1].split()[1]: m for m in slack.roots()}
        assert sorted(roots) == deliveries  # one message per delivery, whoever sent
        for d, root in roots.items():
            states = [f"*Delivery {d}*\n{s or 'created'}" for _, s in STATES]
            assert in_order(root.history, states), root.history
            assert root.text == states[-1]
            assert in_order([m.text for m in slack.replies(root.id)], states)
