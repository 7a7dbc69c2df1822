"""Matrix (`matrix://user:pass@host/!room:server`, or an access token): post, edit, thread replies.

- A message is a PUT of `m.room.message` with a transaction id. The id comes
  from the caller's key, so a retried post (same access token) is answered
  with the event the first attempt made instead of making a second one.
- An edit is a new event with an `m.replace` relation carrying `m.new_content`;
  a redacted or unknown original is reported as gone (edits of a redacted
  event would be accepted by the server but shown to nobody).
- A thread reply has an `m.thread` relation to the live message.
- The room is joined (never created: a mistyped alias fails instead of making
  a private room as Apprise does), and `m.mentions: {}` keeps `@room` in
  payload data from pinging the room.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any
from urllib.parse import quote

from aiohttp import ClientSession

from relay.live import LiveResult, MessageRef
from relay.live.http import SENT, Answer, Api, outcome_for
from relay.message import Message
from relay.notify import Outcome

V3 = "/_matrix/client/v3"


def unsupported(plugin: Any) -> str | None:
    if plugin.mode != "off":
        return "Matrix webhook modes (mode=matrix/slack/t2bot) cannot edit: use the client API URL"
    if len(plugin.rooms) != 1:
        return "a live Matrix URL names exactly one room (matrix://user:pass@host/!room:server)"
    if not plugin.password:
        return "a live Matrix URL needs a password or an access token"
    return None


def _room(room: str, host: str) -> str:
    """An alias without its server is on the URL's host (as Apprise reads it); room ids are kept."""
    return f"{room}:{host}" if room.startswith("#") and ":" not in room else room


def _field(answer: Answer, name: str) -> str:
    """What a step's answer gives (an access token, a room id, an event id): the field of a
    200 answer; "" for any other answer, or one without it (the step failed)."""
    value = answer.fields.get(name) if answer.status == 200 else None
    return str(value) if value else ""


class MatrixClient:
    platform = "matrix"
    threads = True

    def __init__(self, base: str, room: str, session: ClientSession, *, timeout: float = 10.0,
                 user: str | None = None, password: str = "", msgtype: str = "text") -> None:
        self.room = room
        self.user = user
        self.password = password
        self.msgtype = f"m.{msgtype or 'text'}"
        self.token = "" if user else password  # no user: the "password" is an access token
        self.room_id = ""
        self.api = Api(session, base, timeout, [password])
        self._lock = asyncio.Lock()

    @classmethod
    def from_plugin(cls, plugin: Any, session: ClientSession, timeout: float,
                    api_base: str | None) -> MatrixClient:
        base = api_base or "{}://{}{}".format("https" if plugin.secure else "http", plugin.host,
                                              f":{plugin.port}" if plugin.port else "")
        return cls(base, _room(plugin.rooms[0], plugin.host), session, timeout=timeout,
                   user=plugin.user, password=plugin.password, msgtype=plugin.msgtype)

    def _content(self, message: Message) -> dict[str, Any]:
        return {"msgtype": self.msgtype, "body": message.plain(), "m.mentions": {}}

    async def post(self, message: Message, key: str = "") -> LiveResult:
        return await self._send(self._content(message), key)

    async def edit(self, ref: MessageRef, message: Message, key: str = "") -> LiveResult:
        gone = await self._gone(ref)
        if gone is not None:
            return gone
        content = self._content(message)
        edit = {**content, "body": "* " + content["body"], "m.new_content": content,
                "m.relates_to": {"rel_type": "m.replace", "event_id": ref.message}}
        return await self._send(edit, key, ref)

    async def reply(self, ref: MessageRef, message: Message, key: str = "") -> LiveResult:
        content = {**self._content(message), "m.relates_to": {
            "rel_type": "m.thread", "event_id": ref.message, "is_falling_back": True,
            "m.in_reply_to": {"event_id": ref.message}}}
        return await self._send(content, key)

    async def _send(self, content: dict[str, Any], key: str,
                    edited: MessageRef | None = None) -> LiveResult:
        ready = await self._ready()
        if ready is not None:
            return ready
        txn = quote(f"kourier-{key}" if key else uuid.uuid4().hex, safe="")
        answer = await self._call("PUT", f"/rooms/{quote(self.room_id, safe='')}/send/"
                                         f"m.room.message/{txn}", content)
        event_id = _field(answer, "event_id")
        if event_id:
            # An edit's ref stays the original event: later edits replace that one.
            return LiveResult(SENT, edited or MessageRef("matrix", self.room_id, event_id))
        return self._failure("send", answer)

    async def _gone(self, ref: MessageRef) -> LiveResult | None:
        ready = await self._ready()
        if ready is not None:
            return ready
        answer = await self._call("GET", f"/rooms/{quote(ref.channel, safe='')}/event/"
                                         f"{quote(ref.message, safe='')}")
        body = answer.fields
        if answer.status == 200:
            redacted = "redacted_because" in (body.get("unsigned") or {}) or not body.get("content")
            return LiveResult(Outcome("failed", "the live message was redacted"),
                              gone=True) if redacted else None
        if answer.status == 404:  # also (the spec says) an event this user may not read
            return LiveResult(Outcome("failed", "the live message no longer exists", 0.0, 404),
                              gone=True)
        return self._failure("event", answer)

    async def _ready(self) -> LiveResult | None:
        """Log in (user and password) and join the room, once per client."""
        async with self._lock:
            if not self.token:
                answer = await self.api.call("POST", f"{V3}/login", json={
                    "type": "m.login.password", "password": self.password,
                    "identifier": {"type": "m.id.user", "user": self.user}})
                self.token = _field(answer, "access_token")
                if not self.token:
                    return self._failure("login", answer)
                self.api.secrets += (self.token,)
            if not self.room_id:
                answer = await self._call("POST", f"/join/{quote(self.room, safe='')}", {})
                self.room_id = _field(answer, "room_id")
                if not self.room_id:
                    return self._failure("join", answer)
        return None

    async def _call(self, method: str, path: str, json: Any = None) -> Answer:
        return await self.api.call(method, V3 + path, json=json,
                                   headers={"Authorization": f"Bearer {self.token}"})

    def _failure(self, action: str, answer: Answer) -> LiveResult:
        body = answer.fields
        code = str(body.get("errcode") or "no errcode")
        error = self.api.redact(f"{action}: {code}: {body.get('error') or ''}".rstrip(": "))
        if code == "M_UNKNOWN_TOKEN" and self.user:
            self.token = ""  # the login expired: log in again on the next attempt
            return LiveResult(Outcome("retry", error, 0.0, answer.status))
        wait_ms = body.get("retry_after_ms")
        wait = wait_ms / 1000.0 if isinstance(wait_ms, int | float) else None
        return LiveResult(outcome_for(answer, error, wait))
