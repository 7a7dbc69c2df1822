"""The PostgreSQL store's read side (what `check`, the admin API and the status page read)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from relay.store import rules, sql, sql_pages
from relay.store.records import (
    Attempt,
    DeliverySummary,
    Job,
    JobDetail,
    Minute,
    ReceiverState,
    Stats,
    Timeline,
)
from relay.store.relays import RelayState, live_relays, relay_states
from relay.store.rows import JOB_COLUMNS, from_row, job_from_row
from relay.store.sql import numbered as q


class PostgresLedger:
    """The Ledger reads of PostgresStore (which provides the transaction)."""

    _backlog: rules.Backlog
    _tx: Callable[..., Awaitable[Any]]

    async def stats(self) -> Stats:
        return await self._tx(self._stats)

    async def _stats(self, conn: Any) -> Stats:
        self._backlog.counted(await conn.fetchval(sql.BACKLOG))
        return Stats(self._backlog.value, *[await conn.fetchval(query) for query in (
            sql.DEAD_COUNT, sql.OLDEST, sql.HELD_COUNT, sql.OPEN_WINDOWS)])

    async def dead(self, receiver: str | None = None, limit: int = 100) -> list[Job]:
        rows = await self._tx(lambda conn: conn.fetch(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'dead'"
            " AND ($1::text IS NULL OR receiver = $1) ORDER BY id LIMIT $2", receiver, limit))
        return [job_from_row(r) for r in rows]

    async def detail(self, job_id: int) -> JobDetail | None:
        return await self._tx(self._detail, job_id)

    @staticmethod
    async def _detail(conn: Any, job_id: int) -> JobDetail | None:
        row = await conn.fetchrow(q(sql.JOB), job_id)
        if row is None:
            return None
        job = job_from_row(row)
        payload = await conn.fetchval(q(sql.PAYLOAD), job.event_id)
        history = await conn.fetch(q(sql.HISTORY), job_id)
        return JobDetail(job, json.loads(payload), tuple(from_row(Attempt, h) for h in history))

    async def timeline(self, delivery_id: str) -> Timeline:
        async def timeline(conn: Any) -> Timeline:
            return sql.timeline(delivery_id, *[
                await conn.fetch(q(query), *[delivery_id] * n)
                for query, n in zip(sql.TIMELINE_QUERIES, sql.TIMELINE_PARAMS, strict=True)])

        return await self._tx(timeline)

    async def relays(self) -> list[RelayState]:
        rows = await self._tx(lambda conn: conn.fetch(sql.RELAYS))
        return live_relays(relay_states(rows), one_process=False)

    async def receivers(self) -> list[ReceiverState]:
        rows = await self._tx(lambda conn: conn.fetch(sql.RECEIVER_STATES))
        return [from_row(ReceiverState, r) for r in rows]

    async def recent_deliveries(self, limit: int = 50) -> list[DeliverySummary]:
        rows = await self._tx(lambda conn: conn.fetch(q(sql_pages.RECENT_DELIVERIES),
                                                      limit * sql_pages.RECENT_WINDOW, limit))
        return sql_pages.recent(rows)

    async def activity(self, since: float, minutes: int) -> list[Minute]:
        async def activity(conn: Any) -> list[Minute]:
            return sql_pages.minutes(since, minutes, *[
                await conn.fetch(q(query), since, since)
                for query in sql_pages.per_minute("postgres")])

        return await self._tx(activity)
