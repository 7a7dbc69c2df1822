"""Live messages: what Apprise cannot do (read back a message's id, edit it, reply in its thread).

One small async module per platform (`slack`, `discord`, `telegram`, `matrix`),
each against the platform's documented HTTP API, built from an Apprise URL that
Apprise itself has parsed (so the relay accepts exactly Apprise's URL forms).
Every call returns a `LiveResult`: the relay's usual `Outcome` (sent / retry
with a delay / failed), the message ref of what was posted, and `gone` when
the message was deleted or can no longer be edited (the caller then posts a
fresh one; that alone is never a dead letter).

Errors never carry a token: each client redacts its own secrets from every
error text, and URLs are masked as everywhere else in the relay.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import apprise
from aiohttp import ClientSession

from relay.message import Message
from relay.notify import Outcome

PLATFORMS = ("slack", "discord", "telegram", "matrix")


@dataclass(frozen=True)
class MessageRef:
    """The platform's id of a live message: where it is (`channel`) and which one (`message`)."""

    platform: str
    channel: str  # Slack channel id, Discord channel/thread id, Telegram chat id, Matrix room id
    message: str  # Slack ts, Discord message id, Telegram message_id, Matrix event id

    def to_json(self) -> str:
        return json.dumps({"platform": self.platform, "channel": self.channel,
                           "message": self.message}, separators=(",", ":"))

    @classmethod
    def shown(cls, text: str) -> str:
        """A stored ref as people read it (`platform channel/message`), even a broken one."""
        try:
            ref = cls.from_json(text)
        except (ValueError, KeyError, TypeError):
            return "(unreadable ref)"
        return f"{ref.platform} {ref.channel}/{ref.message}"

    @classmethod
    def from_json(cls, text: str) -> MessageRef:
        data = json.loads(text)
        return cls(str(data["platform"]), str(data["channel"]), str(data["message"]))


@dataclass(frozen=True)
class LiveResult:
    """An attempt's outcome, the ref of the message it posted, and whether the message is gone."""

    outcome: Outcome
    ref: MessageRef | None = None
    gone: bool = False  # deleted, or no longer editable: post a fresh message instead

    @property
    def sent(self) -> bool:
        return self.outcome.sent


class LiveClient(Protocol):
    """One receiver URL's live-message operations."""

    platform: str
    threads: bool  # whether `reply` is supported (the platform has threads for this URL)

    async def post(self, message: Message, key: str = "") -> LiveResult:
        """Post a new message; `key` makes a retried post idempotent where the platform allows."""

    async def edit(self, ref: MessageRef, message: Message, key: str = "") -> LiveResult:
        """Replace the message's text with the current state (`key`: as for `post`)."""

    async def reply(self, ref: MessageRef, message: Message, key: str = "") -> LiveResult:
        """Post `message` in the thread of `ref`."""


def live_client(url: str, session: ClientSession, *, timeout: float = 10.0,
                api_base: Mapping[str, str] | None = None) -> LiveClient | None:
    """The live client for an Apprise URL, or None when it cannot edit (see `why_not_live`).

    `api_base` overrides a platform's API root (`{"slack": "http://127.0.0.1:9000/api"}`):
    it exists for tests that answer as the platform does on a local port.
    """
    plugin = apprise.Apprise.instantiate(url)
    if plugin is None or _reason(plugin) is not None:
        return None
    base = (api_base or {}).get(_platform(plugin))
    return _build(plugin, session, timeout, base)


def why_not_live(url: str) -> str | None:
    """None when this URL's messages can be edited; else why not, for `check` (no secrets)."""
    plugin = apprise.Apprise.instantiate(url)
    if plugin is None:
        return "no Apprise plugin accepts this URL"
    return _reason(plugin)


def has_threads(url: str) -> bool:
    """Whether a live message at this URL keeps its history in a thread (Discord's cannot)."""
    plugin = apprise.Apprise.instantiate(url)
    return plugin is not None and _reason(plugin) is None and _clients()[_platform(plugin)].threads


def _platform(plugin: Any) -> str:
    return {"NotifySlack": "slack", "NotifyDiscord": "discord", "NotifyTelegram": "telegram",
            "NotifyMatrix": "matrix"}.get(type(plugin).__name__, "")


def _reason(plugin: Any) -> str | None:
    from relay.live import discord, matrix, slack, telegram

    checks = {"slack": slack.unsupported, "discord": discord.unsupported,
              "telegram": telegram.unsupported, "matrix": matrix.unsupported}
    platform = _platform(plugin)
    if platform not in checks:
        return f"{plugin.service_name} messages cannot be edited: each notification is a new message"
    return checks[platform](plugin)


def _clients() -> dict[str, Any]:
    from relay.live import discord, matrix, slack, telegram

    return {"slack": slack.SlackClient, "discord": discord.DiscordClient,
            "telegram": telegram.TelegramClient, "matrix": matrix.MatrixClient}


def _build(plugin: Any, session: ClientSession, timeout: float, base: str | None) -> LiveClient:
    build: Callable[..., LiveClient] = _clients()[_platform(plugin)].from_plugin
    return build(plugin, session, timeout, base)
