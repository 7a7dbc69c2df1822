"""Digests and quiet hours in the planner: the timer a digest route's event opens or
joins, and the one message a fired digest or quiet-hours summary becomes; pure.

A digest window is a `digest` timer per route, group and receiver URL; the
store collects the window's events in arrival order (`digest_items`). A
quiet-hours summary is a `quiet` timer per receiver URL, due when the quiet
time ends; the store keeps the notifications it holds in the `held` state.
Both render here, at fire time, cut to the channel's limit with "… and N
more", through a template that falls back to the built-in one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from relay.digests import Group, fit, group_of, iso, timer_key, window_context
from relay.escaping import Channel, Escaping, for_channel
from relay.events import Event
from relay.message import Message
from relay.noiseconfig import DigestConfig
from relay.store.records import DigestItem, Job, Timer, TimerOp
from relay.store.rules import BATCH_CEILING
from relay.templating import CompiledTemplate, Templates, default_type

SEVERITY = ("info", "success", "warning", "failure")
# Held notifications were made inert for their channel when they were rendered.
ALREADY_ESCAPED = (Escaping(single_line=True), Escaping())
QUIET_ROUTE = "(quiet hours)"  # the route name on summary jobs
# The keys of each of a summary's `notifications` and of its `quiet`; `check` warns
# about others.
NOTIFICATION_FIELDS = frozenset({"title", "body", "type", "route", "delivery_id",
                                 "event_type", "at"})
QUIET_FIELDS = frozenset({"from", "until"})


@dataclass(frozen=True)
class Batch:
    """One fired digest or summary for one receiver URL, rendered and cut, and its route."""

    message: Message
    route: str
    truncated: bool


def digest_op(event: Event, route: str, digest: DigestConfig, receiver: str, index: int,
              ) -> TimerOp:
    """Open (or join) the window of this event's group for one receiver URL."""
    group = group_of(event.payload, digest.group_by)
    full_at = min(digest.max_events or BATCH_CEILING, BATCH_CEILING)
    return TimerOp("open", "digest", timer_key(route, group, receiver, index),
                   delay=digest.window, collect=True, full_at=full_at,
                   context={"route": route, "group": [list(p) for p in group.values],
                            "receiver": receiver, "url_index": index,
                            "window": digest.window, "full_at": full_at})


def group_in(timer: Timer) -> Group:
    return Group(tuple((str(k), str(v)) for k, v in timer.context.get("group", ())))


def severest(types: Sequence[str]) -> str:
    return max(types, key=lambda t: SEVERITY.index(t) if t in SEVERITY else 0, default="info")


def render_digest(templates: Templates, timer: Timer, items: Sequence[DigestItem], now: float,
                  channel: Channel) -> Batch:
    """The digest of a closed window, cut to the channel's limits."""
    route = str(timer.context.get("route", ""))
    template = templates.digest(route)
    fmt = template.format
    escaping = for_channel(channel.scheme, fmt, channel.renders_as(fmt), channel.title_in_body)
    events = [_event(i.event.payload) for i in items]
    base = {"group": group_in(timer).as_dict(), "count": len(items), "route": route,
            "window": window_context(timer.armed_at, timer.due_at, now)}
    return _cut(templates, template, templates.digest_default, base, "events",
                [e.payload for e in events], severest([default_type(e) for e in events]),
                escaping, route, channel)


def render_summary(templates: Templates, timer: Timer, held: Sequence[Job], now: float,
                   channel: Channel) -> Batch:
    """The summary of what a receiver URL's quiet time held, cut to the channel's limits."""
    receiver = str(timer.context.get("receiver", ""))
    template = templates.summaries.get(receiver, templates.summary_default)
    items = [{"title": j.message.title, "body": j.message.body, "type": j.message.type,
              "route": j.route, "delivery_id": j.delivery_id, "event_type": j.event_type,
              "at": iso(j.created_at)} for j in held]
    base = {"count": len(held), "receiver": receiver,
            "quiet": {"from": iso(min(j.created_at for j in held)) if held else iso(now),
                      "until": iso(timer.due_at)}}
    return _cut(templates, template, templates.summary_default, base, "notifications", items,
                severest([j.message.type for j in held]), ALREADY_ESCAPED, QUIET_ROUTE, channel)


def _cut(templates: Templates, template: CompiledTemplate, fallback: CompiledTemplate,
         base: Mapping[str, Any], name: str, items: list[Any], type_: str,
         escaping: tuple[Escaping, Escaping], route: str, channel: Channel) -> Batch:
    def render(k: int) -> str:
        return templates.render_context(template, fallback, {**base, name: items[:k]}, type_,
                                      escaping).body

    whole = templates.render_context(template, fallback, {**base, name: items}, type_, escaping)
    body, shown = (whole.body, len(items))
    if channel.body_max and len(whole.body) > channel.body_max:
        body, shown = fit(render, len(items), channel.body_max)
    title = whole.title
    if channel.title_max and len(title) > channel.title_max:
        title = title[: channel.title_max - 1] + "…"
    return Batch(Message(title, body, whole.type, whole.format), route,
                 truncated=shown < len(items) or title != whole.title or len(body) < len(whole.body))


def _event(payload: Mapping[str, Any]) -> Event:
    """A stored payload as the Event it was accepted as (validated then; never raises)."""
    status = payload.get("status")
    return Event(str(payload.get("event", "")), str(payload.get("delivery_id", "")),
                 str(payload.get("timestamp", "")), status if isinstance(status, str) else None,
                 payload)
