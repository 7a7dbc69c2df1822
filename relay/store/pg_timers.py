"""The PostgreSQL store's timers: applied in the accept transaction, claimed with
`FOR UPDATE SKIP LOCKED`, fired under the claim token (so once across replicas)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from relay.errors import StaleClaim
from relay.store import rules, sql, sql_noise
from relay.store.pg_support import rows_touched
from relay.store.records import Notification, Timer, TimerChange, TimerInputs, TimerOp
from relay.store.rows import timer_from_row
from relay.store.sql import numbered as q


class PostgresTimers:
    """The TimerQueue half of PostgresStore (which provides the transaction and wake-ups)."""

    _tx: Callable[..., Awaitable[Any]]
    _notify: Callable[[Any], Awaitable[None]]
    _queued: Callable[[int, int], int]

    async def claim_timers(self, *, limit: int, now: float, lease: float, owner: str,
                           ) -> list[Timer]:
        timers: list[Timer] = await self._tx(take_timers, limit, now, lease, owner)
        return timers

    async def timer_inputs(self, timer: Timer) -> TimerInputs:
        inputs: TimerInputs = await self._tx(timer_inputs, timer)
        return inputs

    async def fire(self, timer: Timer, jobs: Sequence[Notification], *, now: float,
                   consumed: TimerInputs | None = None) -> int:
        async def fire(conn: Any) -> int:
            change = await fire_timer(conn, timer, jobs, consumed, now)
            if jobs:
                await self._notify(conn)
            return change

        return self._queued(await self._tx(fire), len(jobs))

    async def release_timer(self, timer: Timer, due_at: float | None = None) -> None:
        await self._tx(lambda conn: conn.execute(q(sql.RELEASE_TIMER), due_at, timer.id,
                                                 timer.claim_token))


async def take_timers(conn: Any, limit: int, now: float, lease: float, owner: str,
                      ) -> list[Timer]:
    """Claim up to `limit` due timers: expired claims first, then armed ones by due time."""
    ids = [r[0] for r in await conn.fetch(
        "SELECT id FROM timers WHERE state = 'claimed' AND lease_until < $1"
        " ORDER BY lease_until LIMIT $2 FOR UPDATE SKIP LOCKED", now, limit)]
    if len(ids) < limit:
        ids += [r[0] for r in await conn.fetch(
            q(sql.DUE_TIMERS) + " FOR UPDATE SKIP LOCKED", now, limit - len(ids))]
    if not ids:
        return []
    rows = await conn.fetch(q(sql.CLAIM_TIMERS.format("SELECT unnest($4::bigint[])")),
                            uuid.uuid4().hex, owner, now + lease, ids)
    return sorted((timer_from_row(r) for r in rows), key=lambda t: (t.due_at, t.id))


async def timer_inputs(conn: Any, timer: Timer) -> TimerInputs:
    last = await conn.fetchval(q(sql.LAST_EVENT), timer.delivery_id)
    items = await conn.fetch(q(sql_noise.DIGEST_ITEMS), timer.id, rules.batch_size(timer)) \
        if timer.kind == "digest" else []
    held = await conn.fetch(q(sql_noise.HELD_JOBS), timer.context.get("receiver", ""),
                            timer.context.get("url_index", 0), timer.due_at,
                            rules.BATCH_CEILING) if timer.kind == "quiet" else []
    return sql.timer_inputs(await conn.fetchrow(q(sql.EVENT_ROW), timer.event_id),
                            await conn.fetchrow(q(sql.EVENT_ROW), last) if last else None,
                            items, held)


async def fire_timer(conn: Any, timer: Timer, jobs: Sequence[Notification],
                     consumed: TimerInputs | None, now: float) -> int:
    """Mark the timer fired if this claim still holds it, insert its jobs, consume exactly
    what it rendered, and re-open it for what arrived meanwhile; the backlog change."""
    if rows_touched(await conn.execute(q(sql.FIRE_TIMER), now, timer.id, timer.claim_token)) == 0:
        raise StaleClaim(f"timer {timer.id} is no longer claimed by this worker")
    await conn.executemany(q(sql.INSERT_JOB), sql.timer_job_rows(timer, jobs, now))
    await apply_timers(conn, (), timer.event_id, now, jobs, timer.delivery_id)
    summarised = 0
    if consumed is not None:
        await conn.executemany(q(sql_noise.FIRE_ITEM), [(now, item.id) for item in consumed.items])
        for job in consumed.held:
            summarised += rows_touched(await conn.execute(q(sql_noise.SUMMARISE), now, job.id))
    await _reopen(conn, timer, now)
    return len(jobs) - summarised


async def _reopen(conn: Any, timer: Timer, now: float) -> None:
    waiting = sql_noise.first_waiting(timer)
    row = await conn.fetchrow(q(waiting[0]), *waiting[1]) if waiting else None
    if row is not None:
        await conn.execute(q(sql_noise.REOPEN), *sql_noise.reopen_args(timer, row, now))


async def apply_timers(conn: Any, ops: Sequence[TimerOp], event_id: int, now: float,
                       jobs: Sequence[Notification] = (), delivery_id: str = "",
                       ) -> tuple[TimerChange, ...]:
    """Apply an accepted event's timer operations, digest items and held jobs' summary
    timers; the operations that changed a timer."""
    changes = []
    for op in rules.accepted_timer_ops(ops, jobs):
        # A watch's ops are ordered by its delivery's timestamps; the delivery's row lock
        # (pg_ingest.track_delivery) keeps this read and the write together.
        ordered = "event_at" in op.context
        row = await conn.fetchrow(q(sql_noise.TIMER_SEEN), op.kind, op.key) if ordered \
            else None
        if not rules.watch_in_order(op, sql_noise.seen_at(row)):
            continue
        if await conn.fetchval(q(sql.TIMER_WRITE[op.action]),
                               *sql.timer_args(op, event_id, now)) is not None:
            changes.append(TimerChange(op.action, op.kind, op.key))
        if ordered and op.action == "disarm":
            statement, args = sql_noise.stop_args(op, row, sql_noise.seen_at(row), event_id, now)
            await conn.execute(q(statement), *args)
        if op.collect:
            # The row is locked by the upsert: concurrent events of one window queue here.
            timer_id = await conn.fetchval(q(sql_noise.TIMER_ID), op.kind, op.key)
            await conn.execute(q(sql_noise.ADD_ITEM), timer_id, event_id, delivery_id, now)
            if rules.closes_early(await conn.fetchval(q(sql_noise.DIGEST_WAITING), timer_id), op.full_at):
                await conn.execute(q(sql_noise.CLOSE_EARLY), now, timer_id, now)
    return tuple(changes)
