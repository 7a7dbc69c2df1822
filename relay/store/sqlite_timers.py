"""The SQLite store's timer reads: claiming due timers and what a claimed one fires with."""

from __future__ import annotations

import sqlite3
import uuid

from relay.store import sql
from relay.store.records import Timer, TimerInputs
from relay.store.schema import timer_from_row


def claim(conn: sqlite3.Connection, limit: int, now: float, lease: float, owner: str,
          ) -> list[Timer]:
    """Due timers (expired claims first: they keep their due time) through timers_due."""
    conn.execute(sql.UNCLAIM_EXPIRED_TIMERS, (now,))
    rows = conn.execute(sql.CLAIM_TIMERS.format(sql.DUE_TIMERS),
                        (uuid.uuid4().hex, owner, now + lease, now, limit)).fetchall()
    return sorted((timer_from_row(r) for r in rows), key=lambda t: (t.due_at, t.id))


def inputs(conn: sqlite3.Connection, timer: Timer) -> TimerInputs:
    last = conn.execute(sql.LAST_EVENT, (timer.delivery_id,)).fetchone()
    return sql.timer_inputs(
        conn.execute(sql.EVENT_ROW, (timer.event_id,)).fetchone(),
        conn.execute(sql.EVENT_ROW, (last[0],)).fetchone() if last and last[0] else None)
