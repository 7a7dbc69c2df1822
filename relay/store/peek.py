"""What the `route` dry run may read of a store: read-only, and never creating one.

A SQLite file is opened read-only (a missing file stays missing: nothing is
stored yet); PostgreSQL is asked in read-only transactions. A store that is
not reachable or older than the live tables is reported as such, never as an
error.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from relay.errors import StoreError
from relay.store import sql
from relay.store.records import LiveSlot

T = TypeVar("T")
Ask = tuple[str, tuple[Any, ...]]  # a live key, and WAITING's parameters (delivery, route, …)


@dataclass(frozen=True)
class Peek:
    """One live message as the store has it, and the pending jobs a hold would replace."""

    live: LiveSlot | None
    waiting: tuple[int, ...] = ()


def peek(url: str, asks: Sequence[Ask]) -> tuple[list[Peek] | None, str]:
    """The store's answer to each ask, or None and why it could not be read."""
    try:
        if url.startswith("sqlite:"):
            return _sqlite(url, asks), ""
        if url.startswith(("postgresql://", "postgres://")):
            return _run(_postgres(url, asks)), ""
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


def _sqlite(url: str, asks: Sequence[Ask]) -> list[Peek]:
    from relay.store.sqlite import sqlite_path

    path = Path(sqlite_path(url))
    if not path.exists():  # no relay ran here yet: nothing is stored
        return [Peek(None) for _ in asks]
    # A running relay's WAL is read as well; with none (a relay at rest has checkpointed it)
    # the file is read as immutable, so that not even a -wal or -shm file is made.
    wal = Path(f"{path}-wal").exists()
    mode = "mode=ro" if wal else "immutable=1"
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?{mode}", uri=True)) as conn:
            return [Peek(_slot(conn.execute(sql.LIVE_REF, (key,)).fetchone()),
                         tuple(r[0] for r in conn.execute(sql.WAITING, waiting)))
                    for key, waiting in asks]
    except sqlite3.Error as e:  # locked, unreadable, or a schema before live messages
        raise StoreError(f"{path} cannot be read: {e}") from None


async def _postgres(url: str, asks: Sequence[Ask]) -> list[Peek]:
    import asyncpg

    from relay.store.pg_support import CONNECT_ERRORS, ERRORS, describe, redact

    try:
        conn = await asyncpg.connect(url, timeout=3, command_timeout=3, server_settings={
            "default_transaction_read_only": "on", "application_name": "kourier-relay route"})
    except CONNECT_ERRORS as e:
        raise StoreError(f"cannot reach {redact(url)}: {describe(e)}") from None
    try:
        return [Peek(_slot(await conn.fetchrow(sql.numbered(sql.LIVE_REF), key)),
                     tuple(r[0] for r in await conn.fetch(sql.numbered(sql.WAITING), *waiting)))
                for key, waiting in asks]
    except ERRORS as e:
        raise StoreError(f"{redact(url)} cannot be read: {describe(e)}") from None
    finally:
        await conn.close()


def _slot(row: Any) -> LiveSlot | None:
    return None if row is None else LiveSlot(row[0], row[1])
