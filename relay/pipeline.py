"""`plan(event)`: routing + templating -> one Notification per receiver URL.

Pure and shared by the server, the dry-run CLI and the test-send CLI, so what
an operator previews is exactly what is queued. The planner also decides the
timer operations an event implies (`timers`) and renders what a due timer
sends: `handlers` maps each timer kind to its fire function.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from relay.config import Config
from relay.escaping import Escaping, for_channel
from relay.events import Event
from relay.routing import Match, Route, Router
from relay.store.records import Timer, TimerInputs, TimerKind, TimerOp
from relay.templating import Rendered, Templates
from relay.watches import FALLBACK as WATCH_FALLBACK
from relay.watches import Watches
from relay.watches import context as watch_context

log = logging.getLogger(__name__)
ELLIPSIS = "…"
NOTICE_ROUTE = "(receiver_failing)"  # the route name on notice jobs: no route made them
WATCH_ROUTE = "watch:{}"  # the route name on a fired watch's jobs


@dataclass(frozen=True)
class Channel:
    """What the pipeline needs to know about one receiver URL (never the URL itself)."""

    scheme: str
    label: str  # redacted, for display
    body_max: int
    title_max: int
    # (template format, what the plugin renders it as), from Apprise's `resolve_format`
    resolves: tuple[tuple[str, str], ...] = ()
    title_in_body: bool = False  # Apprise sends "title\r\nbody" as one text

    def renders_as(self, template_format: str) -> str:
        return dict(self.resolves).get(template_format, template_format)


@dataclass(frozen=True)
class Notification:
    receiver: str
    url_index: int
    route: str
    title: str
    body: str
    type: str
    format: str
    suppress_stale: bool = False
    truncated: bool = False
    live: bool = False  # the route's `live`: one message per delivery, edited where the URL can
    hold: float = 0.0  # the route's `hold`: seconds it waits for a newer one to replace it


@dataclass(frozen=True)
class Plan:
    match: Match
    notifications: tuple[Notification, ...]


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

    def plan(self, event: Event) -> Plan:
        match = self.router.match(event)
        out: list[Notification] = []
        for route, receiver in match.receivers:
            for index, channel in enumerate(self.channels.get(receiver, ())):
                out.append(self._notification(event, route, receiver, index, channel))
        return Plan(match, tuple(out))

    def timers(self, event: Event, now: float) -> tuple[TimerOp, ...]:
        """The timer operations an event received at `now` implies (applied with the event)."""
        return self.watches.ops(event, now)

    @property
    def handlers(self) -> Mapping[TimerKind, FireHandler]:
        """What fires a due timer, per kind: its notifications in today's config."""
        return {"watch": self.fire_watch}

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
        return tuple(n for receiver in watch.config.receivers for n in self._each_url(
            receiver, WATCH_ROUTE.format(watch.name), template.format,
            lambda escaping: self.templates.render_context(template, WATCH_FALLBACK, context,
                                                           "warning", escaping)))

    def receiver_failing(self, event: Event, fallback: str) -> tuple[Notification, ...]:
        """The failing-receiver notice, one per URL of the fallback receiver."""
        return self._each_url(fallback, NOTICE_ROUTE, self.templates.receiver_failing.format,
                              lambda escaping: self.templates.render_receiver_failing(
                                  event, escaping))

    def _each_url(self, receiver: str, route: str, fmt: str,
                  render: Callable[[tuple[Escaping, Escaping]], Rendered],
                  ) -> tuple[Notification, ...]:
        """One notification per URL of `receiver`, rendered with that channel's escaping."""
        out = []
        for index, channel in enumerate(self.channels.get(receiver, ())):
            rendered = render(for_channel(channel.scheme, fmt, channel.renders_as(fmt),
                                          channel.title_in_body))
            title, body, cut = _fit(rendered, channel)
            out.append(Notification(receiver, index, route, title, body, rendered.type,
                                    rendered.format, False, cut))
        return tuple(out)

    def _notification(self, event: Event, route: Route | None, receiver: str, index: int,
                      channel: Channel) -> Notification:
        name = route.name if route else ""
        fmt = self.templates.compiled[name].format if name in self.templates.compiled else "text"
        escaping = for_channel(channel.scheme, fmt, channel.renders_as(fmt), channel.title_in_body)
        rendered = self.templates.render(name, event, escaping)
        title, body, cut = _fit(rendered, channel)
        stale = route.config.suppress_stale if route and route.config.suppress_stale is not None \
            else self.config.deliveries.suppress_stale
        live, hold = (route.config.live, route.config.hold) if route else (False, 0.0)
        return Notification(receiver, index, name or "(default)", title, body, rendered.type,
                            rendered.format, stale, cut, live and bool(event.delivery_id), hold)


def _fit(rendered: Rendered, channel: Channel) -> tuple[str, str, bool]:
    """Cut title and body to the channel's limits, marking the cut with an ellipsis."""
    title, body = rendered.title, rendered.body
    cut = False
    if channel.title_max and len(title) > channel.title_max:
        title, cut = title[: channel.title_max - 1] + ELLIPSIS, True
    if channel.body_max and len(body) > channel.body_max:
        body, cut = body[: channel.body_max - 1] + ELLIPSIS, True
    return title, body, cut
