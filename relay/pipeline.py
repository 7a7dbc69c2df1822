"""`plan(event)`: routing + templating -> one Notification per receiver URL.

Pure and shared by the server, the dry-run CLI and the test-send CLI, so what
an operator previews is exactly what is queued. The planner also decides the
timer operations an event implies (`timers`) and renders what a due timer
sends: `handlers` maps each timer kind to its fire function.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from relay.config import Config
from relay.escaping import NO_CHANNEL, Channel, Escaping, for_channel
from relay.events import Event
from relay.message import Message
from relay.quiet import held, summary_due
from relay.routing import Match, Route, Router
from relay.store.records import Notification, Timer, TimerInputs, TimerKind, TimerOp
from relay.summaries import Batch, digest_op, render_digest, render_summary
from relay.templating import Templates
from relay.watches import FALLBACK as WATCH_FALLBACK
from relay.watches import Watches
from relay.watches import context as watch_context

log = logging.getLogger(__name__)
ELLIPSIS = "…"
NOTICE_ROUTE = "(receiver_failing)"  # the route name on notice jobs: no route made them
WATCH_ROUTE = "watch:{}"  # the route name on a fired watch's jobs


@dataclass(frozen=True)
class Plan:
    match: Match
    notifications: tuple[Notification, ...]
    timers: tuple[TimerOp, ...] = ()  # digest windows opened or joined, watches (un)armed


# Renders a claimed timer into its jobs, from its inputs, at `now`; must never raise.
FireHandler = Callable[[Timer, TimerInputs, float], Sequence[Notification]]


@dataclass(frozen=True)
class Planner:
    """Routes and renders with one config's router, templates, watches and channel limits."""

    config: Config
    router: Router
    templates: Templates
    channels: Mapping[str, Sequence[Channel]]
    watches: Watches = Watches()

    def plan(self, event: Event, now: float | None = None) -> Plan:
        """`now`: the relay's clock at receipt (quiet hours, watches); the wall clock if not
        given. The plan's timer operations are applied with the event."""
        now = time.time() if now is None else now
        match = self.router.match(event)
        out: list[Notification] = []
        timers: list[TimerOp] = []
        for route, receiver in match.receivers:
            for index, channel in enumerate(self.channels.get(receiver, ())):
                if route is not None and route.config.digest is not None:
                    # The digest is this route's message: the event gets none of its own.
                    timers.append(digest_op(event, route.name, route.config.digest, receiver,
                                            index))
                    continue
                out.append(self.hold(self._notification(event, route, receiver, index,
                                                        channel), now))
        return Plan(match, tuple(out), (*timers, *self.timers(event, now)))

    def hold(self, n: Notification, now: float) -> Notification:
        """Quiet hours: a notification that is not urgent waits for its receiver's summary."""
        rc = self.config.receivers.get(n.receiver)
        until = held(rc.quiet_hours if rc else None, n.message.type, now)
        return n if until is None else replace(n, held_until=until)

    def timers(self, event: Event, now: float) -> tuple[TimerOp, ...]:
        """The timer operations an event received at `now` implies (applied with the event)."""
        return self.watches.ops(event, now)

    @property
    def handlers(self) -> Mapping[TimerKind, FireHandler]:
        """What fires a due timer, per kind: its notifications in today's config."""
        return {"watch": self.fire_watch, "digest": self.fire_digest,
                "quiet": self.fire_summary}

    def deferred(self, timer: Timer, inputs: TimerInputs, now: float) -> float | None:
        """When a claimed timer fires instead of `now`, or None to fire it now: a summary
        found due inside its receiver's next quiet time waits for that to end."""
        if timer.kind != "quiet" or not inputs.held:
            return None
        rc = self.config.receivers.get(str(timer.context.get("receiver", "")))
        return summary_due(rc.quiet_hours if rc else None, now,
                           min(j.created_at for j in inputs.held))

    def fire_digest(self, timer: Timer, inputs: TimerInputs, now: float,
                    ) -> tuple[Notification, ...]:
        """A closed window's one message to its receiver URL (held in its quiet hours).

        A receiver or URL gone from the config still gets its job: the worker buries it
        with that reason, for a replay after the fix, instead of losing the events.
        """
        if not inputs.items:
            return ()
        receiver, index, limits = self._address(timer)
        batch = render_digest(self.templates, timer, inputs.items, now, limits)
        return (self.hold(_from_batch(batch, receiver, index), now),)

    def fire_summary(self, timer: Timer, inputs: TimerInputs, now: float,
                     ) -> tuple[Notification, ...]:
        """The summary of what a receiver URL's quiet time held."""
        if not inputs.held:
            return ()
        receiver, index, limits = self._address(timer)
        return (_from_batch(render_summary(self.templates, timer, inputs.held, now, limits),
                            receiver, index),)

    def _address(self, timer: Timer) -> tuple[str, int, Channel]:
        """The timer's receiver URL and its channel (none left in the config: no limits)."""
        receiver = str(timer.context.get("receiver", ""))
        index = int(timer.context.get("url_index", 0))
        channels = self.channels.get(receiver, ())
        return receiver, index, channels[index] if index < len(channels) else NO_CHANNEL

    def fire_watch(self, timer: Timer, inputs: TimerInputs, now: float,
                   ) -> tuple[Notification, ...]:
        """A due watch's alert, one per URL of its receivers; never raises.

        A watch removed from the config since it was armed fires nothing.
        """
        watch = self.watches.get(str(timer.context.get("watch", "")))
        if watch is None:
            log.warning("timer %s: watch %r is no longer in the config; nothing sent", timer.id,
                        timer.context.get("watch"))
            return ()
        event, context = watch_context(timer, inputs, now)
        template = watch.template
        receivers = dict.fromkeys(watch.config.receivers)  # listed twice: one alert, as a route
        alerts = (n for receiver in receivers for n in self._each_url(
            receiver, WATCH_ROUTE.format(watch.name), template.format,
            lambda escaping: self.templates.render_context(template, WATCH_FALLBACK, context,
                                                           "warning", escaping)))
        return tuple(self.hold(n, now) for n in alerts)  # quiet hours apply to alerts too

    def receiver_failing(self, event: Event, fallback: str) -> tuple[Notification, ...]:
        """The failing-receiver notice, one per URL of the fallback receiver."""
        return self._each_url(fallback, NOTICE_ROUTE, self.templates.receiver_failing.format,
                              lambda escaping: self.templates.render_receiver_failing(
                                  event, escaping))

    def _each_url(self, receiver: str, route: str, fmt: str,
                  render: Callable[[tuple[Escaping, Escaping]], Message],
                  ) -> tuple[Notification, ...]:
        """One notification per URL of `receiver`, rendered with that channel's escaping."""
        out = []
        for index, channel in enumerate(self.channels.get(receiver, ())):
            message, cut = _fit(render(for_channel(channel.scheme, fmt, channel.renders_as(fmt),
                                                   channel.title_in_body)), channel)
            out.append(Notification(receiver, index, route, message, False, cut))
        return tuple(out)

    def _notification(self, event: Event, route: Route | None, receiver: str, index: int,
                      channel: Channel) -> Notification:
        name = route.name if route else ""
        fmt = self.templates.compiled[name].format if name in self.templates.compiled else "text"
        escaping = for_channel(channel.scheme, fmt, channel.renders_as(fmt), channel.title_in_body)
        message, cut = _fit(self.templates.render(name, event, escaping), channel)
        stale = route.config.suppress_stale if route and route.config.suppress_stale is not None \
            else self.config.deliveries.suppress_stale
        live, hold = (route.config.live, route.config.hold) if route else (False, 0.0)
        return Notification(receiver, index, name or "(default)", message, stale, cut,
                            live and bool(event.delivery_id), hold)


def _from_batch(batch: Batch, receiver: str, index: int) -> Notification:
    return Notification(receiver, index, batch.route, batch.message, False, batch.truncated)


def _fit(rendered: Message, channel: Channel) -> tuple[Message, bool]:
    """Cut title and body to the channel's limits, marking the cut with an ellipsis."""
    title, body = rendered.title, rendered.body
    cut = False
    if channel.title_max and len(title) > channel.title_max:
        title, cut = title[: channel.title_max - 1] + ELLIPSIS, True
    if channel.body_max and len(body) > channel.body_max:
        body, cut = body[: channel.body_max - 1] + ELLIPSIS, True
    return (replace(rendered, title=title, body=body) if cut else rendered), cut
