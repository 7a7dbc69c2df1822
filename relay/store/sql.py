"""The SQL both stores run, written once with `?` placeholders; `numbered()` makes `$1…`.

Only what a dialect does differently stays in its store: how a claim takes
rows (one UPDATE through the index in SQLite, `FOR UPDATE SKIP LOCKED` in
PostgreSQL), row locks, and lists as parameters.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from relay.events import Event
from relay.store import records
from relay.store.rows import JOB_COLUMNS, TIMER_COLUMNS, from_row, job_from_row, timer_from_row
from relay.store.rules import (
    CANCELLED_REASON,
    CLOSED,
    TIMER_ENDED,
    TIMER_FROM,
    TIMER_LIVE,
    TIMER_TO,
    UPDATED,
    Coalesced,
    finished_at,
    outdated_reason,
    replaced_reason,
    timer_due,
)

ACTIVE = "state IN (" + ", ".join(f"'{s}'" for s in records.ACTIVE_STATES) + ")"  # the backlog
SENDING = "state IN ('pending', 'claimed')"  # on its way (held jobs wait for their summary)

INSERT_EVENT = ("INSERT INTO events (dedup_key, type, delivery_id, received_at, payload)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (dedup_key) DO NOTHING")
# PostgreSQL has no lastrowid, so it asks for the id. SQLite reads `cursor.lastrowid`: its
# RETURNING runs the insert into a buffer first, ~27,000 instructions an event (bench/cost.py).
INSERT_EVENT_RETURNING_ID = INSERT_EVENT + " RETURNING id"
EVENT_BY_KEY = "SELECT id FROM events WHERE dedup_key = ?"
INSERT_JOB = ("INSERT INTO jobs (event_id, receiver, url_index, route, title, body, type, format,"
              " delivery_id, event_type, suppress_stale, created_at, next_attempt_at, live,"
              " event_at, state, last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
              " ?, ?)")
# A held notification (rules.coalesce) looks at what waits for the same message, and
# replaces it. PostgreSQL locks these rows (FOR UPDATE): a claim skips them meanwhile.
WAITING = ("SELECT id, event_at, next_attempt_at AS due FROM jobs WHERE delivery_id = ?"
           " AND route = ? AND receiver = ? AND url_index = ? AND state = 'pending'")
REPLACE = ("UPDATE jobs SET state = 'suppressed', last_error = ?, finished_at = ?"
           " WHERE id = ? AND state = 'pending'")
DELIVERY = "SELECT newest, cancelled, last_event_id FROM deliveries WHERE delivery_id = ?"
UPSERT_DELIVERY = ("INSERT INTO deliveries (delivery_id, newest, cancelled, last_event_id)"
                   " VALUES (?, ?, ?, ?) ON CONFLICT (delivery_id) DO UPDATE SET"
                   " newest = excluded.newest, cancelled = excluded.cancelled,"
                   " last_event_id = excluded.last_event_id")
SUPPRESS_UPDATES = (f"UPDATE jobs SET state = 'suppressed', last_error = '{CANCELLED_REASON}'"
                    f" WHERE delivery_id = ? AND event_type = '{UPDATED}'"
                    " AND state IN ('pending', 'held')"
                    " AND suppress_stale")

# A receiver URL's circuit and token bucket: one `receivers` row per (name, url_index).
# Every statement on it and on its jobs takes the receiver name, then the URL index.
RECEIVER = ("SELECT failures, open_until, cooldown, tokens, tokens_at FROM receivers"
            " WHERE name = ? AND url_index = ?")
INSERT_RECEIVER = ("INSERT INTO receivers (name, url_index, cooldown) VALUES (?, ?, ?)"
                   " ON CONFLICT (name, url_index) DO NOTHING")
PROBE_OUT = ("SELECT 1 FROM jobs WHERE receiver = ? AND url_index = ? AND state = 'claimed'"
             " AND lease_until > ? LIMIT 1")
SET_TOKENS = "UPDATE receivers SET tokens = ?, tokens_at = ? WHERE name = ? AND url_index = ?"
# An operator's "retry now", or a reload that put another URL in this place: the circuit
# closes (CLOSE_CIRCUIT) and the jobs waiting out a retry's backoff are due at once. A job
# never attempted keeps its wait (a route's hold, a release to a later time). Its count is
# every retry that goes now, those the open circuit held after their backoff too.
RETRY_NOW = ("UPDATE jobs SET next_attempt_at = CASE WHEN next_attempt_at > ? THEN ?"
             " ELSE next_attempt_at END WHERE receiver = ? AND url_index = ?"
             " AND state = 'pending' AND attempts > 0")
NEXT_DUE = ("SELECT min(t) FROM (SELECT min(next_attempt_at) AS t FROM jobs"
            " WHERE state = 'pending' AND receiver = ? AND url_index = ? UNION ALL"
            " SELECT min(lease_until) FROM jobs WHERE state = 'claimed' AND receiver = ?"
            " AND url_index = ?) AS due")

FINISH = ("UPDATE jobs SET state = ?, attempts = attempts + 1, last_error = ?,"
          " claim_token = NULL, claimed_by = NULL, lease_until = NULL,"
          " next_attempt_at = coalesce(?, next_attempt_at), finished_at = ?"
          " WHERE id = ? AND claim_token = ? AND state = 'claimed'")
INSERT_ATTEMPT = ("INSERT INTO attempts (job_id, at, outcome, error, duration)"
                  " VALUES (?, ?, ?, ?, ?)")
RELEASE = ("UPDATE jobs SET state = 'pending', claim_token = NULL, claimed_by = NULL,"
           " lease_until = NULL, next_attempt_at = coalesce(?, next_attempt_at)"
           " WHERE id = ? AND claim_token = ?")
# Parameters: close_args() (see rules.CLOSED).
CLOSE_CIRCUIT = ("UPDATE receivers SET failures = ?, open_until = ?, cooldown = ?"
                 " WHERE name = ? AND url_index = ? AND NOT (failures = ? AND open_until = ?)")
COUNT_FAILURE = ("UPDATE receivers SET failures = failures + 1 WHERE name = ? AND url_index = ?"
                 " RETURNING failures, cooldown")
OPEN_CIRCUIT = ("UPDATE receivers SET open_until = ?, cooldown = ? WHERE name = ?"
                " AND url_index = ?")

# A live message is taken by one sender at a time: the upsert takes a free row, an expired
# lease or the caller's own, and returns nothing when another sender holds it.
TAKE_LIVE = ("INSERT INTO live_messages (live_key, delivery_id, holder, held_until, updated_at)"
             " VALUES (?, ?, ?, ?, ?) ON CONFLICT (live_key) DO UPDATE"
             " SET holder = excluded.holder, held_until = excluded.held_until"
             " WHERE live_messages.holder IS NULL OR live_messages.held_until <= ?"
             " OR live_messages.holder = excluded.holder RETURNING ref, shown")
DONE_LIVE = ("UPDATE live_messages SET ref = ?, shown = ?, holder = NULL, held_until = NULL,"
             " updated_at = ? WHERE live_key = ? AND holder = ?")
RELEASE_LIVE = ("UPDATE live_messages SET holder = NULL, held_until = NULL"
                " WHERE live_key = ? AND holder = ?")
LIVE_REF = "SELECT ref, shown, held_until FROM live_messages WHERE live_key = ?"
# Purge: live messages quiet for the retention (and not held) are forgotten; a later
# notification of their delivery posts a new message.
_PURGE_LIVE = ("DELETE FROM live_messages WHERE live_key IN (SELECT live_key FROM live_messages"
               " WHERE updated_at < ? AND (holder IS NULL OR held_until < ?) LIMIT ?{})")
PURGE_LIVE = _PURGE_LIVE.format("")
PURGE_LIVE_SKIP_LOCKED = _PURGE_LIVE.format(" FOR UPDATE SKIP LOCKED")  # PostgreSQL
LIVE_HOLDERS = "SELECT DISTINCT holder FROM live_messages WHERE holder IS NOT NULL"
FREE_LIVE = "UPDATE live_messages SET holder = NULL, held_until = NULL WHERE holder = ?"

PING = ("INSERT INTO health (id, at) VALUES (1, ?)"
        " ON CONFLICT (id) DO UPDATE SET at = excluded.at")
BACKLOG = f"SELECT count(*) FROM jobs WHERE {ACTIVE}"
DEAD_COUNT = "SELECT count(*) FROM jobs WHERE state = 'dead'"
OLDEST = f"SELECT min(created_at) FROM jobs WHERE {SENDING}"
HELD_COUNT = "SELECT count(*) FROM jobs WHERE state = 'held'"
OPEN_WINDOWS = "SELECT count(*) FROM timers WHERE kind = 'digest' AND state IN ('armed', 'claimed')"
ACTIVE_RECEIVERS = f"SELECT DISTINCT receiver, url_index FROM jobs WHERE {ACTIVE}"
JOB = f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"
PAYLOAD = "SELECT payload FROM events WHERE id = ?"
HISTORY = "SELECT at, outcome, error, duration FROM attempts WHERE job_id = ? ORDER BY id"

# A delivery's page shows its newest TIMELINE_SHOWN events (and what they caused) from:
TIMELINE_SHOWN = 100
_SHOWN_FROM = ("(SELECT coalesce(min(n.id), 0) FROM (SELECT id FROM events"
               f" WHERE delivery_id = ? ORDER BY id DESC LIMIT {TIMELINE_SHOWN}) AS n)")
TIMELINE_EVENTS = ("SELECT id, type, received_at, payload FROM events WHERE delivery_id = ?"
                   f" AND id >= {_SHOWN_FROM} ORDER BY id")
TIMELINE_JOBS = (f"SELECT {JOB_COLUMNS} FROM jobs WHERE delivery_id = ?"
                 f" AND event_id >= {_SHOWN_FROM} ORDER BY id")
TIMELINE_ATTEMPTS = ("SELECT a.job_id, a.at, a.outcome, a.error, a.duration FROM attempts a"
                     " JOIN jobs j ON j.id = a.job_id WHERE j.delivery_id = ?"
                     f" AND j.event_id >= {_SHOWN_FROM} ORDER BY a.id")
TIMELINE_EARLIER = f"SELECT count(*) AS n FROM events WHERE delivery_id = ? AND id < {_SHOWN_FROM}"
_LAST_FAILURE = ("(SELECT a.{} FROM attempts a JOIN jobs j ON j.id = a.job_id"
                 " WHERE j.receiver = r.name AND j.url_index = r.url_index"
                 " AND a.outcome <> 'sent' ORDER BY a.id DESC LIMIT 1)")
_OF_URL = "j.receiver = r.name AND j.url_index = r.url_index"
RECEIVER_STATES = (
    "SELECT r.name, r.url_index, r.failures, r.open_until, r.cooldown, r.tokens, r.tokens_at,"
    f" (SELECT count(*) FROM jobs j WHERE {_OF_URL} AND j.{ACTIVE}) AS backlog,"
    f" (SELECT max(j.finished_at) FROM jobs j WHERE {_OF_URL}"
    "  AND j.state = 'sent') AS last_sent_at,"
    f" coalesce({_LAST_FAILURE.format('error')}, '') AS last_error,"
    f" {_LAST_FAILURE.format('at')} AS last_error_at"
    " FROM receivers r ORDER BY r.name, r.url_index")

def _states(states: Iterable[str]) -> str:
    return "(" + ", ".join(f"'{s}'" for s in states if s != "new") + ")"


# ---------------------------------------------------------------- relays (relay.store.relays)
ANNOUNCE = ("INSERT INTO relays (owner, places, seen_at) VALUES (?, ?, ?) ON CONFLICT (owner)"
            " DO UPDATE SET places = excluded.places, seen_at = excluded.seen_at")
FORGET_RELAYS = "DELETE FROM relays WHERE seen_at < ?"
LIVE_RELAYS = "SELECT owner, places FROM relays"
RELAYS = "SELECT owner, places, seen_at FROM relays ORDER BY owner"
WITHDRAW = "DELETE FROM relays WHERE owner = ?"
CIRCUIT_ROWS = "SELECT name, url_index FROM receivers"
# A circuit no live relay sends for and no active job waits on (the status page stops
# listing it); a job that arrives for it later starts a fresh row.
FORGET_CIRCUIT = ("DELETE FROM receivers WHERE name = ? AND url_index = ? AND NOT EXISTS"
                  f" (SELECT 1 FROM jobs WHERE receiver = ? AND url_index = ? AND {ACTIVE})")


# ---------------------------------------------------------------- timers (rules.TIMER_FROM)
_UNCLAIM = "lease_until = NULL, claim_token = NULL, claimed_by = NULL"
_ARM = ("INSERT INTO timers (kind, key, delivery_id, event_id, due_at, state, armed_at, context)"
        " VALUES (?, ?, ?, ?, ?, 'armed', ?, ?) ON CONFLICT (kind, key) DO UPDATE SET"
        " delivery_id = excluded.delivery_id, event_id = excluded.event_id,"
        " due_at = excluded.due_at, state = 'armed', armed_at = excluded.armed_at,"
        f" context = excluded.context, ended_at = NULL, {_UNCLAIM}"
        " WHERE timers.state IN {} RETURNING id")
TIMER_WRITE: dict[records.TimerAction, str] = {
    "arm": _ARM.format(_states(TIMER_FROM["arm"])),
    "open": _ARM.format(_states(TIMER_FROM["open"])),
    "disarm": (f"UPDATE timers SET state = '{TIMER_TO['disarm']}', ended_at = ?, {_UNCLAIM}"
               f" WHERE kind = ? AND key = ? AND state IN {_states(TIMER_FROM['disarm'])}"
               " RETURNING id"),
}
CLAIM_TIMERS = (f"UPDATE timers SET state = 'claimed', claim_token = ?, claimed_by = ?,"
                f" lease_until = ? WHERE id IN ({{}}) RETURNING {TIMER_COLUMNS}")
UNCLAIM_EXPIRED_TIMERS = (f"UPDATE timers SET state = 'armed', {_UNCLAIM}"
                          " WHERE state = 'claimed' AND lease_until < ?")
DUE_TIMERS = "SELECT id FROM timers WHERE state = 'armed' AND due_at <= ? ORDER BY due_at, id LIMIT ?"
FIRE_TIMER = (f"UPDATE timers SET state = 'fired', ended_at = ?, {_UNCLAIM}"
              " WHERE id = ? AND claim_token = ? AND state = 'claimed'")
RELEASE_TIMER = (f"UPDATE timers SET state = 'armed', due_at = COALESCE(?, due_at), {_UNCLAIM}"
                 " WHERE id = ? AND claim_token = ? AND state = 'claimed'")
EVENT_ROW = "SELECT id, type, received_at, payload FROM events WHERE id = ?"
LAST_EVENT = "SELECT last_event_id FROM deliveries WHERE delivery_id = ?"
# A delivery's timers: its own, and the digests its events joined.
# A watch timer's event is always one of its delivery's (the one that armed it last).
TIMELINE_TIMERS = (f"SELECT {TIMER_COLUMNS} FROM timers WHERE id IN (SELECT t.id FROM timers t"
                   " WHERE t.kind = 'watch' AND t.event_id IN (SELECT e.id FROM events e"
                   " WHERE e.delivery_id = CAST(? AS TEXT)) UNION SELECT i.timer_id FROM"
                   " digest_items i WHERE i.delivery_id = CAST(? AS TEXT)"
                   f" AND i.event_id >= {_SHOWN_FROM}) ORDER BY id")
TIMELINE_LIVE = ("SELECT live_key AS key, ref, shown, updated_at FROM live_messages"
                 " WHERE delivery_id = ? ORDER BY live_key")
# Events that armed a live timer, or wait in a digest, stay: the timer fires with them.
KEEPS_EVENT = ("NOT EXISTS (SELECT 1 FROM timers t WHERE t.event_id = e.id"
               f" AND t.state IN {_states(TIMER_LIVE)}) AND NOT EXISTS (SELECT 1 FROM"
               " digest_items i WHERE i.event_id = e.id AND i.fired_at IS NULL)")
ENDED_TIMERS = (f"SELECT id FROM timers WHERE state IN {_states(TIMER_ENDED)}"
                " AND ended_at < ? LIMIT ?")


@functools.cache
def numbered(sql: str) -> str:
    """The statement with PostgreSQL's `$1, $2, …` for each `?`, in order."""
    count = itertools.count(1)
    return re.sub(r"\?", lambda _m: f"${next(count)}", sql)


