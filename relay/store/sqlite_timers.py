"""The SQLite store's timers: applied in the accept transaction, claimed, read and fired
(all on the writer thread, inside one batch's transaction)."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Sequence

from relay.errors import StaleClaim
from relay.store import rules, sql, sql_noise
from relay.store.records import Notification, Timer, TimerChange, TimerInputs, TimerOp
from relay.store.rows import timer_from_row


def claim(conn: sqlite3.Connection, limit: int, now: float, lease: float, owner: str,
          ) -> list[Timer]:
    """Due timers (expired claims first: they keep their due time) through timers_due."""
    conn.execute(sql.UNCLAIM_EXPIRED_TIMERS, (now,))
    rows = conn.execute(sql.CLAIM_TIMERS.format(sql.DUE_TIMERS),
                        (uuid.uuid4().hex, owner, now + lease, now, limit)).fetchall()
    return sorted((timer_from_row(r) for r in rows), key=lambda t: (t.due_at, t.id))


def inputs(conn: sqlite3.Connection, timer: Timer) -> TimerInputs:
    last = conn.execute(sql.LAST_EVENT, (timer.delivery_id,)).fetchone()
    items = conn.execute(sql_noise.DIGEST_ITEMS, (timer.id, rules.batch_size(timer))).fetchall() \
        if timer.kind == "digest" else []
    held = conn.execute(sql_noise.HELD_JOBS, (timer.context.get("receiver", ""),
                                        timer.context.get("url_index", 0), timer.due_at,
                                        rules.BATCH_CEILING)).fetchall() \
        if timer.kind == "quiet" else []
    return sql.timer_inputs(
        conn.execute(sql.EVENT_ROW, (timer.event_id,)).fetchone(),
        conn.execute(sql.EVENT_ROW, (last[0],)).fetchone() if last and last[0] else None,
        items, held)


def apply(conn: sqlite3.Connection, ops: Sequence[TimerOp], jobs: Sequence[Notification],
          event_id: int, delivery_id: str, now: float) -> tuple[TimerChange, ...]:
    """An accepted event's timer operations, digest items and held jobs' summary timers."""
    changes = []
    for op in rules.accepted_timer_ops(ops, jobs):
        ordered = "event_at" in op.context  # a watch's: by its delivery's timestamps
        row = conn.execute(sql_noise.TIMER_SEEN, (op.kind, op.key)).fetchone() if ordered \
            else None
        if not rules.watch_in_order(op, sql_noise.seen_at(row)):
            continue
        if conn.execute(sql.TIMER_WRITE[op.action], sql.timer_args(op, event_id, now)).fetchall():
            changes.append(TimerChange(op.action, op.kind, op.key))
        if ordered and op.action == "disarm":
            conn.execute(*sql_noise.stop_args(op, row, sql_noise.seen_at(row), event_id, now))
        if op.collect:
            timer_id = conn.execute(sql_noise.TIMER_ID, (op.kind, op.key)).fetchone()[0]
            conn.execute(sql_noise.ADD_ITEM, (timer_id, event_id, delivery_id, now))
            if rules.closes_early(conn.execute(sql_noise.DIGEST_WAITING, (timer_id,)).fetchone()[0],
                                  op.full_at):
                conn.execute(sql_noise.CLOSE_EARLY, (now, timer_id, now))
    return tuple(changes)


def fire(conn: sqlite3.Connection, timer: Timer, jobs: Sequence[Notification],
         consumed: TimerInputs | None, now: float) -> int:
    """Mark the timer fired under its claim, insert its jobs, consume exactly what it
    rendered, and re-open it for what arrived meanwhile. Returns the backlog change."""
    if conn.execute(sql.FIRE_TIMER, (now, timer.id, timer.claim_token)).rowcount == 0:
        raise StaleClaim(f"timer {timer.id} is no longer claimed by this worker")
    conn.executemany(sql.INSERT_JOB, sql.timer_job_rows(timer, jobs, now))
    apply(conn, (), jobs, timer.event_id, timer.delivery_id, now)
    summarised = 0
    if consumed is not None:
        conn.executemany(sql_noise.FIRE_ITEM, [(now, item.id) for item in consumed.items])
        summarised = sum(conn.execute(sql_noise.SUMMARISE, (now, job.id)).rowcount
                         for job in consumed.held)
    _reopen(conn, timer, now)
    return len(jobs) - summarised


def _reopen(conn: sqlite3.Connection, timer: Timer, now: float) -> None:
    waiting = sql_noise.first_waiting(timer)
    row = conn.execute(*waiting).fetchone() if waiting else None
    if row is not None:
        conn.execute(sql_noise.REOPEN, sql_noise.reopen_args(timer, row, now))
