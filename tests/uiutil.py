"""The status page's test setup: a real relay with a json:// sink, and events sent to it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from tests import pgutil
from tests.conftest import (
    TOKEN,
    RunningRelay,
    Sink,
    circuit_opened,
    free_port,
    serve_head,
    wait_for,
    write_config,
)

ADMIN, VIEWER = "admin-secret", "viewer-secret"
HOSTILE = '<img src=x onerror="console.error(1)">'
UI_CONFIG = """
receivers:
  - name: chat
    urls: ["{chat}"]
  - name: log
    urls: ["console://"]
routes:
  - name: failures
    match: {event: "delivery.*", status: failed}
    receivers: [chat]
    type: failure
    title: "Delivery {{ delivery_id }} failed"
    body: "Reason: {{ reason }}"
  - name: quiet
    match: {status: in_transit}
    receivers: [log]
"""


async def start_ui_relay(running: Any, sink: Sink, **options: Any) -> RunningRelay:
    """A relay whose `chat` receiver is the sink at /chat (its URL carries a secret).

    Its client session keeps cookies of 127.0.0.1 (aiohttp's jar drops cookies of IP
    addresses by default), as a browser does.
    """
    r = await running(UI_CONFIG, server=f"viewer_token: {VIEWER}",
                      chat=sink.url("chat", token="SINK-SECRET-42"), **options)
    await r.session.close()
    r.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    return r


async def delivery_page(r: RunningRelay, delivery_id: str) -> str:
    """The delivery page as the admin sees it, its white space folded to single spaces."""
    async with r.session.get(f"{r.url}/ui/delivery?id={delivery_id}", headers={
            "Authorization": f"Bearer {ADMIN}", "Accept": "text/html"}) as resp:
        assert resp.status == 200
        return " ".join((await resp.text()).split())


def event(delivery: str, status: str, second: int = 0, **extra: Any) -> dict[str, Any]:
    return {"event": "delivery.updated", "delivery_id": delivery, "status": status,
            "timestamp": f"2026-01-02T10:00:{second:02d}Z", **extra}


async def one_dead_letter(r: RunningRelay, sink: Sink, delivery: str = "D-1042") -> None:
    """A failure for `delivery` whose notification the sink refuses for good (HTTP 404)."""
    sink.script["/chat"] = [404]
    status, _, _ = await r.post(event(delivery, "failed", reason=HOSTILE))
    assert status == 202
    await wait_for(lambda: r.relay.store.dead(), message="a dead letter")


# Two failures open a URL's circuit for ten minutes; a failed job waits an hour to retry.
OPENS_FAST = "circuit: {failures: 2, cooldown: 10m}\n  retry: {schedule: [0, 1h], jitter: 0}"


async def open_circuit(r: RunningRelay, sink: Sink) -> None:
    """Two failures (HTTP 500) at `chat`: its circuit opens, two retries wait an hour."""
    sink.script["/chat"] = [500, 500]
    for i, delivery in enumerate(("D-1", "D-2")):
        assert (await r.post(event(delivery, "failed", i)))[0] == 202
    await wait_for(lambda: circuit_opened(r.relay, "chat"), message="chat's circuit open")


PG_CONFIG = serve_head("{dsn}", admin=True) + """\
receivers:
  - name: chat
    urls: ["console://"]
  - name: log
    urls: ["console://"]
"""


@asynccontextmanager
async def pg_relay(tmp_path: Path) -> AsyncIterator[tuple[Any, str, str, Path]]:
    """One relay on a fresh PostgreSQL schema, once it has announced itself: the relay, its
    URL, the schema's DSN and its config."""
    from aiohttp.test_utils import TestServer

    from relay.lifecycle import Relay

    async with pgutil.fresh_schema(await pgutil.base_dsn()) as dsn:
        port = free_port()
        cfg = write_config(tmp_path / "pg.yaml", PG_CONFIG, port=port, token=TOKEN, admin=ADMIN,
                           dsn=dsn)
        relay = Relay(str(cfg))
        server = TestServer(relay.web_app(), host="127.0.0.1", port=port)
        await server.start_server()
        try:
            await wait_for(lambda: relay.store.relays(), message="the relay announced itself")
            yield relay, f"http://127.0.0.1:{port}", dsn, cfg
        finally:
            await relay.stop()
            await server.close()
