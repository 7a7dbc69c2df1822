"""The job rules, once for every store: pure functions over plain values.

A store reads rows, asks these functions what to do, and writes what they
say. Nothing here touches a database, and every rule takes `now` from the
caller (only the backlog estimate's age is measured on the monotonic clock).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from relay.store.records import (
    Circuit,
    JobState,
    Notification,
    RateLimit,
    Timer,
    TimerAction,
    TimerKind,
    TimerOp,
    TimerState,
)

CANCELLED = "delivery.cancelled"
UPDATED = "delivery.updated"
CANCELLED_REASON = "delivery was cancelled"
# A success closes the circuit to these values (failures, open_until, cooldown). A row
# whose failures and open_until already hold them is not written, so a success on a
# healthy receiver neither waits on nor fails with its row; the cooldown only counts
# once failures reach the threshold, and the first trip starts from circuit.cooldown.
CLOSED = (0, 0.0, 0.0)


@dataclass(frozen=True)
class ReceiverRow:
    """A receiver URL's circuit and token bucket as the store keeps them."""

    failures: int = 0
    open_until: float = 0.0
    cooldown: float = 0.0
    tokens: float | None = None
    tokens_at: float | None = None


@dataclass(frozen=True)
class Admission:
    """What a claim may take now: `limit` jobs (0: none), and when to look again if none."""

    limit: int
    wait_until: float | None = None
    paused: bool = False  # the circuit is open
    tokens: float | None = None  # the bucket's level after refilling; None: no bucket


@dataclass(frozen=True)
class Trip:
    """The circuit after a failure that reached the threshold."""

    open_until: float
    cooldown: float
    opened: bool  # it was closed before this failure: tell the operator


def needs_probe_check(row: ReceiverRow, now: float, circuit: Circuit | None) -> bool:
    """Half-open (cooled down after tripping): the store must say whether a probe is out."""
    return circuit is not None and row.open_until <= now and row.failures >= circuit.failures


def admit(row: ReceiverRow, *, limit: int, now: float, bucket: RateLimit | None,
          circuit: Circuit | None, probing: bool = False) -> Admission:
    """How many jobs a claim may take: circuit first, then the half-open probe, then tokens.
    No circuit: jobs that go dead without a send (the orphan pass) wait for none."""
    if circuit is None:
        return Admission(limit)
    if row.open_until > now:
        return Admission(0, row.open_until, paused=True)
    if row.failures >= circuit.failures:  # half-open: one probe at a time
        if probing:
            return Admission(0)
        limit = 1
    if bucket is None:
        return Admission(limit)
    tokens = refill(row.tokens, row.tokens_at, bucket, now)
    if tokens < 1:
        return Admission(0, next_token_at(tokens, bucket, now), tokens=tokens)
    return Admission(min(limit, int(tokens)), tokens=tokens)


def refill(tokens: float | None, last: float | None, bucket: RateLimit, now: float) -> float:
    """The tokens available now, topped up for the time passed since `last`."""
    if tokens is None or last is None:
        return float(bucket.count)
    return min(float(bucket.count), tokens + max(0.0, now - last) * bucket.count / bucket.per)


def next_token_at(tokens: float, bucket: RateLimit, now: float) -> float:
    """When the bucket holds one whole token again."""
    return now + (1 - tokens) * bucket.per / bucket.count


def wants_next_due(admission: Admission, taken: int) -> bool:
    """A claim that took less than it could says when the receiver next has work."""
    return taken < admission.limit


def trip(failures: int, cooldown: float, now: float, circuit: Circuit) -> Trip | None:
    """After counting a failure (`failures` includes it): the circuit to set, if it opens.

    The first trip cools down for `circuit.cooldown`; each failed probe after it
    doubles the cooldown up to `circuit.max_cooldown`.
    """
    if failures < circuit.failures:
        return None
    if failures > circuit.failures:
        cooldown = min(max(cooldown * 2, circuit.cooldown), circuit.max_cooldown)
    else:
        cooldown = circuit.cooldown
    return Trip(now + cooldown, cooldown, opened=failures == circuit.failures)


def finished_at(state: JobState, at: float) -> float | None:
    """A job that leaves the queue records when; a retry is not finished."""
    return None if state == "pending" else at


def stale_reason(event_type: str, ts: float, newest: float | None, cancelled: bool) -> str:
    """Why an update's notifications that ask for it are suppressed; "" to send them."""
    if event_type != UPDATED:
        return ""
    if cancelled:
        return "delivery was already cancelled"
    if newest is not None and ts < newest:
        return "an update with a newer timestamp was already received"
    return ""


def delivery_after(event_type: str, ts: float, newest: float | None, cancelled: bool,
                   ) -> tuple[float, bool]:
    """The delivery's ordering state after this event: newest timestamp, cancelled."""
    return max(ts, newest if newest is not None else ts), cancelled or event_type == CANCELLED


