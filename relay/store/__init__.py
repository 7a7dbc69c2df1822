"""The durable store: the `Store` protocol, its records, and `open_store(url)`.

Jobs move through these states:

    pending ──claim──▶ claimed ──complete──▶ sent
       ▲                 │ ├──retry_later──▶ pending (next_attempt_at in the future)
       │                 │ └──bury─────────▶ dead ──replay──▶ pending
       └────release──────┘   (a lease that expires is claimable again)
    pending ──(delivery cancelled / stale update)──▶ suppressed

Every method takes `now` (epoch seconds) from the caller, so tests drive time.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from relay.errors import StoreError
from relay.events import Event

SCHEMA_VERSION = 1
ACTIVE_STATES = ("pending", "claimed")


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
    outcome: str  # sent | retry | failed | timeout | released
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
    state: str
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


class Store(Protocol):
    """What the worker, the web handler and the CLI need from a durable store."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...
    async def accept(self, event: Event, key: str, jobs: Sequence[JobSpec], now: float,
                     ) -> Accepted: ...
    async def claim(self, receiver: str, limit: int, now: float, lease: float, owner: str,
                    bucket: Bucket | None, circuit: Circuit) -> ClaimResult: ...
    async def complete(self, job: Job, attempt: Attempt) -> None: ...
    async def retry_later(self, job: Job, at: float, attempt: Attempt, circuit: Circuit,
                          ) -> bool: ...
    async def bury(self, job: Job, attempt: Attempt) -> None: ...
    async def release(self, job: Job) -> None: ...
    async def active_receivers(self) -> set[str]: ...
    async def stats(self) -> Stats: ...
    def backlog_estimate(self) -> int: ...
    async def dead(self, receiver: str | None = None, limit: int = 100) -> list[Job]: ...
    async def detail(self, job_id: int) -> JobDetail | None: ...
    async def replay(self, job_ids: Sequence[int] | None, receiver: str | None, now: float,
                     ) -> int: ...
    async def purge(self, before: float, batch: int = 500) -> int: ...


def new_owner() -> str:
    """A claim owner name: host, pid and a per-process token."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def open_store(url: str, **options: Any) -> Store:
    """The store for a config URL: `sqlite:path`, `sqlite:///abs/path`, `postgresql://…`."""
    if url.startswith("sqlite:"):
        from relay.store.sqlite import SQLiteStore, sqlite_path

        return SQLiteStore(sqlite_path(url), **options)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from relay.store.postgres import PostgresStore
        except ImportError as e:
            raise StoreError(
                "the PostgreSQL store needs asyncpg: pip install 'kourier-relay[postgres]'"
            ) from e
        return PostgresStore(url)  # lock waits are the server's business
    raise StoreError(f"unsupported store URL scheme in {url.split(':', 1)[0]!r}:"
                     " use sqlite: or postgresql://")
