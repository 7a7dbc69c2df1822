"""SQLite store: WAL, `synchronous=FULL`, one writer thread that groups commits.

Every operation below is a plain function of a connection, run on the writer
thread (`sqlite_writer`) inside one batch's transaction. The job rules come
from `rules`, the statements from `sql`: what is here is only how SQLite
takes them (one UPDATE through the `jobs_due` index for a claim).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, TypeVar

from relay.errors import StaleClaim, StoreError
from relay.events import Event, parse_timestamp
from relay.store import records, rules, sql, sql_pages, sqlite_support, sqlite_timers
from relay.store.live import SQLiteLive
from relay.store.relays import Place, RelayState, live_relays, relay_states
from relay.store.rows import JOB_COLUMNS, from_row, job_from_row
from relay.store.schema import REBUILDS, SCHEMA_VERSION, check_version, log_migrated, migrations
from relay.store.sqlite_writer import Writer

T = TypeVar("T")
MIGRATIONS = migrations("sqlite")


def sqlite_path(url: str) -> str:
    """`sqlite:relay.db` (relative), `sqlite:///abs.db` or `sqlite:////abs.db` (absolute)."""
    rest = url.removeprefix("sqlite:")
    if rest.startswith("//"):
        rest = rest[2:]
        rest = "/" + rest.lstrip("/") if rest.startswith("/") else rest
    if not rest or rest == ":memory:":
        raise StoreError("the sqlite store needs a file path, e.g. sqlite:relay.db")
    return rest


def _make_folder(folder: Path) -> None:
    """Create the store's folder, or say which part of its path stands in the way."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()),
                       None)
        why = f"{blocker} is a file, not a folder" if blocker else (e.strerror or str(e))
        raise StoreError(f"cannot create the store's folder {folder}: {why}:"
                         " set store.url to a path in a folder the relay may write") from None


