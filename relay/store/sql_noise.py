"""The statements of digests and quiet hours (schema step 7) and of a watch's ordering,
for both stores.

Written with `?` like `relay.store.sql` (`sql.numbered` makes them PostgreSQL's).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from math import inf
from typing import Any

from relay.store import rules
from relay.store.records import Timer, TimerOp
from relay.store.rows import JOB_COLUMNS

TIMER_ID = "SELECT id FROM timers WHERE kind = ? AND key = ?"
# A watch's ordering (rules.watch_in_order): the Kourier time of the event that last armed
# or disarmed it, kept in its context; a stop with no timer yet leaves a disarmed one.
TIMER_SEEN = "SELECT context FROM timers WHERE kind = ? AND key = ?"
TIMER_STATE = "SELECT context, state FROM timers WHERE kind = ? AND key = ?"  # the dry run
SEEN_AT = "UPDATE timers SET context = ? WHERE kind = ? AND key = ?"
STOPPED = ("INSERT INTO timers (kind, key, delivery_id, event_id, due_at, state, armed_at,"
           " ended_at, context) VALUES (?, ?, ?, ?, ?, 'disarmed', ?, ?, ?)"
           " ON CONFLICT (kind, key) DO NOTHING")
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


def seen_at(row: Sequence[Any] | None) -> float | None:
    """The event time a `TIMER_SEEN` row keeps (None: no timer, or none kept)."""
    at = json.loads(row[0] or "{}").get("event_at") if row is not None else None
    return float(at) if at is not None else None


def stop_args(op: TimerOp, row: Sequence[Any] | None, stored_at: float | None, event_id: int,
              now: float) -> tuple[str, tuple[Any, ...]]:
    """After a watch's stop: record its event time (never moving it back) on the timer, or
    leave a disarmed timer when there was none, so a start older than it arms nothing."""
    at = max(float(op.context["event_at"]), stored_at if stored_at is not None else -inf)
    if row is None:
        return STOPPED, (op.kind, op.key, op.delivery_id, event_id, now, now, now,
                         json.dumps({**op.context, "event_at": at, "never_armed": True},
                                    sort_keys=True))
    kept = {**json.loads(row[0] or "{}"), "event_at": at}
    return SEEN_AT, (json.dumps(kept, sort_keys=True), op.kind, op.key)