@dataclass(frozen=True)
class Queued:
    """One job of an accepted event as it is inserted: due when, in which state, and why."""

    spec: records.Notification
    due: float
    state: records.JobState = "pending"
    reason: str = ""


def queued(spec: records.Notification, coalesced: Coalesced) -> Queued:
    """The job a notification becomes after `rules.coalesce`; held (quiet hours) wins."""
    if spec.held_until is not None:
        return Queued(spec, spec.held_until, "held")
    if coalesced.replaced_by is not None:
        return Queued(spec, coalesced.due, "suppressed", outdated_reason(coalesced.replaced_by))
    return Queued(spec, coalesced.due)


def waiting_key(event: Event, spec: records.Notification) -> tuple[Any, ...] | None:
    """WAITING's parameters for a held notification; None when it is not held.

    A notification held for quiet hours neither replaces what waits (the summary lists it
    as it came) nor is replaced: WAITING and REPLACE take only pending jobs."""
    if spec.hold <= 0 or not event.delivery_id or spec.held_until is not None:
        return None
    return (event.delivery_id, spec.route, spec.receiver, spec.url_index)


def job_rows(event_id: int, event: Event, jobs: Sequence[Queued], now: float, ts: float,
             ) -> list[tuple[Any, ...]]:
    """INSERT_JOB's parameters for each job of an accepted event (`ts`: its own time)."""
    return [(event_id, j.spec.receiver, j.spec.url_index, j.spec.route, m.title, m.body, m.type,
             m.format, event.delivery_id, event.type, j.spec.suppress_stale, now, j.due,
             j.spec.live, ts, j.state, j.reason) for j in jobs for m in (j.spec.message,)]


