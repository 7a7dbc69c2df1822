"""The store's values: job states, attempt outcomes and the records both stores return."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

# Re-exported: the limits the store enforces are the config's own values.
from relay.limits import Circuit as Circuit
from relay.limits import RateLimit as RateLimit
from relay.message import Message

# `held`: waits out a receiver's quiet hours (backlog, no attempts); `summarised`: went out
# inside the quiet-hours summary instead of on its own.
JobState = Literal["pending", "claimed", "sent", "dead", "suppressed", "held", "summarised"]
AttemptOutcome = Literal["sent", "retry", "failed"]
JOB_STATES: tuple[JobState, ...] = get_args(JobState)
ACTIVE_STATES: tuple[JobState, ...] = ("pending", "claimed", "held")  # what counts as backlog
TimerKind = Literal["watch", "digest", "quiet"]
TimerState = Literal["armed", "claimed", "fired", "disarmed"]
TimerAction = Literal["arm", "disarm", "open"]
TIMER_KINDS: tuple[TimerKind, ...] = get_args(TimerKind)
TIMER_STATES: tuple[TimerState, ...] = get_args(TimerState)


@dataclass(frozen=True)
class Notification:
    """What the planner made for one receiver URL, rendered and cut to its channel; `accept`
    persists each as a job (the pipeline plans them, the store keeps them)."""

    receiver: str
    url_index: int
    route: str
    message: Message
    suppress_stale: bool = False
    truncated: bool = False
    live: bool = False  # the route's `live`: one message per delivery, edited where the URL can
    hold: float = 0.0  # the route's `hold`: seconds it waits for a newer one to replace it
    held_until: float | None = None  # quiet hours: stored `held` until then, for the summary


@dataclass(frozen=True)
class TimerOp:
    """One change to a timer that an event implies; `accept` applies it with the event.

    `arm` creates or re-arms (due again, new context), `disarm` ends an armed
    timer, `open` creates one only if none is armed (a later event does not move
    it). Due `delay` seconds after the event's receipt, or at `due_at` if given.
    `collect` (digests): the event joins the timer's items; once `full_at` items
    wait, the timer falls due at once (early close).
    """

    action: TimerAction
    kind: TimerKind
    key: str
    delivery_id: str = ""
    delay: float = 0.0
    due_at: float | None = None
    context: Mapping[str, Any] = field(default_factory=dict)
    collect: bool = False
    full_at: int | None = None


@dataclass(frozen=True)
class TimerChange:
    """An operation `accept` applied (one that found nothing to change is not listed)."""

    action: TimerAction
    kind: TimerKind
    key: str


@dataclass(frozen=True)
class Accepted:
    event_id: int
    duplicate: bool
    jobs: int
    suppressed: str = ""  # why notifications were dropped as stale, if they were
    timers: tuple[TimerChange, ...] = ()


@dataclass(frozen=True)
class Timer:
    """One timer row. `event_id`: the event that armed (or opened) it."""

    id: int
    kind: TimerKind
    key: str
    delivery_id: str
    event_id: int
    due_at: float
    state: TimerState
    armed_at: float
    context: Mapping[str, Any]
    ended_at: float | None = None  # when it fired or was disarmed
    claim_token: str = ""


@dataclass(frozen=True)
class TimerInputs:
    """What a claimed timer fires with: the arming event and the delivery's newest event.

    Either is None only if it is gone from the store (purged, or never there).
    """

    arming: TimelineEvent | None
    last: TimelineEvent | None
    items: tuple[DigestItem, ...] = ()  # a digest's events, in arrival order
    held: tuple[Job, ...] = ()  # a quiet-hours summary's held jobs, oldest first


@dataclass(frozen=True)
class DigestItem:
    """One event in a digest window (`id`: its place in arrival order)."""

    id: int
    event: TimelineEvent


@dataclass(frozen=True)
class Attempt:
    at: float
    outcome: AttemptOutcome
    error: str = ""
    duration: float = 0.0


@dataclass(frozen=True)
class Job:
    id: int
    event_id: int
    receiver: str
    url_index: int
    route: str
    message: Message  # stored as the jobs columns title, body, type, format
    state: JobState
    attempts: int
    created_at: float
    next_attempt_at: float
    last_error: str = ""
    claim_token: str = ""
    delivery_id: str = ""
    event_type: str = ""
    live: bool = False  # its route is live: sent as a post or an edit of the delivery's message
    event_at: float | None = None  # the event's own `timestamp` (what a live message orders by)
    finished_at: float | None = None  # sent, dead, suppressed or summarised at


@dataclass(frozen=True)
class JobDetail:
    job: Job
    event: dict[str, Any]
    history: tuple[Attempt, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class ClaimResult:
    jobs: list[Job]
    wait_until: float | None = None  # when this receiver may have work or capacity again
    paused: bool = False  # its circuit is open


@dataclass(frozen=True)
class Stats:
    backlog: int
    dead: int
    oldest_pending_at: float | None
    held: int = 0  # notifications waiting out quiet hours (part of the backlog)
    open_windows: int = 0  # digest windows collecting events


@dataclass(frozen=True)
class TimelineEvent:
    id: int
    type: str
    received_at: float
    payload: dict[str, Any]


@dataclass(frozen=True)
class JobAttempt:
    """One attempt in a delivery's timeline, with the job it belongs to."""

    job_id: int
    attempt: Attempt


