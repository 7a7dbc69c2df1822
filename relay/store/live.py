"""The live-message side of both stores: take a message for one send, record its ref, let go.

Mixins, so each store class stays one concept per module; the SQL is shared
(`relay.store.sql`) and the rules (what to do with a message, which state it
shows) are in `relay.store.rules`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from relay.store import sql
from relay.store.records import LiveSlot
from relay.store.sql import numbered as q

T = TypeVar("T")


class LiveMessages(Protocol):
    """Live message refs, one sender at a time per message (a lease, like a job's claim)."""

    async def live_take(self, key: str, delivery_id: str, *, owner: str, now: float,
                        lease: float) -> LiveSlot | None:
        """Hold the message for one send; None while another sender holds it."""
    async def live_done(self, key: str, *, owner: str, ref: str | None, shown: float | None,
                        now: float) -> bool:
        """Record the ref and shown state and let go; False when the hold was lost."""
    async def live_release(self, key: str, *, owner: str) -> None: ...
    async def live_ref(self, key: str) -> LiveSlot | None:
        """What the message shows now (for the dry run), without holding it."""


def _slot(row: Any) -> LiveSlot | None:
    if row is None:
        return None
    # TAKE_LIVE answers (ref, shown); LIVE_REF (ref, shown, held_until)
    return LiveSlot(row[0], row[1], row[2] if len(row) > 2 else None)


class SQLiteLive:
    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        raise NotImplementedError  # the store's writer thread

    async def live_take(self, key: str, delivery_id: str, *, owner: str, now: float,
                        lease: float) -> LiveSlot | None:
        args = (key, delivery_id, owner, now + lease, now, now)
        return await self._call(lambda c: _slot(c.execute(sql.TAKE_LIVE, args).fetchone()))

    async def live_done(self, key: str, *, owner: str, ref: str | None, shown: float | None,
                        now: float) -> bool:
        args = (ref, shown, now, key, owner)
        return await self._call(lambda c: c.execute(sql.DONE_LIVE, args).rowcount == 1)

    async def live_release(self, key: str, *, owner: str) -> None:
        await self._call(lambda c: c.execute(sql.RELEASE_LIVE, (key, owner)) and None)

    async def live_ref(self, key: str) -> LiveSlot | None:
        def read(conn: sqlite3.Connection) -> LiveSlot | None:
            return _slot(conn.execute(sql.LIVE_REF, (key,)).fetchone())
        return await self._call(read)


class PostgresLive:
    async def _tx(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        raise NotImplementedError  # the store's transaction runner

    async def live_take(self, key: str, delivery_id: str, *, owner: str, now: float,
                        lease: float) -> LiveSlot | None:
        args = (key, delivery_id, owner, now + lease, now, now)
        return await self._tx(lambda c: _fetch_slot(c, sql.TAKE_LIVE, *args))

    async def live_done(self, key: str, *, owner: str, ref: str | None, shown: float | None,
                        now: float) -> bool:
        async def done(conn: Any) -> bool:
            status = await conn.execute(q(sql.DONE_LIVE), ref, shown, now, key, owner)
            return bool(status == "UPDATE 1")
        return await self._tx(done)

    async def live_release(self, key: str, *, owner: str) -> None:
        await self._tx(lambda c: c.execute(q(sql.RELEASE_LIVE), key, owner))

    async def live_ref(self, key: str) -> LiveSlot | None:
        return await self._tx(lambda c: _fetch_slot(c, sql.LIVE_REF, key))


async def _fetch_slot(conn: Any, statement: str, *args: Any) -> LiveSlot | None:
    return _slot(await conn.fetchrow(q(statement), *args))
