"""Telegram bots (`tgram://{bot_token}/{chat_id}`): `sendMessage`, `editMessageText`, replies.

Every answer is `{"ok": …}`; failures carry `error_code` and `description`
("Bad Request: message to edit not found"), and 429 carries
`parameters.retry_after`. Editing to the text the message already has is
answered "message is not modified": the message shows the current state, so
that counts as sent. Replies use `reply_parameters` (Bot API 7.0 and later).
"""

from __future__ import annotations

from typing import Any

from aiohttp import ClientSession

from relay.live import LiveResult, MessageRef
from relay.live.http import SENT, Answer, Api, outcome_for
from relay.message import Message

API = "https://api.telegram.org"
GONE = ("message to edit not found", "message can't be edited", "message_id_invalid")
UNREACHABLE = "chat not found"  # an edit of a message in a chat this bot no longer reaches
UNCHANGED = "message is not modified"


def unsupported(plugin: Any) -> str | None:
    if len(plugin.targets) != 1:
        return "a live Telegram URL names exactly one chat (tgram://{bot_token}/{chat_id})"
    return None


class TelegramClient:
    platform = "telegram"
    threads = True  # a reply to the live message: Telegram shows it as that message's thread

    def __init__(self, bot_token: str, chat_id: str, session: ClientSession,
                 timeout: float = 10.0, api_base: str | None = None,
                 topic: int | None = None) -> None:
        self.chat_id = chat_id
        self.topic = topic
        self.api = Api(session, api_base or API, timeout, [bot_token])
        self.prefix = f"/bot{bot_token}"

    @classmethod
    def from_plugin(cls, plugin: Any, session: ClientSession, timeout: float,
                    api_base: str | None) -> TelegramClient:
        chat_id, topic = plugin.targets[0]
        return cls(plugin.bot_token, str(chat_id), session, timeout, api_base, topic)

    def _new(self, message: Message) -> dict[str, Any]:
        payload: dict[str, Any] = {"chat_id": self.chat_id, "text": message.plain()}
        if self.topic:
            payload["message_thread_id"] = self.topic
        return payload

    async def post(self, message: Message, key: str = "") -> LiveResult:
        return await self._call("sendMessage", self._new(message))

    async def edit(self, ref: MessageRef, message: Message, key: str = "") -> LiveResult:
        result = await self._call("editMessageText", {
            "chat_id": ref.channel, "message_id": int(ref.message), "text": message.plain()})
        return LiveResult(SENT, ref) if UNCHANGED in result.outcome.error else result

    async def reply(self, ref: MessageRef, message: Message, key: str = "") -> LiveResult:
        payload = self._new(message)
        payload["chat_id"] = ref.channel
        payload["reply_parameters"] = {"message_id": int(ref.message),
                                       "allow_sending_without_reply": True}
        return await self._call("sendMessage", payload)

    async def _call(self, method: str, payload: dict[str, Any]) -> LiveResult:
        answer = await self.api.call("POST", f"{self.prefix}/{method}", json=payload)
        body = answer.fields
        result = body.get("result")
        if answer.status == 200 and body.get("ok") is True and isinstance(result, dict):
            chat = result["chat"] if isinstance(result.get("chat"), dict) else {}
            return LiveResult(SENT, MessageRef("telegram", str(chat.get("id", payload["chat_id"])),
                                               str(result.get("message_id", ""))))
        return self._failure(method, answer, body)

    def _failure(self, method: str, answer: Answer, body: dict[str, Any]) -> LiveResult:
        description = str(body.get("description") or "no description")
        error = self.api.redact(f"{method}: {description}")
        params = body["parameters"] if isinstance(body.get("parameters"), dict) else {}
        wait = params.get("retry_after")
        outcome = outcome_for(answer, error, float(wait) if isinstance(wait, int | float) else None)
        gone = answer.status == 400 and (any(g in description.lower() for g in GONE) or (
            method == "editMessageText" and UNREACHABLE in description.lower()))
        return LiveResult(outcome, gone=gone)