class SQLiteStore(SQLiteLive, rules.Wakeups):
    def __init__(self, path: str, synchronous: str = "FULL", busy_timeout: float = 5.0,
                 create: bool = True, exclusive: bool = False) -> None:
        self.path, self.create = path, create  # create False: a reader (never migrates)
        self.exclusive = exclusive  # a serving relay: the only one on this file
        self._lock: int | None = None
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self._writer = Writer(path, self._connect, self._migrate, self._count_backlog)
        self._backlog = rules.Backlog()
        self._subscribers: list[Callable[[], None]] = []
        self._timer_subscribers: list[Callable[[], None]] = []

    # ------------------------------------------------------------ plumbing

    async def open(self) -> None:
        if self._writer.running:
            return
        _make_folder(Path(self.path).parent)
        if self.exclusive:
            self._lock = sqlite_support.lock_exclusively(self.path)
        try:
            await self._writer.start()
        except BaseException:
            self._unlock()
            raise
        await self._call(sqlite_support.release_dead_owners)
        await self._call(self._count_backlog)

    async def close(self) -> None:
        await self._writer.stop()
        self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # the kernel releases it too when the process dies (kill -9)
            self._lock = None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._writer.call(fn, *args)

    def _connect(self) -> sqlite3.Connection:
        if self._lock is not None:  # the writer reopens the path: a new file is locked too
            self._lock = sqlite_support.relock(self.path, self._lock)
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                               check_same_thread=False)
        conn.row_factory = sqlite3.Row
        if self.create:  # a reader leaves the file as it is (a store's WAL mode is in the file)
            conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(f"PRAGMA synchronous={self.synchronous}; PRAGMA foreign_keys=ON")
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Run the numbered steps this file has not had (`PRAGMA user_version`)."""
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        check_version(version, self.path, create=self.create)
        for step in range(version + 1, SCHEMA_VERSION + 1):
            # A table rebuild drops the old table: with foreign keys on, that would cascade
            # into its children (the pragma is a no-op inside a transaction, so set it here).
            rebuild = step in REBUILDS
            if rebuild:
                conn.execute("PRAGMA foreign_keys=OFF")
            try:
                conn.executescript(f"BEGIN IMMEDIATE;{MIGRATIONS[step]}"
                                   f"PRAGMA user_version={step};COMMIT;")
            finally:
                if rebuild:
                    conn.execute("PRAGMA foreign_keys=ON")
        log_migrated(version)

    def _count_backlog(self, conn: sqlite3.Connection) -> int:
        self._backlog.counted(conn.execute(sql.BACKLOG).fetchone()[0])
        return self._backlog.value

    # ------------------------------------------------------------ hot path

    async def ping(self) -> None:
        await self._call(lambda conn: conn.execute(sql.PING, (time.time(),)) and None)

    def backlog_estimate(self) -> int:
        return self._backlog.value

    async def accept(self, event: Event, key: str, jobs: Sequence[records.Notification], *, now: float,
                     timers: Sequence[records.TimerOp] = ()) -> records.Accepted:
        accepted = await self._call(self._accept, event, key, jobs, now, timers)
        if accepted.jobs or accepted.timers:
            self._wake(timers=bool(accepted.timers))
        return accepted

    def _accept(self, conn: sqlite3.Connection, event: Event, key: str, jobs: Sequence[records.Notification],
                now: float, timers: Sequence[records.TimerOp]) -> records.Accepted:
        inserted = conn.execute(sql.INSERT_EVENT, sql.event_args(event, key, now))
        if inserted.rowcount == 0:  # ON CONFLICT DO NOTHING: a duplicate
            return records.Accepted(conn.execute(sql.EVENT_BY_KEY, (key,)).fetchone()[0], True, 0)
        event_id = inserted.lastrowid
        assert event_id is not None
        ts = parse_timestamp(event.timestamp).timestamp()
        reason = self._track_delivery(conn, event, event_id, ts)
        kept = []
        for spec in (j for j in jobs if not (reason and j.suppress_stale)):
            job, replaced = sqlite_support.hold(conn, event_id, event, spec, ts, now)
            kept.append(job)
            self._backlog.add(-replaced)
        if kept:
            conn.executemany(sql.INSERT_JOB, sql.job_rows(event_id, event, kept, now, ts))
        queued = sql.active(kept)
        self._backlog.add(queued)
        changes = sqlite_timers.apply(conn, timers, [j.spec for j in kept], event_id,
                                      event.delivery_id, now)
        why = reason if len(kept) < len(jobs) else next((j.reason for j in kept if j.reason), "")
        return records.Accepted(event_id, False, queued, why, changes)

    def _track_delivery(self, conn: sqlite3.Connection, event: Event, event_id: int,
                        ts: float) -> str:
        """Record the delivery's ordering state; say why an update is stale, if it is."""
        if not event.delivery_id:  # a relay-internal event (a notice): about no delivery
            return ""
        row = conn.execute(sql.DELIVERY, (event.delivery_id,)).fetchone()
        newest, cancelled, last = (row["newest"], bool(row["cancelled"]), row["last_event_id"]) \
            if row else (None, False, None)
        conn.execute(sql.UPSERT_DELIVERY, (
            event.delivery_id, *rules.delivery_after(event.type, ts, newest, cancelled),
            rules.last_event_after(ts, newest, event_id, last)))
        if rules.cancels(event.type):
            self._backlog.add(-conn.execute(sql.SUPPRESS_UPDATES, (event.delivery_id,)).rowcount)
        return rules.stale_reason(event.type, ts, newest, cancelled)

    async def claim(self, receiver: str, url_index: int, *, limit: int, now: float, lease: float,
                    owner: str, bucket: records.RateLimit | None,
                    circuit: records.Circuit | None) -> records.ClaimResult:
        return await self._call(self._claim, (receiver, url_index), limit, now, lease, owner,
                                bucket, circuit)

    def _claim(self, conn: sqlite3.Connection, url: tuple[str, int], limit: int, now: float,
               lease: float, owner: str, bucket: records.RateLimit | None,
               circuit: records.Circuit | None) -> records.ClaimResult:
        row = _receiver(conn, url, circuit)
        probing = rules.needs_probe_check(row, now, circuit) and \
            conn.execute(sql.PROBE_OUT, (*url, now)).fetchone() is not None
        admission = rules.admit(row, limit=limit, now=now, bucket=bucket, circuit=circuit,
                                probing=probing)
        jobs = _take(conn, url, admission.limit, now, lease, owner) if admission.limit else []
        if admission.tokens is not None:
            conn.execute(sql.SET_TOKENS, (admission.tokens - len(jobs), now, *url))
        if not admission.limit:
            return records.ClaimResult([], admission.wait_until, admission.paused)
        due = conn.execute(sql.NEXT_DUE, (*url, *url)).fetchone()[0] \
            if rules.wants_next_due(admission, len(jobs)) else None
        return records.ClaimResult(jobs, due)

    async def complete(self, job: records.Job, attempt: records.Attempt, *, reached: bool = True) -> None:
        await self._call(self._complete, job, attempt, reached)

    def _complete(self, conn: sqlite3.Connection, job: records.Job, attempt: records.Attempt,
                  reached: bool) -> None:
        self._finish(conn, job, "sent", None, attempt)
        if reached:
            conn.execute(sql.CLOSE_CIRCUIT, sql.close_args(job.receiver, job.url_index))

    async def bury(self, job: records.Job, attempt: records.Attempt, *,
                   circuit: records.Circuit | None = None) -> bool:
        return await self._call(self._fail, job, attempt, "dead", None, circuit)

    async def retry_later(self, job: records.Job, attempt: records.Attempt, *, at: float,
                          circuit: records.Circuit) -> bool:
        return await self._call(self._fail, job, attempt, "pending", at, circuit)

    def _fail(self, conn: sqlite3.Connection, job: records.Job, attempt: records.Attempt,
              state: records.JobState, at: float | None, circuit: records.Circuit | None) -> bool:
        """Finish a failed attempt; with `circuit`, count it against the job's receiver URL
        (True: that opened its circuit)."""
        self._finish(conn, job, state, at, attempt)
        if circuit is None:
            return False
        counted = conn.execute(sql.COUNT_FAILURE, (job.receiver, job.url_index)).fetchone()
        tripped = counted and rules.trip(counted["failures"], counted["cooldown"], attempt.at,
                                         circuit)
        if not tripped:
            return False
        conn.execute(sql.OPEN_CIRCUIT, (tripped.open_until, tripped.cooldown, job.receiver,
                                        job.url_index))
        return tripped.opened

    async def release(self, job: records.Job, *, at: float | None = None) -> None:
        await self._call(lambda conn: conn.execute(sql.RELEASE, (at, job.id, job.claim_token))
                         and None)

    def _finish(self, conn: sqlite3.Connection, job: records.Job, state: records.JobState, at: float | None,
                attempt: records.Attempt) -> None:
        if conn.execute(sql.FINISH, sql.finish_args(job, state, at, attempt)).rowcount == 0:
            raise StaleClaim(f"job {job.id} is no longer claimed by this worker")
        conn.execute(sql.INSERT_ATTEMPT, sql.attempt_args(job, attempt))
        self._backlog.left(state)

    async def active_receivers(self) -> set[tuple[str, int]]:
        return await self._call(lambda conn: {(r[0], r[1])
                                              for r in conn.execute(sql.ACTIVE_RECEIVERS)})

    # ------------------------------------------------------------ timers

    async def claim_timers(self, *, limit: int, now: float, lease: float, owner: str,
                           ) -> list[records.Timer]:
        return await self._call(sqlite_timers.claim, limit, now, lease, owner)

    async def timer_inputs(self, timer: records.Timer) -> records.TimerInputs:
        return await self._call(sqlite_timers.inputs, timer)

    async def fire(self, timer: records.Timer, jobs: Sequence[records.Notification], *, now: float,
                   consumed: records.TimerInputs | None = None) -> int:
        change = await self._call(sqlite_timers.fire, timer, jobs, consumed, now)
        return self._queued(change, len(jobs))

    async def release_timer(self, timer: records.Timer, due_at: float | None = None) -> None:
        await self._call(lambda conn: conn.execute(
            sql.RELEASE_TIMER, (due_at, timer.id, timer.claim_token)) and None)

    # ------------------------------------------------------------ read side

    async def stats(self) -> records.Stats:
        return await self._call(self._stats)

    def _stats(self, conn: sqlite3.Connection) -> records.Stats:
        backlog = self._count_backlog(conn)
        return records.Stats(backlog, *(conn.execute(q).fetchone()[0] for q in (
            sql.DEAD_COUNT, sql.OLDEST, sql.HELD_COUNT, sql.OPEN_WINDOWS)))

    async def dead(self, receiver: str | None = None, limit: int = 100) -> list[records.Job]:
        return await self._call(lambda conn: [job_from_row(r) for r in conn.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE state='dead' AND (? IS NULL OR receiver=?)"
            " ORDER BY id LIMIT ?", (receiver, receiver, limit))])

    async def detail(self, job_id: int) -> records.JobDetail | None:
        return await self._call(self._detail, job_id)

    @staticmethod
    def _detail(conn: sqlite3.Connection, job_id: int) -> records.JobDetail | None:
        row = conn.execute(sql.JOB, (job_id,)).fetchone()
        if not row:
            return None
        job = job_from_row(row)
        payload = conn.execute(sql.PAYLOAD, (job.event_id,)).fetchone()[0]
        history = conn.execute(sql.HISTORY, (job_id,)).fetchall()
        attempts = tuple(from_row(records.Attempt, h) for h in history)
        return records.JobDetail(job, json.loads(payload), attempts)

    async def timeline(self, delivery_id: str) -> records.Timeline:
        return await self._call(lambda conn: sql.timeline(delivery_id, *(
            conn.execute(q, (delivery_id,) * n).fetchall()
            for q, n in zip(sql.TIMELINE_QUERIES, sql.TIMELINE_PARAMS, strict=True))))

    async def relays(self) -> list[RelayState]:
        rows = await self._call(lambda conn: conn.execute(sql.RELAYS).fetchall())
        return live_relays(relay_states(rows), one_process=True)

    async def receivers(self) -> list[records.ReceiverState]:
        return await self._call(self._receivers)

    @staticmethod
    def _receivers(conn: sqlite3.Connection) -> list[records.ReceiverState]:
        return [from_row(records.ReceiverState, r) for r in conn.execute(sql.RECEIVER_STATES)]

    async def recent_deliveries(self, limit: int = 50) -> list[records.DeliverySummary]:
        return await self._call(lambda conn: sql_pages.recent(conn.execute(
            sql_pages.RECENT_DELIVERIES, (limit * sql_pages.RECENT_WINDOW, limit))))

    async def activity(self, since: float, minutes: int) -> list[records.Minute]:
        return await self._call(lambda conn: sql_pages.minutes(since, minutes, *(
            conn.execute(q, (since, since)).fetchall() for q in sql_pages.per_minute("sqlite"))))

    async def replay(self, job_ids: Sequence[int] | None, receiver: str | None, now: float,
                     ) -> int:
        count = await self._call(sqlite_support.replay, list(job_ids) if job_ids else None,
                                 receiver, now)
        self._backlog.add(count)
        if count:
            self._wake()
        return count

    async def announce(self, owner: str, places: Collection[Place], *, now: float,
                       ) -> set[Place]:
        return await self._call(sqlite_support.announce, owner, places, now)

    async def withdraw(self, owner: str) -> None:
        await self._call(sqlite_support.withdraw, owner)

    async def retry_now(self, receiver: str, url_index: int, *, now: float) -> int:
        count = await self._call(sqlite_support.retry_now, receiver, url_index, now)
        self._wake()  # the circuit closed even where no job was waiting
        return count

    async def purge(self, before: float, batch: int = 500) -> int:
        return await self._call(self._purge, before, batch)

    @staticmethod
    def _purge(conn: sqlite3.Connection, before: float, batch: int) -> int:
        ids = [r[0] for r in conn.execute(
            "SELECT id FROM events e WHERE received_at<? AND NOT EXISTS (SELECT 1 FROM jobs j"
            " WHERE j.event_id=e.id AND j.state IN ('pending','claimed','dead','held'))"
            f" AND {sql.KEEPS_EVENT} LIMIT ?", (before, batch))]
        if not ids:  # then timers that ended as long ago
            ids = [r[0] for r in conn.execute(sql.ENDED_TIMERS, (before, batch))]
            if ids:
                marks = ",".join("?" * len(ids))
                conn.execute(f"DELETE FROM digest_items WHERE timer_id IN ({marks})", ids)
                return conn.execute(f"DELETE FROM timers WHERE id IN ({marks})", ids).rowcount
        if not ids:  # then the per-delivery state of deliveries quiet as long
            return conn.execute("DELETE FROM deliveries WHERE rowid IN (SELECT rowid FROM"
                                " deliveries WHERE newest < ? LIMIT ?)", (before, batch)
                                ).rowcount or \
                conn.execute(sql.PURGE_LIVE, (before, before, batch)).rowcount
        # Explicit deletes: files created before step 1 rendered ON DELETE CASCADE lack it.
        marks = ",".join("?" * len(ids))
        conn.execute(f"DELETE FROM attempts WHERE job_id IN (SELECT id FROM jobs WHERE"
                     f" event_id IN ({marks}))", ids)
        conn.execute(f"DELETE FROM jobs WHERE event_id IN ({marks})", ids)
        conn.execute(f"DELETE FROM digest_items WHERE event_id IN ({marks})", ids)
        conn.execute(f"DELETE FROM events WHERE id IN ({marks})", ids)
        return len(ids)


