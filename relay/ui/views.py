"""What the pages show, computed from store records: pure functions, no I/O.

Values that came from a payload or a receiver stay plain strings here; the
templates escape them (autoescape is on).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from relay.config import Config
from relay.errors import InvalidEvent
from relay.events import event_from_dict
from relay.explain import Verdict, verdicts
from relay.live import MessageRef
from relay.logs import scrub
from relay.quiet import QuietHours, until_epoch
from relay.routing import Router
from relay.store import (
    Attempt,
    DeliverySummary,
    Job,
    Minute,
    ReceiverState,
    Timeline,
    TimelineEvent,
    Timer,
    rules,
)
from relay.store.relays import RelayState, serving
from relay.summaries import group_in

CHART_W, CHART_H = 600, 120


def when(ts: float | None, zone: str = "UTC") -> str:
    """`2026-01-02 10:11:12 UTC`; empty for never."""
    if not ts:
        return ""
    tz = ZoneInfo(zone) if zone != "UTC" else UTC
    return datetime.fromtimestamp(ts, tz).strftime("%Y-%m-%d %H:%M:%S %Z")


def iso(ts: float | None) -> str:
    return datetime.fromtimestamp(ts or 0, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ago(ts: float | None, now: float) -> str:
    if not ts:
        return "never"
    s = max(0, int(now - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s // size} {unit} ago"
    return f"{s} s ago"


# ---------------------------------------------------------------- overview


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    h: float
    label: str


@dataclass(frozen=True)
class Chart:
    """An inline SVG bar chart: one series of bars per count, bars side by side per minute."""

    width: int
    height: int
    bar_width: float
    series: tuple[tuple[str, str, tuple[Bar, ...]], ...]  # (name, css class, bars)
    peak: int
    totals: Mapping[str, int]


def chart(minutes: Sequence[Minute], zone: str) -> Chart:
    names = (("events", "events received"), ("sent", "notifications sent"),
             ("failed", "attempts failed"))
    peak = max([1] + [max(m.events, m.sent, m.failed) for m in minutes])
    slot = CHART_W / max(1, len(minutes))
    bar_w = slot / (len(names) + 1)
    series = []
    for i, (attr, name) in enumerate(names):
        bars = []
        for j, m in enumerate(minutes):
            value = getattr(m, attr)
            h = (CHART_H - 4) * value / peak
            bars.append(Bar(round(j * slot + i * bar_w, 2), round(CHART_H - h, 2), round(h, 2),
                            f"{when(m.at, zone)}: {value} {name}"))
        series.append((name, attr, tuple(bars)))
    totals = {attr: sum(getattr(m, attr) for m in minutes) for attr, _ in names}
    return Chart(CHART_W, CHART_H, round(bar_w, 2), tuple(series), peak, totals)


@dataclass(frozen=True)
class ReceiverRow:
    """One receiver URL: its receiver's name, its index and redacted label, its own state."""

    name: str
    url_index: int
    url: str  # the redacted label (`slack://***`); empty for a URL no longer in the config
    state: str  # idle, sending, retrying, probing, circuit open, quiet hours, not in (this) config
    detail: str
    backlog: int
    rate_limit: str
    last_success: float | None
    last_error: str
    last_error_at: float | None
    urls: int  # how many URLs its receiver has


def receiver_rows(config: Config, states: Sequence[ReceiverState], now: float,
                  labels: Mapping[str, Sequence[str]] | None = None,
                  elsewhere: Set[tuple[str, int]] = frozenset()) -> list[ReceiverRow]:
    """Every URL of every configured receiver (and any the store still knows), with its own
    state. `labels`: each receiver's redacted URL labels (`Planner.channels`' labels);
    `elsewhere`: the receiver URLs other live relays send for (`other_relays_places`)."""
    known = {(s.name, s.url_index): s for s in states}
    configured = {(name, i) for name, rc in config.receivers.items() for i in range(len(rc.urls))}
    return [_receiver_row(config, url, known.get(url), now, labels or {}, url in elsewhere)
            for url in sorted(configured | set(known))]


def other_relays_places(states: Sequence[RelayState], me: str, now: float,
                        ) -> frozenset[tuple[str, int]]:
    """The receiver URLs that live relays other than `me` send for."""
    return frozenset(p for s in serving(states, now) if s.owner != me for p in s.places)