def last_event_after(ts: float, newest: float | None, event_id: int, last: int | None) -> int:
    """The delivery's newest event after this one: by Kourier's timestamp, ties to the later."""
    return event_id if newest is None or last is None or ts >= newest else last


def cancels(event_type: str) -> bool:
    """A cancellation suppresses the delivery's pending updates that ask for it."""
    return event_type == CANCELLED


# ---------------------------------------------------------------- timers
#
#   (none) ──arm/open──▶ armed ──claim──▶ claimed ──fire──▶ fired ──arm/open──▶ armed
#                          ▲ └──disarm──▶ disarmed ◀──disarm──┘   (a lease that expires
#                          └──────────── arm (re-arm) ◀───────────  is claimable again)
#
# The states each operation changes a timer from ("new": no row for the key). A
# re-arm of a claimed timer takes it back from the worker firing it: the fire then
# finds the claim gone and produces nothing, and the new arming fires later.
TIMER_FROM: dict[TimerAction, tuple[TimerState | str, ...]] = {
    "arm": ("new", "armed", "claimed", "fired", "disarmed"),
    "open": ("new", "fired", "disarmed"),
    "disarm": ("armed", "claimed"),
}
TIMER_TO: dict[TimerAction, TimerState] = {"arm": "armed", "open": "armed", "disarm": "disarmed"}
TIMER_LIVE: tuple[TimerState, ...] = ("armed", "claimed")  # keeps its arming event from purge
TIMER_ENDED: tuple[TimerState, ...] = ("fired", "disarmed")  # purged with the retention


def timer_after(action: TimerAction, state: TimerState | None) -> TimerState | None:
    """The timer's state after `action`, or None when the action changes nothing."""
    return TIMER_TO[action] if (state or "new") in TIMER_FROM[action] else None


def watch_in_order(op: TimerOp, stored_at: float | None) -> bool:
    """A watch follows its delivery by Kourier's timestamps (`event_at` in the op's context):
    a start arms or re-arms only when newer than the event that last armed or disarmed the
    timer, so a start that arrives after a newer stop (out of order) arms nothing; a stop
    always disarms. An op without `event_at`, or a timer without one, is not ordered."""
    at = op.context.get("event_at")
    return op.action != "arm" or at is None or stored_at is None or float(at) > stored_at


def timer_due(op: TimerOp, now: float) -> float:
    """When an armed or opened timer falls due: its own time, or `delay` after receipt."""
    return op.due_at if op.due_at is not None else now + op.delay


def accepted_timer_ops(ops: Sequence[TimerOp], jobs: Sequence[Notification]) -> list[TimerOp]:
    """What an accepted event does to timers: its operations and its held jobs' summary
    timers, one per timer (none, and cheaply, for most events)."""
    held = summary_ops(jobs) if jobs else []
    return ordered_ops([*ops, *held]) if ops or held else []


def ordered_ops(ops: Sequence[TimerOp]) -> list[TimerOp]:
    """One operation per timer: the last one named for a (kind, key) wins."""
    return list({(op.kind, op.key): op for op in ops}.values())


# ---------------------------------------------------------------- digests and quiet hours
#
# A digest timer collects events (`digest_items`); a quiet timer stands for the jobs its
# receiver URL holds (state `held`). Firing consumes exactly what was rendered; whatever
# arrived meanwhile re-opens the timer at once, so nothing waits without a timer.
BATCH_CEILING = 1000  # items one digest or summary renders (the rest re-open it at once)


def summary_key(receiver: str, url_index: int) -> str:
    """The quiet-hours summary timer of one receiver URL."""
    return f"{url_index}:{receiver}"


def summary_ops(jobs: Iterable[Notification]) -> list[TimerOp]:
    """Every held job has its receiver URL's summary timer, due when its quiet time ends."""
    until: dict[tuple[str, int], float] = {}
    for j in jobs:
        if j.held_until is not None:
            key = (j.receiver, j.url_index)
            until[key] = min(until.get(key, j.held_until), j.held_until)
    return [TimerOp("open", "quiet", summary_key(r, i), due_at=at,
                    context={"receiver": r, "url_index": i}) for (r, i), at in until.items()]


def closes_early(waiting: int, full_at: int | None) -> bool:
    """A digest window with this many events waiting closes now."""
    return waiting >= min(full_at or BATCH_CEILING, BATCH_CEILING)


def batch_size(timer: Timer) -> int:
    """How many waiting items one firing renders: a full window's worth; the rest
    (events that arrived after it filled, before it fired) open the next window."""
    full_at = timer.context.get("full_at") if timer.kind == "digest" else None
    return min(int(full_at or BATCH_CEILING), BATCH_CEILING)