def _receiver(conn: sqlite3.Connection, url: tuple[str, int], circuit: records.Circuit | None,
              ) -> rules.ReceiverRow:
    row = conn.execute(sql.RECEIVER, url).fetchone()
    if row:
        return from_row(rules.ReceiverRow, row)
    cooldown = circuit.cooldown if circuit else 0.0
    conn.execute(sql.INSERT_RECEIVER, (*url, cooldown))
    return rules.ReceiverRow(cooldown=cooldown)


def _take(conn: sqlite3.Connection, url: tuple[str, int], limit: int, now: float, lease: float,
          owner: str) -> list[records.Job]:
    """Claim up to `limit` due jobs of one receiver URL. Both statements walk the jobs_due
    index: no scan, no sort."""
    # Expired leases go back to pending first; they keep their old due time, so they come first.
    conn.execute("UPDATE jobs SET state='pending', claim_token=NULL, claimed_by=NULL,"
                 " lease_until=NULL WHERE state='claimed' AND receiver=? AND url_index=?"
                 " AND lease_until<?", (*url, now))
    rows = conn.execute(
        f"UPDATE jobs SET state='claimed', claim_token=?, claimed_by=?, lease_until=?"
        f" WHERE id IN (SELECT id FROM jobs WHERE state='pending' AND receiver=? AND url_index=?"
        f" AND next_attempt_at<=? ORDER BY next_attempt_at, id LIMIT ?) RETURNING {JOB_COLUMNS}",
        (uuid.uuid4().hex, owner, now + lease, *url, now, limit)).fetchall()
    return sorted((job_from_row(r) for r in rows), key=lambda j: j.id)