def _receiver_row(config: Config, url: tuple[str, int], s: ReceiverState | None, now: float,
                  labels: Mapping[str, Sequence[str]], elsewhere: bool) -> ReceiverRow:
    name, index = url
    rc = config.receivers.get(name)
    limit = rc.rate_limit if rc else None
    rate = f"{limit.count} per {limit.per:g} s" if limit else "none"
    if limit and s and s.tokens is not None:
        rate += f" ({max(0, int(s.tokens))} left)"
    configured = rc is not None and index < len(rc.urls)
    state, detail = _state(config, configured, rc is not None, s, now)
    if not configured and elsewhere:
        state, detail = "not in this config", ("another relay serving from this store has it"
                                               " and sends its jobs (a config change not yet"
                                               " everywhere?)")
    if configured and rc and rc.quiet_hours and state not in ("circuit open", "probing"):
        state, detail = _quiet(rc.quiet_hours, now) or (state, detail)
    mine = labels.get(name, ())
    return ReceiverRow(name, index, mine[index] if index < len(mine) else "", state, detail,
                       s.backlog if s else 0, rate, s.last_sent_at if s else None,
                       scrub(s.last_error) if s else "", s.last_error_at if s else None,
                       len(rc.urls) if rc else 0)


def _quiet(hours: QuietHours, now: float) -> tuple[str, str] | None:
    """("quiet hours", "until 07:00 Europe/Berlin; …") while the receiver's quiet time lasts."""
    end = until_epoch(hours, now)
    if end is None:
        return None
    local = datetime.fromtimestamp(end, hours.zone)
    urgent = f" ({', '.join(sorted(hours.urgent))} notifications still go out)" if hours.urgent else ""
    return "quiet hours", (f"until {local:%a %H:%M} {hours.timezone}: notifications wait for"
                           f" one summary{urgent}")


def _state(config: Config, configured: bool, receiver: bool, s: ReceiverState | None,
           now: float) -> tuple[str, str]:
    if not configured:
        return "not in config", ("this URL was removed from the receiver's urls" if receiver
                                 else "removed from the config") + "; its jobs go dead"
    if s is None:
        return "idle", "nothing sent yet"
    if s.open_until > now:
        return "circuit open", f"paused after {s.failures} failures; probes again in" \
            f" {int(s.open_until - now)} s"
    if s.failures >= config.sending.circuit.failures:
        return "probing", "cooled down: one probe at a time"
    if s.failures:
        return "retrying", f"{s.failures} failure{'s' if s.failures > 1 else ''} in a row"
    return ("sending", f"{s.backlog} waiting") if s.backlog else ("idle", "nothing waiting")


@dataclass(frozen=True)
class RelayRow:
    """A relay serving from the store (a replica), beside this one's config."""

    host: str
    pid: str
    me: bool
    seen_at: float
    urls: int  # receiver URLs its config sends for
    lacks: tuple[str, ...]  # receiver URLs this config has and its does not ("new[0]")
    extra: tuple[str, ...]  # and those its config has that this one does not


def relay_rows(config: Config, states: Sequence[RelayState], me: str, now: float,
               ) -> list[RelayRow]:
    """Each relay heard from lately (`serving`), and where its receiver URLs differ from this relay's config
    (during a rolling config change, or a replica left behind)."""
    mine = {(name, i) for name, rc in config.receivers.items() for i in range(len(rc.urls))}

    def named(places: Set[tuple[str, int]]) -> tuple[str, ...]:
        return tuple(f"{name}[{i}]" for name, i in sorted(places))

    rows = []
    for s in serving(states, now):
        parts = s.owner.rsplit(":", 2)  # new_owner(): host, pid, a token
        host, pid = (parts[0], parts[1]) if len(parts) == 3 else (s.owner, "")
        rows.append(RelayRow(host, pid, s.owner == me, s.seen_at, len(s.places),
                             named(mine - s.places), named(s.places - mine)))
    return rows


# ---------------------------------------------------------------- recent deliveries


@dataclass(frozen=True)
class Count:
    """One pill of a delivery's row: how many, its state's colour, and the words for them."""

    n: int
    state: str  # the css class st-…
    words: str


def counts(d: DeliverySummary) -> tuple[Count, ...]:
    """How a delivery's notifications stand, every job state counted (docs/status-page.md
    says which of the delivery page's words each stands for).

    An event in a digest window waits like a held job; one sent in a digest, or a job
    sent inside quiet hours' summary, went out in that one message."""
    return tuple(c for c in (
        Count(d.sent, "sent", "sent"), Count(d.summarised, "summarised", "in a summary"),
        Count(d.digested, "sent", "in a digest"),
        Count(d.waiting + d.collecting, "pending", "waiting"),
        Count(d.suppressed, "suppressed", "suppressed"), Count(d.dead, "dead", "dead"))
        if c.n)


# ---------------------------------------------------------------- one delivery


@dataclass(frozen=True)
class JobView:
    job: Job
    attempts: tuple[Attempt, ...]
    message_ref: str = ""  # a live job's message (platform channel/message), once posted


@dataclass(frozen=True)
class EventView:
    event: TimelineEvent
    status: str
    verdicts: tuple[Verdict, ...]
    jobs: tuple[JobView, ...]
    routes_recorded: tuple[str, ...]  # the routes its jobs were rendered for, at ingest


