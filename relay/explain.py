"""`route` dry run: which routes match an event, why others do not, and what would be sent."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from relay.config import Config
from relay.digests import group_of
from relay.escaping import Channel, strip_controls
from relay.events import Event, parse_timestamp
from relay.live import MessageRef, has_threads, why_not_live
from relay.live.email import is_email, thread_id
from relay.notify import converted
from relay.pipeline import Notification, Plan
from relay.quiet import held, until_epoch
from relay.routing import Route
from relay.runtime import Runtime, build_runtime
from relay.store import rules
from relay.store.peek import Peek, SeenTimer, peek, timers
from relay.store.rules import TIMER_LIVE
from relay.templating import default_type
from relay.watches import Watch, Watches, describe, timer_op

UNKNOWN_NOTE = ("  (not a Kourier event type: only routes that name it in an event matcher"
                " can match it)")


def explain(config: Config, event: Event, now: float | None = None) -> tuple[str, list[str]]:
    """A readable report and the receivers the event reaches, as if received at `now`.

    For live and held notifications, and the timers of the watches a start would arm, it
    reads the store, read-only, when there is one.
    """
    rt = build_runtime(config)
    now = time.time() if now is None else now
    plan = rt.planner.plan(event, now)
    lines = [_headline(event), "", "routes (first match wins unless it says continue):"]
    lines += _routes(rt.planner.router.routes, plan, event)
    if not plan.match.routes:
        lines.append(_unmatched(config, event))
    receivers = plan.match.receiver_names
    lines += ["", f"receivers: {', '.join(receivers) or '(none)'}", ""]
    lines += _digests(config, plan, event, now)
    lines += _watches(rt.planner.watches, config.store.url, event, now)
    failed = {n.route: rt.planner.templates.failure(n.route, event) for n in plan.notifications}
    lines += _notifications(config, plan, rt.notifier.channels(), now,
                            live_lines(rt, event, plan), failed)
    return "\n".join(lines), receivers


def _watches(watches: Watches, url: str, event: Event, now: float) -> list[str]:
    """Which watches the event arms or disarms, as if it were received now; a start that
    `rules.watch_in_order` keeps out (the store's timer says so) arms nothing."""
    if not watches.watches:
        return []
    found = watches.decisions(event)
    ops = [timer_op(w, action, event, now) for w, action, _ in found]
    arms = [op for op in ops if op.action == "arm"]
    seen, why = timers(url, [(op.kind, op.key) for op in arms]) if arms else (None, "")
    stored = dict(zip([op.key for op in arms], seen, strict=True)) if seen is not None else {}
    lines = []
    for (w, action, stop), op in zip(found, ops, strict=True):
        timer = stored.get(op.key)
        if timer is not None and not rules.watch_in_order(op, timer.event_at):
            lines.append(_arms_nothing(w, op.context["event_at"], timer))
        else:
            lines.append(describe(w, action, stop, event, now,
                                  armed=timer is not None and timer.state == "armed"))
    if why:  # as today when nothing is stored: say that it is not known
        lines.append(f"  (store: {why}; a start older than what it holds would arm nothing)")
    return ["watches:", *lines] + (["  (none armed or disarmed)"] if not found else []) + [""]


def _arms_nothing(watch: Watch, at: float, timer: SeenTimer) -> str:
    """The dry-run line of a start older than what last armed or disarmed its timer: the
    start that armed it, stops alone (it never armed), or either (a stop keeps the newer
    time when it disarms)."""
    than = "older than" if timer.event_at is None or at < timer.event_at else "no newer than"
    live = timer.state in TIMER_LIVE
    last = "the start that armed the timer" if live else "the stop already received" \
        if timer.never_armed else "the newest start or stop already received"
    kept = " (the timer stays as that start armed it)" if live else ""
    return (f"  (no change) {watch.name}: this start ({_time(at)}) is {than} {last}"
            f" ({_time(timer.event_at)}): the relay arms nothing{kept}")


def _digests(config: Config, plan: Plan, event: Event, now: float) -> list[str]:
    """Each receiver URL whose digest window the event joins, and when it closes at the
    latest (when this event opens it; a window already open closes sooner)."""
    digests = [op for op in plan.timers if op.kind == "digest"]
    if not digests:
        return []
    lines = ["digests (no message of its own from these routes):"]
    for op in digests:
        route = next(r for r in config.routes if r.name == op.context["route"])
        assert route.digest is not None
        group = group_of(event.payload, route.digest.group_by).describe()
        closes = _clock(config.timezone, now + route.digest.window, now)
        # A digest that closes in its receiver's quiet hours is held like any notification.
        hours = config.receivers[op.context["receiver"]].quiet_hours
        named = config.templates.get(route.template_ref)
        type_ = route.template.type or (named.type if named else None) or default_type(event)
        until = held(hours, type_, now + route.digest.window)
        quiet = f", then held until {_clock(hours.timezone, until, now)} (quiet hours)" \
            if hours and until else ""
        lines.append(strip_controls(
            f"  {op.context['receiver']}[{op.context['url_index']}] joins the digest {group},"
            f" closes {closes} (route {route.name}; if this event opens the window){quiet}", True))
    return [*lines, ""]


def _clock(zone: str, at: float, now: float) -> str:
    """`07:00` in `zone` today, with the weekday on any other day (`Tue 07:00`): a time
    earlier than now's reads as past, not as tomorrow."""
    when = datetime.fromtimestamp(at, ZoneInfo(zone))
    today = datetime.fromtimestamp(now, ZoneInfo(zone)).date()
    return when.strftime("%H:%M" if when.date() == today else "%a %H:%M")


def _headline(event: Event) -> str:
    status = f"  status: {event.status}" if event.status is not None else ""
    note = "" if event.known else UNKNOWN_NOTE
    line = f"event: {event.type}  delivery_id: {event.delivery_id}{status}{note}"
    return strip_controls(line, single_line=True)  # payload text, shown on a terminal


@dataclass(frozen=True)
class Verdict:
    """What one route made of an event: `match`, `skip` (an earlier route stopped) or `no`."""

    route: str
    outcome: str
    detail: str  # the receivers, who stopped the walk, or the failed matchers


def verdicts(routes: Sequence[Route], matched: Sequence[Route], event: Event) -> list[Verdict]:
    """Every route's verdict, in order; the status page shows these per stored event too."""
    out = []
    stopped_by = None
    for route in routes:
        if route in matched:
            cont = " (continue)" if route.config.continue_ else ""
            out.append(Verdict(route.name, "match", f"{cont} -> {', '.join(route.config.receivers)}"))
            stopped_by = stopped_by or (None if route.config.continue_ else route.name)
        elif stopped_by:
            out.append(Verdict(route.name, "skip", f'not evaluated, "{stopped_by}" matched first'
                               " without continue"))
        else:
            out.append(Verdict(route.name, "no", _why_not(route, event)))
    return out


def _routes(routes: tuple[Route, ...], plan: Plan, event: Event) -> list[str]:
    marks = {"match": "MATCH  {}{}", "skip": "skip   {}: {}", "no": "no     {}: {}"}
    return ["  " + marks[v.outcome].format(v.route, v.detail)
            for v in verdicts(routes, plan.match.routes, event)]


def _why_not(route: Route, event: Event) -> str:
    return "; ".join(f"{m.describe} (is {_show(event.get(m.path, _MISSING))})"
                     for m in route.failed(event))


def _unmatched(config: Config, event: Event) -> str:
    default = config.default_receiver
    if not default:
        return "  (no route matched, and there is no default_receiver)"
    if not event.known:
        return f'  (no route matched; unknown event types skip default_receiver "{default}")'
    return f'  (no route matched: default_receiver "{default}" takes it)'


def _notifications(config: Config, plan: Plan, channels: dict[str, list[Channel]],
                   now: float, live: Mapping[Notification, list[str]],
                   failed: Mapping[str, str]) -> list[str]:
    if not plan.notifications:
        return ["notifications: none"]
    lines = ["notifications:"]
    for n in plan.notifications:
        ch, m = channels[n.receiver][n.url_index], n.message
        lines.append(f"  {n.receiver}[{n.url_index}] {ch.label}  route={n.route}"
                     f"  type={m.type}  format={m.format}")
        hours = config.receivers[n.receiver].quiet_hours
        if n.held_until is not None and hours is not None:
            lines.append(f"    held until {_clock(hours.timezone, n.held_until, now)}"
                         " (quiet hours), then sent in one summary")
            if n.live or n.hold > 0:
                lines.append("    quiet hours win over live and hold: the summary is a plain"
                             " message (no edit of the delivery's), nothing replaces this one")
        elif hours is not None and until_epoch(hours, now) is not None:
            lines.append(f"    sent now: {m.type} is urgent during quiet hours")
        lines += live.get(n, [])
        if failed.get(n.route):
            lines.append(f"    TEMPLATE FAILED ({failed[n.route]}): the built-in template is"
                         f" used instead; fix the template of route {n.route}")
        title = _size(m.title, ch.title_max, n) if ch.title_max else \
            f"{len(m.title)} chars; this channel has no title, Apprise puts it atop the body"
        lines.append(f"    title ({title}): {m.title}")
        lines.append(f"    body ({_size(m.body, ch.body_max, n)}):")
        lines += [f"      {line}".rstrip() for line in m.body.splitlines()] or \
            ["      (empty: the title goes out as the body; Apprise refuses an empty one)"]
        sent = converted(m.body, m.format, ch)
        if sent is not None:
            lines.append(f"    as {ch.renders_as(m.format)} (Apprise converts {m.format} for this"
                         " channel):")
            lines += [f"      {line}".rstrip() for line in sent.splitlines()]
    return lines


def _size(text: str, limit: int, n: Notification) -> str:
    """`42/250 chars`; a cut text says so (the limit is the channel's, from Apprise)."""
    if not limit:
        return f"{len(text)} chars, no limit"
    cut = ", cut to fit" if n.truncated and len(text) == limit else ""
    return f"{len(text)}/{limit} chars{cut}"


_MISSING = object()


def _show(value: object) -> str:
    return "missing" if value is _MISSING else repr(value)


def live_lines(rt: Runtime, event: Event, plan: Plan) -> dict[Notification, list[str]]:
    """What each live or held notification would do: post, edit or wait (store read-only)."""
    asked = [n for n in plan.notifications if (n.live or n.hold > 0) and n.held_until is None]
    if not asked:
        return {}
    found, why = peek(rt.config.store.url, [(
        rules.live_key(event.delivery_id, n.route, n.receiver, n.url_index),
        (event.delivery_id, n.route, n.receiver, n.url_index)) for n in asked])
    ts = parse_timestamp(event.timestamp).timestamp()
    out = {}
    for i, n in enumerate(asked):
        seen = found[i] if found is not None else None
        url = rt.notifier.url(n.receiver, n.url_index) or ""
        lines = [_live_line(n, event.delivery_id, url, ts, seen, why)] if n.live else []
        out[n] = lines + ([_hold_line(n, seen)] if n.hold > 0 else [])
    return out


def _live_line(n: Notification, delivery_id: str, url: str, ts: float, seen: Peek | None,
               why: str) -> str:
    reason = why_not_live(url)
    if reason is not None and is_email(url):
        thread = thread_id(delivery_id, n.route, n.receiver, n.url_index)
        return f"    live: a mail in the delivery's thread (In-Reply-To {thread})"
    if reason is not None:
        return f"    live: a new message ({reason})"
    if seen is None:
        return f"    live: posts a new message, or edits the delivery's if it has one (store: {why})"
    slot = seen.live
    if slot is None or slot.ref is None:
        return "    live: would post a new message (none for this delivery yet) and keep its ref"
    ref = _ref(slot.ref)
    action = rules.live_action(slot.ref, slot.shown, ts)
    if action == "skip":
        return (f"    live: would leave message {ref} as it is: it shows a newer state"
                f" (of {_time(slot.shown)})")
    thread = " and reply in its thread" if has_threads(url) else ""
    return f"    live: would edit message {ref}{thread}"


def _hold_line(n: Notification, seen: Peek | None) -> str:
    replaces = f"; it replaces waiting job {', '.join(map(str, seen.waiting))}" \
        if seen is not None and seen.waiting else ""
    return (f"    hold {n.hold:g}s: a newer notification of this delivery in that time replaces"
            f" it{replaces}")


def _ref(text: str) -> str:
    return strip_controls(MessageRef.shown(text), single_line=True)


def _time(ts: float | None) -> str:
    return "?" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
