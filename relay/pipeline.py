"""`plan(event)`: routing + templating -> one Notification per receiver URL.

Pure and shared by the server, the dry-run CLI and the test-send CLI, so what
an operator previews is exactly what is queued.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from relay.config import Config
from relay.escaping import for_channel
from relay.events import Event
from relay.routing import Match, Route, Router
from relay.templating import Rendered, Templates

log = logging.getLogger(__name__)
ELLIPSIS = "…"
NOTICE_ROUTE = "(receiver_failing)"  # the route name on notice jobs: no route made them


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


@dataclass(frozen=True)
class Planner:
    """Routes and renders with one config's router, templates and channel limits."""

    config: Config
    router: Router
    templates: Templates
    channels: Mapping[str, Sequence[Channel]]

    def plan(self, event: Event) -> Plan:
        match = self.router.match(event)
        out: list[Notification] = []
        for route, receiver in match.receivers:
            for index, channel in enumerate(self.channels.get(receiver, ())):
                out.append(self._notification(event, route, receiver, index, channel))
        return Plan(match, tuple(out))

    def receiver_failing(self, event: Event, fallback: str) -> tuple[Notification, ...]:
        """The failing-receiver notice, one per URL of the fallback receiver."""
        out = []
        for index, channel in enumerate(self.channels.get(fallback, ())):
            fmt = self.templates.receiver_failing.format
            rendered = self.templates.render_receiver_failing(event, for_channel(
                channel.scheme, fmt, channel.renders_as(fmt), channel.title_in_body))
            title, body, cut = _fit(rendered, channel)
            out.append(Notification(fallback, index, NOTICE_ROUTE, title, body, rendered.type,
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