def active(jobs: Sequence[Queued]) -> int:
    """How many of an accepted event's jobs are backlog (pending, or held for quiet hours)."""
    return sum(j.state in records.ACTIVE_STATES for j in jobs)


def replace_args(ids: Sequence[int], event_id: int, now: float) -> list[tuple[Any, ...]]:
    """REPLACE's parameters: the waiting jobs a held notification of `event_id` replaces."""
    return [(replaced_reason(event_id), now, i) for i in ids]


def _due(job: records.Notification, now: float) -> tuple[float, records.JobState]:
    return (now, "pending") if job.held_until is None else (job.held_until, "held")


def timer_args(op: records.TimerOp, event_id: int, now: float) -> tuple[Any, ...]:
    """TIMER_WRITE[op.action]'s parameters."""
    if op.action == "disarm":
        return (now, op.kind, op.key)
    return (op.kind, op.key, op.delivery_id, event_id, timer_due(op, now), now,
            json.dumps(dict(op.context), sort_keys=True))


def timer_job_rows(timer: records.Timer, jobs: Sequence[records.Notification], now: float,
                   ) -> list[tuple[Any, ...]]:
    """INSERT_JOB's parameters for the jobs a fired timer produces (of its arming event)."""
    return [(timer.event_id, j.receiver, j.url_index, j.route, j.message.title, j.message.body,
             j.message.type, j.message.format, timer.delivery_id, f"timer.{timer.kind}", False,
             now, due, False, None, state, "") for j in jobs for due, state in (_due(j, now),)]


