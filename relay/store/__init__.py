"""The durable store: the `JobQueue` (hot path) and `Ledger` (read side) protocols,
`Store` (both, plus its lifetime), the records, and `open_store(url)`.

The job rules both stores follow are in `relay.store.rules`; the schema and its
migration steps in `relay.store.schema`; the shared SQL in `relay.store.sql`.

Jobs move through these states:

    pending ──claim──▶ claimed ──complete──▶ sent
       ▲                 │ ├──retry_later──▶ pending (next_attempt_at in the future)
       │                 │ └──bury─────────▶ dead ──replay──▶ pending
       └────release──────┘   (a lease that expires is claimable again)
    pending ──(delivery cancelled / stale update / replaced during its hold)──▶ suppressed
    held ──(quiet hours end: the summary timer fires)──▶ summarised
      (a job for a receiver in its quiet hours; counts as backlog, spends no attempts,
       is never replaced by a route's hold)

Timers (watches, digests, quiet hours) are due work of their own: `accept` arms,
opens or disarms them in the event's transaction (`TimerOp`), the worker claims
due ones like jobs (`TimerQueue`), and `fire` inserts the jobs a timer produces
and marks it fired in one transaction, so each timer fires once. Their states
are drawn in `relay.store.rules` (TIMER_FROM).

Every method takes `now` (epoch seconds) from the caller, so tests drive time.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from collections.abc import Callable, Collection, Sequence
from typing import Protocol

from relay.errors import StoreError
from relay.events import Event
from relay.store.live import LiveMessages
from relay.store.records import (
    ACTIVE_STATES,
    JOB_STATES,
    Accepted,
    Attempt,
    AttemptOutcome,
    Circuit,
    ClaimResult,
    DeliverySummary,
    DigestItem,
    DigestJoin,
    Job,
    JobAttempt,
    JobDetail,
    JobState,
    LiveRef,
    LiveSlot,
    Minute,
    Notification,
    RateLimit,
    ReceiverState,
    Stats,
    Timeline,
    TimelineEvent,
    Timer,
    TimerChange,
    TimerInputs,
    TimerOp,
)
from relay.store.relays import Place, RelayState
from relay.store.schema import SCHEMA_VERSION

__all__ = ["ACTIVE_STATES", "JOB_STATES", "SCHEMA_VERSION", "Accepted", "Attempt",
           "AttemptOutcome", "Circuit", "ClaimResult", "DeliverySummary", "DigestItem",
           "DigestJoin", "Job", "JobAttempt", "JobDetail", "JobQueue", "JobState",
           "Ledger", "LiveMessages", "LiveRef", "LiveSlot", "Minute", "Notification",
           "RateLimit", "ReceiverState", "Stats", "Store", "Timeline", "TimelineEvent",
           "Timer", "TimerChange", "TimerInputs", "TimerOp", "TimerQueue", "new_owner",
           "open_store"]


class JobQueue(Protocol):
    """The hot path: ingest accepts, the worker claims and records what each attempt gave."""

    async def accept(self, event: Event, key: str, jobs: Sequence[Notification], *, now: float,
                     timers: Sequence[TimerOp] = ()) -> Accepted:
        """Store the event, its jobs and its timer operations in one transaction.

        A duplicate (its dedup key is known) stores and applies nothing.
        """
    async def claim(self, receiver: str, url_index: int, *, limit: int, now: float,
                    lease: float, owner: str, bucket: RateLimit | None,
                    circuit: Circuit | None) -> ClaimResult:
        """Claim due jobs of one receiver URL (the receiver's URL #url_index), up to `limit`
        and what its own circuit and token bucket admit; its receiver's other URLs are
        claimed for separately and never wait on it. `circuit` None: its circuit is not
        asked (the orphan pass buries jobs without sending them)."""
    async def complete(self, job: Job, attempt: Attempt, *, reached: bool = True) -> None:
        """Mark the job sent. `reached=False`: no request went to the receiver (a live
        update skipped as older than what its message shows), so its circuit stays as it is:
        a skipped probe proves nothing."""
    async def retry_later(self, job: Job, attempt: Attempt, *, at: float, circuit: Circuit,
                          ) -> bool:
        """Count the failure and reschedule the job, in one transaction. True: circuit opened."""
    async def bury(self, job: Job, attempt: Attempt, *, circuit: Circuit | None = None,
                   ) -> bool:
        """Mark the job dead. With `circuit` (the receiver's own fault) the failure counts
        towards its receiver URL's circuit, in the same transaction. True: the circuit
        opened."""
    async def release(self, job: Job, *, at: float | None = None) -> None:
        """Give the job back unattempted (pending again; due at `at` if given)."""
    def backlog_estimate(self) -> int: ...
    async def active_receivers(self) -> set[tuple[str, int]]:
        """The (receiver, url_index) pairs that have active jobs."""
    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on the event loop) whenever jobs may have become claimable."""
    async def announce(self, owner: str, places: Collection[Place], *, now: float,
                       ) -> set[Place]:
        """Record that relay `owner` sends for `places` (its config's receiver URLs), and
        return the places it and every other live relay send for (`relay.store.relays`):
        jobs of other places are orphans. Circuit rows no live relay sends for and no active
        job needs are deleted, in the same transaction."""
    async def withdraw(self, owner: str) -> None:
        """Relay `owner` stops: it sends for nothing any more."""


class TimerQueue(Protocol):
    """Due timers, claimed and fired like jobs: leased, and fired once per arming."""

    def subscribe_timers(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on the event loop) whenever timers were armed or changed here
        (or, on PostgreSQL, another replica may have changed some)."""
    async def claim_timers(self, *, limit: int, now: float, lease: float, owner: str,
                           ) -> list[Timer]:
        """Due timers (and those whose claim's lease expired), oldest due first."""
    async def timer_inputs(self, timer: Timer) -> TimerInputs: ...
    async def fire(self, timer: Timer, jobs: Sequence[Notification], *, now: float,
                   consumed: TimerInputs | None = None) -> int:
        """Insert the timer's jobs and mark it fired, in one transaction; StaleClaim if the
        claim is no longer this one (re-armed, disarmed or taken over after its lease).

        `consumed`: the inputs the jobs were rendered from; exactly those digest items
        and held jobs are marked done, and what arrived since re-opens the timer."""
    async def release_timer(self, timer: Timer, due_at: float | None = None) -> None:
        """Give a claimed timer back unfired, consuming nothing; with `due_at`, due then
        instead (a deferred summary). A stale claim changes nothing."""


class Ledger(Protocol):
    """The read side: what operators, the admin API and a status page look at."""

    async def stats(self) -> Stats: ...
    async def dead(self, receiver: str | None = None, limit: int = 100) -> list[Job]: ...
    async def detail(self, job_id: int) -> JobDetail | None: ...
    async def timeline(self, delivery_id: str) -> Timeline:
        """One delivery's events, jobs, attempts and timers, oldest first."""
    async def relays(self) -> list[RelayState]:
        """The relays that announced what they send for (`JobQueue.announce`) and that the
        orphan pass counts as live (`relays.live_relays`), by owner."""
    async def receivers(self) -> list[ReceiverState]:
        """Each receiver URL's (name, url_index) circuit, tokens, backlog, last success and
        last error, ordered by name and index."""
    async def recent_deliveries(self, limit: int = 50) -> list[DeliverySummary]:
        """The deliveries with the newest events, newest first."""
    async def activity(self, since: float, minutes: int) -> list[Minute]:
        """Events and attempts per minute for `minutes` minutes from `since`, oldest first."""
    async def replay(self, job_ids: Sequence[int] | None, receiver: str | None, now: float,
                     ) -> int: ...
    async def retry_now(self, receiver: str, url_index: int, *, now: float) -> int:
        """Close the receiver URL's circuit and make its jobs waiting out a retry's backoff
        due at `now` (one transaction); how many retries go now, those the open circuit held
        after their backoff included. Never-attempted jobs (holds) keep their wait."""
    async def purge(self, before: float, batch: int = 500) -> int: ...


class Store(JobQueue, TimerQueue, Ledger, LiveMessages, Protocol):
    """A durable store: its interfaces plus its lifetime."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None:
        """Commit a write (the `health` row) or raise StoreError: what readiness proves."""


def new_owner() -> str:
    """A claim owner name: host, pid and a per-process token."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def open_store(url: str, *, busy_timeout: float = 5.0, create: bool = True,
               exclusive: bool = False) -> Store:
    """The store for a config URL: `sqlite:path`, `sqlite:///abs/path`, `postgresql://…`.

    `create=False` opens a store for commands that do not own its schema: one without
    the relay's schema, or with an older one, is refused instead of being created or
    upgraded (the CLI checks a SQLite file exists before it opens one, and can say where
    it looked). `exclusive`: a serving relay, which refuses a SQLite file another relay
    serves from (PostgreSQL takes several).
    """
    if url.startswith("sqlite:"):
        from relay.store.sqlite import SQLiteStore, sqlite_path

        return SQLiteStore(sqlite_path(url), busy_timeout=busy_timeout, create=create,
                           exclusive=exclusive)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from relay.store.postgres import PostgresStore
        except ImportError as e:
            raise StoreError(
                "the PostgreSQL store needs asyncpg: pip install 'kourier-relay[postgres]'"
            ) from e
        return PostgresStore(url, create=create)  # lock waits are the server's business
    scheme, colon, rest = url.partition(":")
    # Not a URL: maybe a password in the wrong key, or `user:pass@host/db` without its scheme
    # (whose user would be shown as the scheme).
    if not (colon and _SCHEME.fullmatch(scheme)) or ("@" in rest and not rest.startswith("//")):
        raise StoreError("expected sqlite:PATH or postgresql://…, got no URL")
    raise StoreError(f"unsupported store URL scheme in {scheme!r}: use sqlite: or postgresql://")


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,19}")
