"""Discord webhooks: post with `?wait=true` (answers the message and its id), edit with PATCH.

A webhook can post into an existing thread (Apprise's `?thread=` URL option,
sent as `thread_id`), but it cannot open a thread under its own message, so a
Discord live message is edited in place and keeps no thread of its history.
Failures are JSON `{"message", "code"}`; 429 carries `retry_after` (seconds,
fractional) and a `Retry-After` header.
"""

from __future__ import annotations

from typing import Any

from aiohttp import ClientSession

from relay.live import LiveResult, MessageRef
from relay.live.http import SENT, Api, outcome_for
from relay.message import Message
from relay.notify import Outcome

API = "https://discord.com/api/v10"
UNKNOWN_MESSAGE = 10008
NO_MENTIONS: dict[str, list[str]] = {"parse": []}  # payload data must never ping @everyone


def unsupported(plugin: Any) -> str | None:
    if not plugin.webhook_id or not plugin.webhook_token:
        return "a live Discord URL is a webhook (discord://{id}/{token})"
    return None


class DiscordClient:
    platform = "discord"
    threads = False

    def __init__(self, webhook_id: str, webhook_token: str, session: ClientSession,
                 timeout: float = 10.0, api_base: str | None = None,
                 thread_id: str | None = None) -> None:
        self.path = f"/webhooks/{webhook_id}/{webhook_token}"
        self.thread_id = thread_id
        self.api = Api(session, api_base or API, timeout, [webhook_token])

    @classmethod
    def from_plugin(cls, plugin: Any, session: ClientSession, timeout: float,
                    api_base: str | None) -> DiscordClient:
        return cls(plugin.webhook_id, plugin.webhook_token, session, timeout, api_base,
                   plugin.thread_id or None)

    @staticmethod
    def content(message: Message) -> str:
        return f"**{message.title}**\n{message.body}" if message.title and message.body \
            else message.title or message.body

    def _json(self, message: Message) -> dict[str, Any]:
        """What a post or an edit sends: the text, and no mentions (`NO_MENTIONS`)."""
        return {"content": self.content(message), "allowed_mentions": NO_MENTIONS}

    def _params(self, **extra: str) -> dict[str, str]:
        return {**extra, **({"thread_id": self.thread_id} if self.thread_id else {})}

    async def post(self, message: Message, key: str = "") -> LiveResult:
        answer = await self.api.call("POST", self.path, params=self._params(wait="true"),
                                     json=self._json(message))
        return self._result("post", answer)

    async def edit(self, ref: MessageRef, message: Message, key: str = "") -> LiveResult:
        answer = await self.api.call("PATCH", f"{self.path}/messages/{ref.message}",
                                     params=self._params(), json=self._json(message))
        return self._result("edit", answer)

    async def reply(self, ref: MessageRef, message: Message, key: str = "") -> LiveResult:
        return LiveResult(Outcome("failed", "Discord webhooks cannot reply in a thread"))

    def _result(self, action: str, answer: Any) -> LiveResult:
        body = answer.fields
        if answer.status == 200 and body.get("id"):
            channel = str(body.get("channel_id") or self.thread_id or "")
            return LiveResult(SENT, MessageRef("discord", channel, str(body["id"])))
        error = self.api.redact(f"{action}: {body.get('message') or 'no message'}"
                                f" (code {body.get('code', '-')})")
        if answer.status == 404 and body.get("code") == UNKNOWN_MESSAGE:
            return LiveResult(Outcome("failed", error, 0.0, 404), gone=True)
        retry_after = body.get("retry_after")
        wait = float(retry_after) if isinstance(retry_after, int | float) else None
        return LiveResult(outcome_for(answer, error, wait))
