"""What the `route` dry run may read of a store: read-only, and never creating one.

A SQLite file is opened read-only (a missing file stays missing: nothing is
stored yet); PostgreSQL is asked in read-only transactions. A store that is
not reachable or older than the tables it reads is reported as such, never as an
error.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from relay.errors import StoreError
from relay.store import sql, sql_noise
from relay.store.records import LiveSlot, TimerKind, TimerState

T = TypeVar("T")
Ask = tuple[str, tuple[Any, ...]]  # a live key, and WAITING's parameters (delivery, route, …)


@dataclass(frozen=True)
class Peek:
    """One live message as the store has it, and the pending jobs a hold would replace."""

    live: LiveSlot | None
    waiting: tuple[int, ...] = ()


@dataclass(frozen=True)
class SeenTimer:
    """A timer's state, and the Kourier time of the event that last armed or disarmed it
    (a watch's order: `rules.watch_in_order`; None when it keeps none)."""

    state: TimerState
    event_at: float | None
    never_armed: bool = False  # only stops have ordered it


def peek(url: str, asks: Sequence[Ask]) -> tuple[list[Peek] | None, str]:
    """The store's answer to each ask, or None and why it could not be read."""
    def live(conn: sqlite3.Connection) -> list[Peek]:
        return [Peek(_slot(conn.execute(sql.LIVE_REF, (key,)).fetchone()),
                     tuple(r[0] for r in conn.execute(sql.WAITING, waiting)))
                for key, waiting in asks]

    async def live_pg(conn: Any) -> list[Peek]:
        return [Peek(_slot(await conn.fetchrow(sql.numbered(sql.LIVE_REF), key)),
                     tuple(r[0] for r in await conn.fetch(sql.numbered(sql.WAITING), *waiting)))
                for key, waiting in asks]

    return _read(url, [Peek(None) for _ in asks], live, live_pg)


def timers(url: str, keys: Sequence[tuple[TimerKind, str]],
           ) -> tuple[list[SeenTimer | None] | None, str]:
    """Each (kind, key)'s timer as the store has it (None: no timer yet), or None and why
    the store could not be read."""
    def seen(conn: sqlite3.Connection) -> list[SeenTimer | None]:
        return [_seen(conn.execute(sql_noise.TIMER_STATE, key).fetchone()) for key in keys]

    async def seen_pg(conn: Any) -> list[SeenTimer | None]:
        return [_seen(await conn.fetchrow(sql.numbered(sql_noise.TIMER_STATE), *key))
                for key in keys]

    return _read(url, [None for _ in keys], seen, seen_pg)


def _read(url: str, empty: T, on_sqlite: Callable[[sqlite3.Connection], T],
          on_postgres: Callable[[Any], Awaitable[T]]) -> tuple[T | None, str]:
    """What a read-only look gives (`empty` when no store file exists yet), or None and why."""
    try:
        if url.startswith("sqlite:"):
            return _sqlite(url, empty, on_sqlite), ""
        if url.startswith(("postgresql://", "postgres://")):
            return _run(_postgres(url, on_postgres)), ""
    except StoreError as e:
        return None, str(e)
    return None, "not a store this relay has"


def _run(work: Coroutine[Any, Any, T]) -> T:
    """Run `work` to its end, also when called from a running event loop (the status
    page's rule tester calls the dry run there): then on a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(work)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="peek") as pool:
        return pool.submit(asyncio.run, work).result()


def _sqlite(url: str, empty: T, read: Callable[[sqlite3.Connection], T]) -> T:
    from relay.store.sqlite import sqlite_path

    path = Path(sqlite_path(url))
    if not path.exists():  # no relay ran here yet: nothing is stored
        return empty
    # A running relay's WAL is read as well; with none (a relay at rest has checkpointed it)
    # the file is read as immutable, so that not even a -wal or -shm file is made.
    wal = Path(f"{path}-wal").exists()
    mode = "mode=ro" if wal else "immutable=1"
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?{mode}", uri=True)) as conn:
            return read(conn)
    except sqlite3.Error as e:  # locked, unreadable, or a schema before these tables
        raise StoreError(f"{path} cannot be read: {e}") from None


async def _postgres(url: str, read: Callable[[Any], Awaitable[T]]) -> T:
    import asyncpg

    from relay.store.pg_support import CONNECT_ERRORS, ERRORS, describe, redact

    try:
        conn = await asyncpg.connect(url, timeout=3, command_timeout=3, server_settings={
            "default_transaction_read_only": "on", "application_name": "kourier-relay route"})
    except CONNECT_ERRORS as e:
        raise StoreError(f"cannot reach {redact(url)}: {describe(e)}") from None
    try:
        return await read(conn)
    except ERRORS as e:
        raise StoreError(f"{redact(url)} cannot be read: {describe(e)}") from None
    finally:
        await conn.close()


def _slot(row: Any) -> LiveSlot | None:
    return None if row is None else LiveSlot(row[0], row[1])


def _seen(row: Any) -> SeenTimer | None:
    if row is None:
        return None
    never = bool(json.loads(row[0] or "{}").get("never_armed")) and row[1] == "disarmed"
    return SeenTimer(row[1], sql_noise.seen_at(row), never)
