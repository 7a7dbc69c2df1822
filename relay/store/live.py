"""The live-message side of both stores: take a message for one send, record its ref, let go.

Mixins, so each store class stays one concept per module; the SQL is shared
(`relay.store.sql`) and the rules (what to do with a message, which state it
shows) are in `relay.store.rules`.
"""

from __future__ import annotations

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


class _Live:
    """The live-message operations, the same in both stores: which statement, with which
    arguments. A store runs them: `_live_row` (the one row a statement answers) and
    `_live_changed` (whether it changed one row)."""

    async def _live_row(self, statement: str, args: tuple[Any, ...]) -> Any:
        raise NotImplementedError

    async def _live_changed(self, statement: str, args: tuple[Any, ...]) -> bool:
        raise NotImplementedError

    async def live_take(self, key: str, delivery_id: str, *, owner: str, now: float,
                        lease: float) -> LiveSlot | None:
        return _slot(await self._live_row(sql.TAKE_LIVE,
                                          (key, delivery_id, owner, now + lease, now, now)))

    async def live_done(self, key: str, *, owner: str, ref: str | None, shown: float | None,
                        now: float) -> bool:
        return await self._live_changed(sql.DONE_LIVE, (ref, shown, now, key, owner))

    async def live_release(self, key: str, *, owner: str) -> None:
        await self._live_changed(sql.RELEASE_LIVE, (key, owner))

    async def live_ref(self, key: str) -> LiveSlot | None:
        return _slot(await self._live_row(sql.LIVE_REF, (key,)))


class SQLiteLive(_Live):
    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        raise NotImplementedError  # the store's writer thread

    async def _live_row(self, statement: str, args: tuple[Any, ...]) -> Any:
        return await self._call(lambda c: c.execute(statement, args).fetchone())

    async def _live_changed(self, statement: str, args: tuple[Any, ...]) -> bool:
        return await self._call(lambda c: c.execute(statement, args).rowcount == 1)


class PostgresLive(_Live):
    async def _tx(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        raise NotImplementedError  # the store's transaction runner

    async def _live_row(self, statement: str, args: tuple[Any, ...]) -> Any:
        return await self._tx(lambda c: c.fetchrow(q(statement), *args))

    async def _live_changed(self, statement: str, args: tuple[Any, ...]) -> bool:
        async def changed(conn: Any) -> bool:
            return bool(await conn.execute(q(statement), *args) == "UPDATE 1")
        return await self._tx(changed)