def timeline_event(row: Mapping[str, Any] | None) -> records.TimelineEvent | None:
    if row is None:
        return None
    return records.TimelineEvent(row["id"], row["type"], row["received_at"], json.loads(row["payload"]))


def timer_inputs(arming: Mapping[str, Any] | None, last: Mapping[str, Any] | None,
                 items: Iterable[Mapping[str, Any]] = (), held: Iterable[Mapping[str, Any]] = (),
                 ) -> records.TimerInputs:
    """TimerInputs from EVENT_ROW rows (without a newest event the arming one stands in),
    DIGEST_ITEMS rows and HELD_JOBS rows."""
    first = timeline_event(arming)
    return records.TimerInputs(first, timeline_event(last) or first,
                       tuple(records.DigestItem(r["item_id"], records.TimelineEvent(
                           r["id"], r["type"], r["received_at"], json.loads(r["payload"])))
                           for r in items),
                       tuple(job_from_row(r) for r in held))


def finish_args(job: records.Job, state: records.JobState, at: float | None, attempt: records.Attempt,
                ) -> tuple[Any, ...]:
    """FINISH's parameters: the job leaves its claim as `state` (due again at `at`)."""
    return (state, attempt.error, at, finished_at(state, attempt.at), job.id, job.claim_token)


def attempt_args(job: records.Job, attempt: records.Attempt) -> tuple[Any, ...]:
    return (job.id, attempt.at, attempt.outcome, attempt.error, attempt.duration)


