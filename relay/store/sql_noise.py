"""The statements of digests and quiet hours (schema step 7), for both stores.

Written with `?` like `relay.store.sql` (`sql.numbered` makes them PostgreSQL's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from relay.store import rules
from relay.store.records import Timer
from relay.store.schema import JOB_COLUMNS

TIMER_ID = "SELECT id FROM timers WHERE kind = ? AND key = ?"
ADD_ITEM = ("INSERT INTO digest_items (timer_id, event_id, delivery_id, added_at)"
            " VALUES (?, ?, ?, ?)")
DIGEST_WAITING = "SELECT count(*) FROM digest_items WHERE timer_id = ? AND fired_at IS NULL"
CLOSE_EARLY = "UPDATE timers SET due_at = ? WHERE id = ? AND state = 'armed' AND due_at > ?"
DIGEST_ITEMS = ("SELECT i.id AS item_id, e.id, e.type, e.received_at, e.payload"
                " FROM digest_items i JOIN events e ON e.id = i.event_id"
                " WHERE i.timer_id = ? AND i.fired_at IS NULL ORDER BY i.id LIMIT ?")
HELD_JOBS = (f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'held' AND receiver = ?"
             " AND url_index = ? AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?")
FIRE_ITEM = "UPDATE digest_items SET fired_at = ? WHERE id = ? AND fired_at IS NULL"
SUMMARISE = ("UPDATE jobs SET state = 'summarised', finished_at = ? WHERE id = ?"
             " AND state = 'held'")
# What is left for a fired timer: the oldest waiting item / held job re-opens it.
FIRST_WAITING = {
    "digest": ("SELECT event_id, added_at, (SELECT count(*) FROM digest_items w WHERE"
               " w.timer_id = i.timer_id AND w.fired_at IS NULL) FROM digest_items i"
               " WHERE i.timer_id = ? AND i.fired_at IS NULL ORDER BY i.id LIMIT 1"),
    "quiet": ("SELECT event_id, next_attempt_at, 1 FROM jobs WHERE state = 'held'"
              " AND receiver = ? AND url_index = ? ORDER BY next_attempt_at, id LIMIT 1"),
}
REOPEN = ("UPDATE timers SET state = 'armed', due_at = ?, event_id = ?, armed_at = ?,"
          " ended_at = NULL WHERE id = ? AND state = 'fired'")


def first_waiting(timer: Timer) -> tuple[str, tuple[Any, ...]] | None:
    """The statement and arguments of `FIRST_WAITING` for a fired timer; None for a kind
    (a watch) that leaves nothing waiting."""
    if timer.kind not in FIRST_WAITING:
        return None
    args = (timer.id,) if timer.kind == "digest" else \
        (timer.context.get("receiver", ""), timer.context.get("url_index", 0))
    return FIRST_WAITING[timer.kind], args


def reopen_args(timer: Timer, waiting: Sequence[Any], now: float) -> tuple[Any, ...]:
    """`REOPEN`'s arguments, from the `first_waiting` row (event id, time, how many wait)."""
    due = rules.reopen_due(timer.kind, timer.context, waiting[1], waiting[2], now)
    return due, waiting[0], now, timer.id
