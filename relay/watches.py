"""Watches: a timer per delivery that fires when something did not happen. Pure.

An event matching a watch's `start` arms (or re-arms) the delivery's timer; an
event matching any of its `stop` matcher sets disarms it (a stop wins over a
start when an event matches both); otherwise it fires `after` the relay
received the arming event. The store applies what `ops()` says in the event's
own transaction; when a timer falls due the worker renders it with
`context()` and the watch's template, and the notifications become jobs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from relay.config import Config, RouteConfig, WatchConfig
from relay.errors import ConfigError, Issue
from relay.events import Event, parse_timestamp
from relay.routing import MatcherError, Route, compile_matchers
from relay.store.records import Timer, TimerInputs, TimerKind, TimerOp
from relay.templating import CompiledTemplate, compile_pair, template_issues

KIND: TimerKind = "watch"
# An event already older than `after` when it arrives (by its own timestamp against
# the relay's clock) fires this soon after receipt instead: the deadline has passed,
# but a stop event Kourier sends right behind it (a backlog being replayed) still wins.
LATE_GRACE = 60.0
TITLE = "Delivery {{ delivery_id }}: {{ watch }} ({{ elapsed }} without a stop event)"
BODY = ("Watch {{ watch }} was armed by {{ event }} {{ elapsed }} ago.\n"
        "{% if last.status %}Last status: {{ last.status | human_status }}\n{% endif -%}"
        "Last event: {{ last.event }} at {{ last.timestamp | localtime }}")
FIELDS = frozenset({"last", "watch", "elapsed", "elapsed_seconds", "late"})  # besides the event's
FALLBACK = compile_pair(TITLE, BODY, "warning", "text")
Action = Literal["arm", "disarm"]


@dataclass(frozen=True)
class Watch:
    config: WatchConfig
    start: Route
    stops: tuple[Route, ...]
    template: CompiledTemplate

    @property
    def name(self) -> str:
        return self.config.name

    def key(self, delivery_id: str) -> str:
        return f"{self.name}:{delivery_id}"

    def decide(self, event: Event) -> tuple[Action, int] | None:
        """What this event does to the watch: disarm (and which stop matched), arm, nothing."""
        for i, stop in enumerate(self.stops):
            if not stop.failed(event):
                return "disarm", i
        return ("arm", -1) if not self.start.failed(event) else None


@dataclass(frozen=True)
class Watches:
    watches: tuple[Watch, ...] = ()

    @classmethod
    def from_config(cls, config: Config) -> Watches:
        """Compile every watch; raise ConfigError listing every bad matcher and template."""
        issues: list[Issue] = []
        out = []
        for wc in config.watches:
            try:
                out.append(_compile(wc, config))
            except ConfigError as e:
                issues += e.issues
        if issues:
            raise ConfigError(issues)
        return cls(tuple(out))

    def get(self, name: str) -> Watch | None:
        return next((w for w in self.watches if w.name == name), None)

    def decisions(self, event: Event) -> list[tuple[Watch, Action, int]]:
        """Every watch this event arms or disarms (for ops and the dry run)."""
        return [(w, *d) for w in self.watches if (d := w.decide(event)) is not None]

    def ops(self, event: Event, now: float) -> tuple[TimerOp, ...]:
        """The timer operations an event implies, received at `now`."""
        if not self.watches:  # every event asks: most configs have none
            return ()
        return tuple(timer_op(w, action, event, now) for w, action, _ in self.decisions(event))


def timer_op(watch: Watch, action: Action, event: Event, now: float) -> TimerOp:
    """The timer operation one decision of this watch implies for an event received at `now`."""
    key = watch.key(event.delivery_id)
    # The event's own time orders the watch's timer (a start older than a stop already
    # received arms nothing: relay.store.rules.watch_in_order).
    at = parse_timestamp(event.timestamp).timestamp()
    if action == "disarm":
        return TimerOp("disarm", KIND, key, event.delivery_id,
                       context={"watch": watch.name, "event_at": at})
    late = is_late(event, watch.config.after, now)
    delay = min(watch.config.after, LATE_GRACE) if late else watch.config.after
    return TimerOp("arm", KIND, key, event.delivery_id, delay=delay,
                   context={"watch": watch.name, "late": late, "event_at": at})


def is_late(event: Event, after: float, now: float) -> bool:
    """The event says it happened more than `after` before the relay received it."""
    return now - parse_timestamp(event.timestamp).timestamp() >= after


def _compile(wc: WatchConfig, config: Config) -> Watch:
    issues: list[Issue] = []
    if ":" in wc.name:  # "a" + "b:c" and "a:b" + "c" would share a timer
        issues.append(config.source.issue(f"{wc.path}.name", 'a watch name must not contain ":"'
                                          " (its timers are keyed name:delivery_id)"))
    routes: list[Route] = []
    for section, spec in [("start", wc.start), *((stop_key(wc, i), s) for i, s in
                                                  enumerate(wc.stop))]:
        try:
            matchers = compile_matchers(spec, wc.path, config.source, section)
            routes.append(Route(RouteConfig(f"{wc.name} {section}", spec, wc.receivers,
                                            wc.template, path=f"{wc.path}.{section}"), matchers))
        except MatcherError as e:
            issues += e.issues
    t = wc.template
    issues += template_issues(t, config.source)  # each of title and body at its own key
    if issues:
        raise ConfigError(issues)
    template = compile_pair(t.title if t.title is not None else TITLE,
                            t.body if t.body is not None else BODY, t.type or "warning",
                            t.format or "text")
    return Watch(wc, routes[0], tuple(routes[1:]), template)


def stop_key(wc: WatchConfig, i: int) -> str:
    """The key of stop `i` under its watch as the file has it: `stop[1]`, or `stop` for
    a `stop:` written as one mapping."""
    return f"stop[{i}]" if wc.stop_listed else "stop"


def context(timer: Timer, inputs: TimerInputs, now: float) -> tuple[Event, dict[str, Any]]:
    """The arming event and what a watch's template sees: its fields, `last`, `watch`,
    `elapsed` (since the relay received the arming event), `elapsed_seconds`, `late`."""
    arming = inputs.arming.payload if inputs.arming else {"delivery_id": timer.delivery_id}
    last = inputs.last.payload if inputs.last else arming
    elapsed = max(0.0, now - timer.armed_at)
    event = Event(str(arming.get("event", "")), timer.delivery_id,
                  str(arming.get("timestamp", "")), arming.get("status"), arming)
    return event, {**arming, "payload": arming, "last": dict(last),
                   "watch": timer.context.get("watch", ""), "elapsed": human_duration(elapsed),
                   "elapsed_seconds": int(elapsed), "late": bool(timer.context.get("late"))}


def human_duration(seconds: float) -> str:
    """`4h`, `2h 5m`, `90s` -> `1m 30s`, `3d 4h`: the two largest units."""
    left = int(seconds)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= size or (unit == "s" and not parts):
            parts.append(f"{left // size}{unit}")
            left %= size
    return " ".join(parts[:2])


def describe(watch: Watch, action: Action, stop: int, event: Event, now: float,
             armed: bool = False) -> str:
    """One line of the `route` dry run; `armed`: the store holds this timer armed (a start
    re-arms it: its countdown starts over)."""
    if action == "disarm":
        return f"  DISARM {watch.name}: {stop_key(watch.config, stop)} matches (a timer armed" \
               " for this delivery will not fire)"
    late = is_late(event, watch.config.after, now)
    when = f"{human_duration(min(watch.config.after, LATE_GRACE))} after receipt: the event is" \
        f" already older than after ({human_duration(watch.config.after)})" if late else \
        f"{human_duration(watch.config.after)} after receipt unless a stop event comes"
    verb, again = ("RE-ARM", " (the timer is armed: its countdown starts over)") if armed \
        else ("ARM   ", "")
    return f"  {verb} {watch.name} -> {', '.join(watch.config.receivers)}: fires {when}{again}"
