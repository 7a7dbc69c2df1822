"""Slack with a bot token (`slack://xoxb-…/#channel`): post, edit (`chat.update`), thread replies.

Slack answers HTTP 200 with `{"ok": false, "error": "…"}` for most failures and
429 with `Retry-After` when rate limited. `chat.postMessage` accepts a channel
name, but `chat.update` needs the channel *id*, which the post answers.
Incoming webhooks (`slack://T…/B…/…`) answer only `ok`: they cannot be edited.
"""

from __future__ import annotations

from typing import Any

from aiohttp import ClientSession
from apprise.plugins.slack import CHANNEL_RE

from relay.live import LiveResult, MessageRef
from relay.live.http import SENT, Answer, Api, outcome_for
from relay.message import Message
from relay.notify import Outcome, wait_after

API = "https://slack.com/api"
GONE = frozenset({"message_not_found", "cant_update_message", "edit_window_closed"})
# An edit of a message this URL can no longer reach (a reload pointed it at another
# workspace, or the bot left the channel): posted afresh where the URL points now.
UNREACHABLE = frozenset({"channel_not_found", "not_in_channel"})
RETRY = frozenset({"ratelimited", "internal_error", "fatal_error", "service_unavailable",
                   "request_timeout", "team_added_to_org"})
# In a 200 answer, the bot itself refused (its token, its channel): counted as the HTTP
# status that says so elsewhere, so that it opens the receiver URL's circuit as that would.
REFUSED = {"invalid_auth": 401, "not_authed": 401, "token_revoked": 401, "token_expired": 401,
           "account_inactive": 401, "channel_not_found": 404, "not_in_channel": 403,
           "is_archived": 410}


def unsupported(plugin: Any) -> str | None:
    if plugin.mode != "bot":
        return "Slack incoming webhooks cannot edit messages: use a bot token (slack://xoxb-…/#channel)"
    if len(plugin.channels) != 1 or not plugin.channels[0]:
        return "a live Slack URL names exactly one channel (one URL per channel)"
    if not CHANNEL_RE.match(plugin.channels[0]):
        return "a live Slack URL names a channel (#name, +ID or @user), not an email address"
    return None


def _target(channel: str) -> tuple[str, str]:
    """Apprise's target forms: `#name`, `name`, `+C123` (an id), `@user`, each with `:ts`."""
    match = CHANNEL_RE.match(channel)
    assert match is not None  # unsupported() refused it otherwise
    name, thread_ts = match.group("channel"), match.group("thread_ts") or ""
    if name[0] == "+":
        name = name[1:]
    elif name[0] != "@":
        name = name if name[0] == "#" else f"#{name}"
    return name, thread_ts


def _escape(text: str) -> str:
    """Slack's three control characters; also stops `<url|text>` disguised links."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class SlackClient:
    platform = "slack"
    threads = True

    def __init__(self, token: str, channel: str, session: ClientSession, timeout: float = 10.0,
                 api_base: str | None = None) -> None:
        self.channel, self.thread_ts = _target(channel)
        self.api = Api(session, api_base or API, timeout, [token])
        self._headers = {"Authorization": f"Bearer {token}",
                         "Content-Type": "application/json; charset=utf-8"}

    @classmethod
    def from_plugin(cls, plugin: Any, session: ClientSession, timeout: float,
                    api_base: str | None) -> SlackClient:
        return cls(plugin.access_token, plugin.channels[0], session, timeout, api_base)

    @staticmethod
    def text(message: Message) -> str:
        title, body = _escape(message.title), _escape(message.body)
        return f"*{title}*\n{body}" if title and body else title or body

    async def post(self, message: Message, key: str = "") -> LiveResult:
        payload = {"channel": self.channel, "text": self.text(message)}
        if self.thread_ts:  # the URL's `#channel:ts` form: the live message lives in that thread
            payload["thread_ts"] = self.thread_ts
        return await self._send("chat.postMessage", payload)

    async def edit(self, ref: MessageRef, message: Message, key: str = "") -> LiveResult:
        return await self._send("chat.update", {"channel": ref.channel, "ts": ref.message,
                                                "text": self.text(message)})

    async def reply(self, ref: MessageRef, message: Message, key: str = "") -> LiveResult:
        return await self._send("chat.postMessage", {
            "channel": ref.channel, "thread_ts": self.thread_ts or ref.message,
            "text": self.text(message)})

    async def _send(self, method: str, payload: dict[str, str]) -> LiveResult:
        answer = await self.api.call("POST", f"/{method}", json=payload, headers=self._headers)
        body = answer.fields
        if answer.status == 200 and body.get("ok") is True:
            if not body.get("channel") or not body.get("ts"):
                return LiveResult(Outcome("retry", f"{method}: Slack's answer has no channel/ts"))
            return LiveResult(SENT, MessageRef("slack", str(body["channel"]), str(body["ts"])))
        return self._failure(method, answer, str(body.get("error") or "no error code"))

    def _failure(self, method: str, answer: Answer, code: str) -> LiveResult:
        error = self.api.redact(f"{method}: {code}")
        if code in GONE or (method == "chat.update" and code in UNREACHABLE):
            return LiveResult(Outcome("failed", error, 0.0, answer.status), gone=True)
        if answer.status != 200:
            return LiveResult(outcome_for(answer, error))
        if code in RETRY:  # in a 200 answer: wait as after the status Slack means
            wait = wait_after(429 if code == "ratelimited" else 503, answer.retry_after)
            return LiveResult(Outcome("retry", error, wait, 200))
        return LiveResult(Outcome("failed", error, 0.0, REFUSED.get(code, 200)))