def reopen_due(kind: TimerKind, context: Mapping[str, Any], first_at: float, waiting: int,
               now: float) -> float:
    """When a fired timer with work left falls due again.

    A digest: a new window from its oldest waiting event's arrival (at once when
    that many already close it); a summary: when its oldest held job's quiet ends.
    """
    if kind == "digest":
        if closes_early(waiting, context.get("full_at")):
            return now
        return first_at + float(context.get("window", 0))
    return first_at


class Backlog:
    """The estimate of pending + claimed jobs that ingest checks against `max_backlog`.

    Kept from what this process writes and corrected by a count now and then
    (`counted`), so ingest never runs a `count(*)` per request.
    """

    def __init__(self, ttl: float = 1.0) -> None:
        self.value = 0
        self.ttl = ttl
        self._at = 0.0

    def counted(self, value: int) -> None:
        self.value = value
        self._at = time.monotonic()

    def add(self, n: int) -> None:
        self.value += n

    def left(self, state: JobState) -> None:
        """A job finished as `state`: only a retry stays in the backlog."""
        if state not in ("pending", "claimed"):
            self.value -= 1

    @property
    def stale(self) -> bool:
        return time.monotonic() - self._at > self.ttl


class Wakeups:
    """`subscribe`, `subscribe_timers`, `_wake` and `_queued`, the same in both stores:
    subscribers (the worker) are called when jobs are new or replayed, timer subscribers
    when timers were armed or changed (or, on PostgreSQL, when another replica says
    something may have). The store sets `_subscribers` and `_timer_subscribers` to lists
    and `_backlog` to its `Backlog`."""

    _subscribers: list[Callable[[], None]]
    _timer_subscribers: list[Callable[[], None]]
    _backlog: Backlog

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._subscribers.append(callback)

    def subscribe_timers(self, callback: Callable[[], None]) -> None:
        self._timer_subscribers.append(callback)

    def _wake(self, timers: bool = False) -> None:
        for callback in [*self._subscribers, *(self._timer_subscribers if timers else ())]:
            callback()

    def _queued(self, change: int, new: int) -> int:
        """After a commit that queued `new` jobs (fired or replayed) and changed the backlog
        by `change`: count them, wake the worker if there are any; `new`."""
        self._backlog.add(change)
        if new:
            self._wake()
        return new


LiveAction = Literal["post", "edit", "skip"]


def live_key(delivery_id: str, route: str, receiver: str, url_index: int) -> str:
    """The live message of one delivery, route and receiver URL."""
    return f"{url_index}:{receiver}:{route}:{delivery_id}"


def live_action(ref: str | None, shown: float | None, ts: float) -> LiveAction:
    """Post the first message, edit it to a newer state, never back to an older one."""
    if ref is None:
        return "post"
    if shown is not None and ts < shown:
        return "skip"
    return "edit"


def held_wait(held_until: float | None, now: float, lease: float, busy: float,
              moment: float = 1.0) -> float:
    """How long a job waits for a live message that another sender holds.

    A moment while that sender may still be at work (its hold, taken with `lease`, is
    younger than `busy`); after that it is probably gone, so until its lease ends
    rather than a claim (and a rate-limit token) every moment.
    """
    if held_until is None or now - (held_until - lease) <= busy:
        return moment
    return max(moment, held_until - now)


def shown_after(shown: float | None, ts: float) -> float:
    """The event time a live message shows after showing `ts` (never older than before)."""
    return ts if shown is None else max(shown, ts)


@dataclass(frozen=True)
class Waiting:
    """A pending job of the same delivery, route and receiver URL as a new held notification."""

    id: int
    event_at: float | None  # None: queued before the relay kept event times
    due: float


@dataclass(frozen=True)
class Coalesced:
    """What a held notification does: wait until `due`, replacing `replaces`, or step aside.

    `replaced_by` is a waiting job of a newer event: then the new one is not sent.
    """

    due: float
    replaces: tuple[int, ...] = ()
    replaced_by: int | None = None


def coalesce(ts: float, now: float, hold: float, waiting: Sequence[Waiting]) -> Coalesced:
    """A notification held for `hold` seconds replaces what waits for the same message.

    The hold starts with the first notification it replaces and is never extended by a
    newer one, so a delivery that keeps moving still gets a message every `hold`. An
    update older than one already waiting (out of order) is itself replaced.
    """
    if hold <= 0:
        return Coalesced(now)
    newer = [w for w in waiting if w.event_at is not None and w.event_at > ts]
    if newer:
        return Coalesced(now, replaced_by=max(newer, key=lambda w: (w.event_at, w.id)).id)
    return Coalesced(min([now + hold, *(w.due for w in waiting)]), tuple(w.id for w in waiting))


def replaced_reason(event_id: int) -> str:
    """Why a waiting job was replaced (its state becomes `suppressed`)."""
    return f"replaced during its hold by the notification of event {event_id}"


def outdated_reason(job_id: int) -> str:
    return f"a notification of a newer event (job {job_id}) was already waiting"
