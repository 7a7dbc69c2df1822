"""The relay served the way `serve` serves it (relay.server.listen), and raw-socket helpers."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from relay import server
from relay.app import Relay
from tests.conftest import (
    BASE_CONFIG,
    DEFAULTS,
    TOKEN,
    empty_sqlite_store,
    free_port,
    write_config,
)

EOF_WITHIN = 5.0  # generous bound for "the relay closed the connection"


class Guarded:
    def __init__(self, relay: Relay, port: int, server: web.Server) -> None:
        self.relay = relay
        self.port = port
        self.server = server  # `requests_count`: requests whose headers it has parsed

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def exchange(self, raw: bytes) -> bytes:
        """Send raw bytes, return everything the relay answers until it closes."""
        reader, writer = await self.connect()
        writer.write(raw)
        try:
            return await until_eof(reader)
        finally:
            writer.close()


async def until_eof(reader: asyncio.StreamReader, within: float = EOF_WITHIN) -> bytes:
    return await asyncio.wait_for(reader.read(), within)


def request(method: str = "POST", path: str = "/webhook", body: bytes = b"",
            headers: dict[str, str] | None = None, token: str | None = TOKEN,
            close: bool = True) -> bytes:
    h = {"Host": "relay", "Content-Type": "application/json", **(headers or {})}
    if token:
        h["Authorization"] = f"Bearer {token}"
    if "Transfer-Encoding" not in h:
        h["Content-Length"] = str(len(body))
    if close:
        h["Connection"] = "close"
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
    return head.encode("latin-1") + b"\r\n" + body


def response(raw: bytes) -> tuple[int, dict[str, str], Any]:
    """Parse the first HTTP response in `raw`: status, headers, JSON body (or text)."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    body = rest[: int(headers.get("content-length", len(rest)))]
    try:
        return status, headers, json.loads(body)
    except ValueError:
        return status, headers, body.decode("latin-1")


@pytest.fixture
async def guarded(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
                  ) -> AsyncIterator[Callable[..., Any]]:
    """Its SQLite store starts as `running`'s does: a copy of an empty, migrated store."""
    runners: list[web.AppRunner] = []

    async def start(*server_lines: str, extra: str = "", store_url: str = "") -> Guarded:
        """`store_url` (a PostgreSQL DSN) instead of the SQLite file in tmp_path."""
        port = free_port()
        values = {**DEFAULTS, "port": port, "db": tmp_path / "relay.db",
                  "server": "\n  ".join(server_lines)}
        text = BASE_CONFIG.replace('"sqlite:{db}"', f'"{store_url}"') if store_url else BASE_CONFIG
        cfg = write_config(tmp_path / "config.yaml", text + extra, **values)
        if not store_url and not (tmp_path / "relay.db").exists():
            shutil.copy(await empty_sqlite_store(tmp_path_factory), tmp_path / "relay.db")
        relay = Relay(str(cfg), env={})
        runner = web.AppRunner(relay.web_app(), handle_signals=False, access_log=None)
        await runner.setup()
        runners.append(runner)
        await server.listen(runner, "127.0.0.1", port, lambda: relay.config)
        return Guarded(relay, port, runner.server)

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


def event(**extra: Any) -> bytes:
    return json.dumps({"event": "delivery.created", "delivery_id": "d-1",
                       "timestamp": "2024-09-14T14:30:00Z", **extra}).encode()
