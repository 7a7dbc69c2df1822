"""Slack, Discord and Telegram faked at the HTTP transport, answering what their APIs document.

Each fake keeps the messages it was sent (so tests assert on the channel's
state, not on calls), can delete one (as a user would), and can be scripted
to answer the next request with a given failure (`fail_next`). The live
clients reach them through their documented `api_base` parameter.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import free_port

Answer = tuple[int, Any, dict[str, str]]  # status, JSON body, headers


@dataclass
class Message:
    channel: str
    id: str
    text: str
    thread: str = ""  # Slack thread_ts / Telegram reply_to message_id
    edits: int = 0
    history: list[str] = field(default_factory=list)  # every text it showed, oldest first

    def __post_init__(self) -> None:
        self.history.append(self.text)

    def edit(self, text: str) -> None:
        self.text, self.edits = text, self.edits + 1
        self.history.append(text)


@dataclass
class Fake:
    messages: dict[str, Message] = field(default_factory=dict)
    script: list[Answer] = field(default_factory=list)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)  # method, path, JSON
    base: str = ""
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def fail_next(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self.script.append((status, body, headers or {}))

    def delete(self, message_id: str) -> None:
        del self.messages[message_id]

    def roots(self) -> list[Message]:
        return [m for m in self.messages.values() if not m.thread]

    def replies(self, root: str) -> list[Message]:
        return [m for m in self.messages.values() if m.thread == root]

    async def handle(self, request: web.Request) -> web.Response:
        payload = await request.json() if request.can_read_body else None
        self.requests.append((request.method, request.path_qs, payload))
        status, body, headers = self.script.pop(0) if self.script else self.answer(request, payload)
        if status == 204:
            return web.Response(status=204)
        return web.Response(status=status, headers=headers, text=json.dumps(body),
                            content_type="application/json")

    def answer(self, request: web.Request, payload: Any) -> Answer:
        raise NotImplementedError


SLACK_TOKEN = "xoxb-1111-2222-SECRETslack"


@dataclass
class FakeSlack(Fake):
    """`chat.postMessage` / `chat.update`: HTTP 200 with `ok`, errors as `{"ok": false, "error"}`."""

    channels: dict[str, str] = field(default_factory=lambda: {"#ops": "C0OPS", "#general": "C0GEN"})

    def answer(self, request: web.Request, payload: Any) -> Answer:
        if request.headers.get("Authorization") != f"Bearer {SLACK_TOKEN}":
            return 200, {"ok": False, "error": "invalid_auth"}, {}
        method = request.path.rsplit("/", 1)[-1]
        if method == "chat.postMessage":
            return self._post(payload)
        if method == "chat.update":
            return self._update(payload)
        return 200, {"ok": False, "error": "unknown_method"}, {}

    def _post(self, p: dict[str, Any]) -> Answer:
        channel = self.channels.get(p["channel"]) or (
            p["channel"] if p["channel"] in self.channels.values() else None)
        if channel is None:
            return 200, {"ok": False, "error": "channel_not_found"}, {}
        n = next(self._ids)
        ts = f"{1700000000 + n}.{n:06d}"
        self.messages[ts] = Message(channel, ts, p["text"], p.get("thread_ts", ""))
        return 200, {"ok": True, "channel": channel, "ts": ts,
                     "message": {"type": "message", "text": p["text"], "ts": ts}}, {}

    def _update(self, p: dict[str, Any]) -> Answer:
        if p["channel"] not in self.channels.values():  # chat.update wants the id, not the name
            return 200, {"ok": False, "error": "channel_not_found"}, {}
        message = self.messages.get(p["ts"])
        if message is None or message.channel != p["channel"]:
            return 200, {"ok": False, "error": "message_not_found"}, {}
        message.edit(p["text"])
        return 200, {"ok": True, "channel": p["channel"], "ts": p["ts"], "text": p["text"],
                     "message": {"text": p["text"]}}, {}


DISCORD_ID, DISCORD_TOKEN = "112233445566", "SECRETdiscordWebhookToken"


@dataclass
class FakeDiscord(Fake):
    """Execute / edit webhook message: the message object, or `{"message", "code"}`."""

    channel_id: str = "998877"

    def answer(self, request: web.Request, payload: Any) -> Answer:
        parts = request.path.split("/")  # ['', 'api', 'webhooks', id, token, ('messages', mid)]
        if parts[3] != DISCORD_ID:
            return 404, {"message": "Unknown Webhook", "code": 10015}, {}
        if parts[4] != DISCORD_TOKEN:
            return 401, {"message": "Invalid Webhook Token", "code": 50027}, {}
        channel = request.query.get("thread_id", self.channel_id)
        if request.method == "POST":
            n = str(next(self._ids) + 1_000_000)
            self.messages[n] = Message(channel, n, payload["content"])
            if request.query.get("wait") != "true":
                return 204, None, {}
            return 200, self._object(self.messages[n]), {}
        message = self.messages.get(parts[6])
        if message is None:
            return 404, {"message": "Unknown Message", "code": 10008}, {}
        message.edit(payload["content"])
        return 200, self._object(message), {}

    @staticmethod
    def _object(m: Message) -> dict[str, Any]:
        return {"id": m.id, "type": 0, "content": m.text, "channel_id": m.channel,
                "webhook_id": DISCORD_ID, "author": {"bot": True, "id": DISCORD_ID}}


TELEGRAM_TOKEN = "123456789:AAsecretTELEGRAMtoken"


@dataclass
class FakeTelegram(Fake):
    """Bot API: `{"ok": true, "result": Message}` or `{"ok": false, "error_code", "description"}`."""

    chats: tuple[str, ...] = ("-1001234",)

    def answer(self, request: web.Request, payload: Any) -> Answer:
        if not request.path.startswith(f"/bot{TELEGRAM_TOKEN}/"):
            return 401, {"ok": False, "error_code": 401, "description": "Unauthorized"}, {}
        method = request.path.rsplit("/", 1)[-1]
        if str(payload.get("chat_id")) not in self.chats:
            return self._bad("chat not found")
        if method == "sendMessage":
            n = str(next(self._ids))
            reply = (payload.get("reply_parameters") or {}).get("message_id", "")
            self.messages[n] = Message(str(payload["chat_id"]), n, payload["text"], str(reply))
            return 200, {"ok": True, "result": self._object(self.messages[n])}, {}
        if method == "editMessageText":
            return self._edit(payload)
        return 404, {"ok": False, "error_code": 404, "description": "Not Found"}, {}

    def _edit(self, p: dict[str, Any]) -> Answer:
        message = self.messages.get(str(p["message_id"]))
        if message is None:
            return self._bad("message to edit not found")
        if message.text == p["text"]:
            return self._bad("message is not modified: specified new message content and reply"
                             " markup are exactly the same as a current content and reply markup"
                             " of the message")
        message.edit(p["text"])
        return 200, {"ok": True, "result": {**self._object(message), "edit_date": 1700000100}}, {}

    @staticmethod
    def _bad(description: str) -> Answer:
        return 400, {"ok": False, "error_code": 400, "description": f"Bad Request: {description}"}, {}

    @staticmethod
    def _object(m: Message) -> dict[str, Any]:
        return {"message_id": int(m.id), "date": 1700000000, "text": m.text,
                "chat": {"id": int(m.channel), "type": "supergroup"}}


async def _serve(fake: Fake, prefix: str) -> TestServer:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    server = TestServer(app, host="127.0.0.1", port=free_port())
    await server.start_server()
    fake.base = f"http://127.0.0.1:{server.port}{prefix}"
    return server


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    fake = FakeSlack()
    server = await _serve(fake, "/api")
    yield fake
    await server.close()


@pytest.fixture
async def discord() -> AsyncIterator[FakeDiscord]:
    fake = FakeDiscord()
    server = await _serve(fake, "/api")
    yield fake
    await server.close()


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    fake = FakeTelegram()
    server = await _serve(fake, "")
    yield fake
    await server.close()