def close_args(receiver: str, url_index: int) -> tuple[Any, ...]:
    """CLOSE_CIRCUIT's parameters."""
    return (*CLOSED, receiver, url_index, *CLOSED[:2])


def event_args(event: Event, key: str, now: float) -> tuple[Any, ...]:
    return (key, event.type, event.delivery_id, now, json.dumps(event.payload))


TIMELINE_ITEMS = ("SELECT timer_id, event_id, added_at, fired_at FROM digest_items"
                  f" WHERE delivery_id = ? AND event_id >= {_SHOWN_FROM} ORDER BY id")
TIMELINE_QUERIES = (TIMELINE_EVENTS, TIMELINE_JOBS, TIMELINE_ATTEMPTS, TIMELINE_TIMERS,
                    TIMELINE_LIVE, TIMELINE_ITEMS, TIMELINE_EARLIER)
TIMELINE_PARAMS = (2, 2, 2, 3, 1, 2, 2)  # how many times each query takes the delivery id


def timeline(delivery_id: str, events: Iterable[Mapping[str, Any]],
             jobs: Iterable[Mapping[str, Any]], attempts: Iterable[Mapping[str, Any]],
             timers: Iterable[Mapping[str, Any]] = (), live: Iterable[Mapping[str, Any]] = (),
             joined: Iterable[Mapping[str, Any]] = (),
             earlier: Iterable[Mapping[str, Any]] = ()) -> records.Timeline:
    """A Timeline from the rows of TIMELINE_QUERIES."""
    return records.Timeline(
        delivery_id,
        tuple(records.TimelineEvent(e["id"], e["type"], e["received_at"], json.loads(e["payload"]))
              for e in events),
        tuple(job_from_row(j) for j in jobs),
        tuple(records.JobAttempt(a["job_id"], from_row(records.Attempt, a)) for a in attempts),
        tuple(timer_from_row(t) for t in timers),
        tuple(from_row(records.LiveRef, r) for r in live),
        tuple(from_row(records.DigestJoin, j) for j in joined),
        sum(int(r["n"]) for r in earlier))
