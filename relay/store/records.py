"""The store's values: job states, attempt outcomes and the records both stores return."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args

JobState = Literal["pending", "claimed", "sent", "dead", "suppressed"]
AttemptOutcome = Literal["sent", "retry", "failed"]
JOB_STATES: tuple[JobState, ...] = get_args(JobState)
ACTIVE_STATES: tuple[JobState, ...] = ("pending", "claimed")  # what counts as backlog


class JobSpec(Protocol):
    """What `accept` persists per notification (the pipeline's Notification fits)."""

    @property
    def receiver(self) -> str: ...
    @property
    def url_index(self) -> int: ...
    @property
    def route(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def body(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def format(self) -> str: ...
    @property
    def suppress_stale(self) -> bool: ...


@dataclass(frozen=True)
class Accepted:
    event_id: int
    duplicate: bool
    jobs: int
    suppressed: str = ""  # why notifications were dropped as stale, if they were


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
    title: str
    body: str
    type: str
    format: str
    state: JobState
    attempts: int
    created_at: float
    next_attempt_at: float
    last_error: str = ""
    claim_token: str = ""
    delivery_id: str = ""
    event_type: str = ""


@dataclass(frozen=True)
class JobDetail:
    job: Job
    event: dict[str, Any]
    history: tuple[Attempt, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Circuit:
    failures: int = 5
    cooldown: float = 60.0
    max_cooldown: float = 600.0


@dataclass(frozen=True)
class Bucket:
    """A token bucket: `count` sends per `per` seconds, bursting to `count`."""

    count: int
    per: float


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
    """Everything one delivery caused: its events, their jobs and every attempt, oldest first."""

    delivery_id: str
    events: tuple[TimelineEvent, ...]
    jobs: tuple[Job, ...]
    attempts: tuple[JobAttempt, ...]


@dataclass(frozen=True)
class ReceiverState:
    """A receiver as the store sees it: circuit, bucket, backlog, last success and error."""

    name: str
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


@dataclass(frozen=True)
class Minute:
    """One minute of traffic: events received, attempts sent and attempts that failed."""

    at: float  # the minute's start, epoch seconds
    events: int = 0
    sent: int = 0
    failed: int = 0  # attempts that gave retry or failed


@dataclass(frozen=True)
class DeliverySummary:
    """One recent delivery: its newest event and how its notifications stand."""

    delivery_id: str
    last_type: str
    last_status: str | None
    last_at: float
    events: int
    sent: int
    waiting: int  # pending or claimed
    dead: int