@dataclass(frozen=True)
class WatchView:
    """One of the delivery's watch timers: armed (or firing), fired or disarmed."""

    name: str
    state: str
    armed_at: float
    due_at: float
    ended_at: float | None
    late: bool  # the arming event arrived already older than the watch's `after`
    event_id: int  # the event that armed it (its alert's jobs are listed under it)
    armed: bool = True  # False: a stop came (out of order) before any start it is newer than


@dataclass(frozen=True)
class DigestView:
    """One of the delivery's events in a digest window: waiting for it to close, or sent."""

    route: str
    group: str
    receiver: str
    event_id: int
    joined_at: float
    closes_at: float  # the window's due time (while it waits)
    sent_at: float | None


@dataclass(frozen=True)
class HeldView:
    """A notification quiet hours held: waiting for the summary, or summarised."""

    receiver: str
    title: str
    event_id: int
    until: float
    summarised_at: float | None


@dataclass(frozen=True)
class LiveView:
    """One live message of the delivery: where it is and which state it shows."""

    route: str
    receiver: str  # name[url index]
    message: str  # platform channel/message; empty until the first post
    shown: float | None  # the event time of the state it shows
    updated_at: float
    job_ids: tuple[int, ...]  # the live jobs that posted and edited it


@dataclass(frozen=True)
class DeliveryView:
    delivery_id: str
    events: tuple[EventView, ...]
    counts: Mapping[str, int]
    watches: tuple[WatchView, ...] = ()
    digests: tuple[DigestView, ...] = ()
    held: tuple[HeldView, ...] = ()
    live: tuple[LiveView, ...] = ()
    earlier: int = 0  # its older events, not shown (nor what they caused)


def delivery_view(timeline: Timeline, router: Router) -> DeliveryView:
    attempts = timeline.attempts_by_job()
    live = _live(timeline)
    refs = {i: v.message for v in live for i in v.job_ids}
    jobs: dict[int, list[JobView]] = {}
    for j in timeline.jobs:
        jobs.setdefault(j.event_id, []).append(
            JobView(j, tuple(attempts.get(j.id, ())), refs.get(j.id, "")))
    events = tuple(_event_view(e, tuple(jobs.get(e.id, ())), router) for e in timeline.events)
    counts: dict[str, int] = {}
    for j in timeline.jobs:
        counts[j.state] = counts.get(j.state, 0) + 1
    watches = tuple(_watch_view(t) for t in timeline.timers if t.kind == "watch")
    return DeliveryView(timeline.delivery_id, events, counts, watches, _digests(timeline),
                        tuple(HeldView(j.receiver, j.message.title, j.event_id, j.next_attempt_at,
                                       j.finished_at if j.state == "summarised" else None)
                              for j in timeline.jobs if j.state in ("held", "summarised")),
                        live, timeline.earlier)


def _live(timeline: Timeline) -> tuple[LiveView, ...]:
    """The delivery's live messages, each with the route and receiver URL its key names."""
    jobs: dict[str, list[Job]] = {}
    for j in timeline.jobs:
        if j.live:
            jobs.setdefault(rules.live_key(j.delivery_id, j.route, j.receiver, j.url_index),
                            []).append(j)
    out = []
    for ref in timeline.live:
        mine = jobs.get(ref.key, [])
        # Without its jobs (none on this page) the key names it: url_index:receiver:route:id.
        route, receiver = (mine[0].route, f"{mine[0].receiver}[{mine[0].url_index}]") if mine \
            else ("", ref.key)
        out.append(LiveView(route, receiver, _message(ref.ref), ref.shown, ref.updated_at,
                            tuple(j.id for j in mine)))
    return tuple(out)


def _message(text: str | None) -> str:
    return "" if text is None else MessageRef.shown(text)


def _digests(timeline: Timeline) -> tuple[DigestView, ...]:
    timers = {t.id: t for t in timeline.timers if t.kind == "digest"}
    out = []
    for j in timeline.joined:
        t = timers.get(j.timer_id)
        if t is not None:
            out.append(DigestView(str(t.context.get("route", "")), group_in(t).describe(),
                                  f"{t.context.get('receiver', '')}[{t.context.get('url_index', 0)}]",
                                  j.event_id, j.added_at, t.due_at, j.fired_at))
    return tuple(out)


def _watch_view(t: Timer) -> WatchView:
    return WatchView(str(t.context.get("watch", t.key)), t.state, t.armed_at, t.due_at,
                     t.ended_at, bool(t.context.get("late")), t.event_id,
                     not t.context.get("never_armed"))


def _event_view(e: TimelineEvent, jobs: tuple[JobView, ...], router: Router) -> EventView:
    status = e.payload.get("status")
    try:
        event = event_from_dict(e.payload)
        found = tuple(verdicts(router.routes, router.match(event).routes, event))
    except InvalidEvent:  # a relay-internal event (the failing-receiver notice)
        found = ()
    routes = tuple(dict.fromkeys(j.job.route for j in jobs))
    return EventView(e, status if isinstance(status, str) else "", found, jobs, routes)