@dataclass(frozen=True)
class Timeline:
    """What one delivery caused: its newest events, their jobs and every attempt, oldest
    first (how many earlier events are left out in `earlier`)."""

    delivery_id: str
    events: tuple[TimelineEvent, ...]
    jobs: tuple[Job, ...]
    attempts: tuple[JobAttempt, ...]
    timers: tuple[Timer, ...] = ()
    live: tuple[LiveRef, ...] = ()  # its live messages
    joined: tuple[DigestJoin, ...] = ()  # the digest windows its events joined
    earlier: int = 0  # its events older than those shown (sql.TIMELINE_SHOWN), left out

    def attempts_by_job(self) -> dict[int, list[Attempt]]:
        """Each job's attempts (by job id), oldest first."""
        out: dict[int, list[Attempt]] = {}
        for a in self.attempts:
            out.setdefault(a.job_id, []).append(a.attempt)
        return out


@dataclass(frozen=True)
class LiveRef:
    """One live message of a delivery, as its timeline shows it.

    `key` is `rules.live_key(job.delivery_id, job.route, job.receiver, job.url_index)`
    of the live jobs that post and edit it.
    """

    key: str
    ref: str | None  # JSON {"platform", "channel", "message"}; None until the first post
    shown: float | None  # the event time of the state it shows
    updated_at: float


@dataclass(frozen=True)
class DigestJoin:
    """One of a delivery's events in a digest (`timers` holds the digest's timer)."""

    timer_id: int
    event_id: int
    added_at: float
    fired_at: float | None  # when the digest it was in went out; None while it waits


@dataclass(frozen=True)
class ReceiverState:
    """A receiver URL (name, url_index) as the store sees it: circuit, bucket, backlog,
    last success and error."""

    name: str
    url_index: int
    failures: int
    open_until: float
    cooldown: float
    tokens: float | None
    tokens_at: float | None
    backlog: int
    last_sent_at: float | None
    last_error: str
    last_error_at: float | None


@dataclass(frozen=True)
class LiveSlot:
    """A live message as the store keeps it, held by the caller until `live_done`/`live_release`."""

    ref: str | None  # the message ref (JSON), None before the first post
    shown: float | None  # the event time the message shows
    held_until: float | None = None  # `live_ref` only: when another sender's hold ends


@dataclass(frozen=True)
class Minute:
    """One minute of traffic: events received, attempts sent and attempts that failed."""

    at: float  # the minute's start, epoch seconds
    events: int = 0
    sent: int = 0
    failed: int = 0  # attempts that gave retry or failed


@dataclass(frozen=True)
class DeliverySummary:
    """One recent delivery: its newest event and how its notifications stand (every job
    state is counted in one of these: `sql_pages.counted_as`)."""

    delivery_id: str
    last_type: str
    last_status: str | None
    last_at: float
    events: int
    sent: int
    waiting: int  # pending, claimed or held (for quiet hours' summary)
    dead: int
    summarised: int = 0  # held, then sent inside quiet hours' summary
    suppressed: int = 0  # dropped: a cancellation, or replaced during a route's hold
    collecting: int = 0  # its events in a digest window still open
    digested: int = 0  # its events sent in a digest
