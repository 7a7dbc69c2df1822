"""SQLite store: WAL, `synchronous=FULL`, one writer thread that groups commits.

Every operation runs on one dedicated thread with its own connection. The
thread takes whatever operations are queued, runs each inside a savepoint of
one transaction and commits once, so under load many requests share one
`fsync` and none is answered before its commit. An environmental error
(disk full, read-only file, lock timeout) fails the whole batch with
StoreError and nothing of it is written.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from relay.errors import RelayError, SchemaTooNew, StaleClaim, StoreError
from relay.events import Event, parse_timestamp
from relay.store import (
    SCHEMA_VERSION,
    Accepted,
    Attempt,
    Bucket,
    Circuit,
    ClaimResult,
    Job,
    JobDetail,
    JobSpec,
    Stats,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_BATCH = 512

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    dedup_key TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    received_at REAL NOT NULL,
    payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    event_id INTEGER NOT NULL REFERENCES events(id),
    receiver TEXT NOT NULL,
    url_index INTEGER NOT NULL,
    route TEXT NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    type TEXT NOT NULL,
    format TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    suppress_stale INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    lease_until REAL,
    claim_token TEXT,
    claimed_by TEXT,
    last_error TEXT NOT NULL DEFAULT '',
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs(state, receiver, next_attempt_at);
CREATE INDEX IF NOT EXISTS jobs_event ON jobs(event_id);
CREATE INDEX IF NOT EXISTS jobs_delivery ON jobs(delivery_id, state);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    at REAL NOT NULL,
    outcome TEXT NOT NULL,
    error TEXT NOT NULL,
    duration REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS attempts_job ON attempts(job_id);
CREATE TABLE IF NOT EXISTS receivers (
    name TEXT PRIMARY KEY,
    tokens REAL,
    tokens_at REAL,
    failures INTEGER NOT NULL DEFAULT 0,
    open_until REAL NOT NULL DEFAULT 0,
    cooldown REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS deliveries (
    delivery_id TEXT PRIMARY KEY,
    newest REAL NOT NULL,
    cancelled INTEGER NOT NULL DEFAULT 0
);
"""
JOB_COLUMNS = ("id, event_id, receiver, url_index, route, title, body, type, format, state, "
               "attempts, created_at, next_attempt_at, last_error, claim_token, delivery_id, "
               "event_type")


def sqlite_path(url: str) -> str:
    """`sqlite:relay.db` (relative), `sqlite:///abs.db` or `sqlite:////abs.db` (absolute)."""
    rest = url.removeprefix("sqlite:")
    if rest.startswith("//"):
        rest = rest[2:]
        rest = "/" + rest.lstrip("/") if rest.startswith("/") else rest
    if not rest or rest == ":memory:":
        raise StoreError("the sqlite store needs a file path, e.g. sqlite:relay.db")
    return rest


def _row_job(row: Sequence[Any]) -> Job:
    values = [*row[:13], row[13] or "", row[14] or "", row[15], row[16]]
    return Job(*values)


class SQLiteStore:
    def __init__(self, path: str, synchronous: str = "FULL", busy_timeout: float = 5.0) -> None:
        self.path = path
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._backlog = 0
        self._backlog_at = 0.0
        self.listeners: list[Callable[[], None]] = []

    # ------------------------------------------------------------ plumbing

    async def open(self) -> None:
        if self._thread:
            return
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="sqlite-store",
                                        daemon=True)
        self._thread.start()
        try:
            await ready
        except BaseException:
            self._thread = None
            raise
        await self._call(self._release_dead_owners)
        await self._call(self._count_backlog)

    async def close(self) -> None:
        if self._thread:
            self._queue.put(None)
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
            self._thread = None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if not self._thread:
            raise StoreError("store is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put((fn, args, future, loop))
        return await future

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def _run(self, ready: asyncio.Future[None]) -> None:
        loop = ready.get_loop()
        try:
            conn = self._connect()
            self._migrate(conn)
        except (sqlite3.Error, RelayError, OSError) as e:
            err = e if isinstance(e, RelayError) else StoreError(f"cannot open {self.path}: {e}")
            loop.call_soon_threadsafe(_settle, ready, None, err)
            return
        loop.call_soon_threadsafe(_settle, ready, None, None)
        while True:
            batch = [self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            stop = None in batch
            self._execute(conn, [op for op in batch if op is not None])
            if stop:
                conn.close()
                return

    def _execute(self, conn: sqlite3.Connection, batch: list[Any]) -> None:
        results: list[tuple[Any, Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for fn, args, future, loop in batch:
                results.append(self._one(conn, fn, args, future, loop))
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            _rollback(conn)
            log.error("store write failed: %s", e)
            try:
                self._count_backlog(conn)  # undo the estimate's changes from the lost batch
            except sqlite3.Error:
                pass
            error = StoreError(f"store unavailable: {e}")
            results = [(op[2], None, error) for op in batch]
            loops = [op[3] for op in batch]
        else:
            loops = [op[3] for op in batch]
        by_loop: dict[Any, list[tuple[Any, Any, BaseException | None]]] = {}
        for result, loop in zip(results, loops, strict=True):
            by_loop.setdefault(loop, []).append(result)
        for loop, settled in by_loop.items():  # one wake-up of each loop per batch
            loop.call_soon_threadsafe(_settle_all, settled)

    @staticmethod
    def _one(conn: sqlite3.Connection, fn: Callable[..., Any], args: tuple[Any, ...],
             future: Any, loop: Any) -> tuple[Any, Any, BaseException | None]:
        conn.execute("SAVEPOINT op")
        try:
            value = fn(conn, *args)
        except sqlite3.Error:
            raise
        except Exception as e:  # a refusal (or a bug) undoes only this operation
            if not isinstance(e, RelayError):
                log.exception("store operation %s failed", getattr(fn, "__name__", fn))
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            return future, None, e
        conn.execute("RELEASE op")
        return future, value, None

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(f"{self.path} has schema version {version}; this relay knows"
                               f" up to {SCHEMA_VERSION}: upgrade the relay")
        if version < SCHEMA_VERSION:
            conn.executescript(f"BEGIN IMMEDIATE;{SCHEMA}PRAGMA user_version={SCHEMA_VERSION};"
                               "COMMIT;")

    def _release_dead_owners(self, conn: sqlite3.Connection) -> int:
        """Claims of crashed processes on this host go back to pending at once."""
        host = socket.gethostname()
        owners = [r[0] for r in conn.execute(
            "SELECT DISTINCT claimed_by FROM jobs WHERE state='claimed'")]
        dead = [o for o in owners if _owner_gone(o, host)]
        for owner in dead:
            conn.execute("UPDATE jobs SET state='pending', claim_token=NULL, claimed_by=NULL,"
                         " lease_until=NULL WHERE state='claimed' AND claimed_by=?", (owner,))
        return len(dead)

    def _count_backlog(self, conn: sqlite3.Connection) -> int:
        self._backlog = conn.execute(
            "SELECT count(*) FROM jobs WHERE state IN ('pending','claimed')").fetchone()[0]
        self._backlog_at = time.monotonic()
        return self._backlog

    # ------------------------------------------------------------ protocol

    async def ping(self) -> None:
        await self._call(lambda conn: conn.execute("SELECT 1").fetchone())

    def backlog_estimate(self) -> int:
        return self._backlog

    async def accept(self, event: Event, key: str, jobs: Sequence[JobSpec], now: float,
                     ) -> Accepted:
        accepted = await self._call(self._accept, event, key, jobs, now)
        if accepted.jobs:
            for listener in self.listeners:
                listener()
        return accepted

    def _accept(self, conn: sqlite3.Connection, event: Event, key: str,
                jobs: Sequence[JobSpec], now: float) -> Accepted:
        cur = conn.execute(
            "INSERT INTO events(dedup_key, type, delivery_id, received_at, payload)"
            " VALUES (?,?,?,?,?) ON CONFLICT(dedup_key) DO NOTHING",
            (key, event.type, event.delivery_id, now, json.dumps(event.payload)))
        if cur.rowcount == 0:
            row = conn.execute("SELECT id FROM events WHERE dedup_key=?", (key,)).fetchone()
            return Accepted(row[0], True, 0)
        event_id = cur.lastrowid
        assert event_id is not None
        reason = self._track_delivery(conn, event)
        kept = [j for j in jobs if not (reason and j.suppress_stale)]
        conn.executemany(
            "INSERT INTO jobs(event_id, receiver, url_index, route, title, body, type, format,"
            " delivery_id, event_type, suppress_stale, created_at, next_attempt_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [(event_id, j.receiver, j.url_index, j.route, j.title, j.body, j.type, j.format,
              event.delivery_id, event.type, int(j.suppress_stale), now, now) for j in kept])
        self._backlog += len(kept)
        return Accepted(event_id, False, len(kept), reason if len(kept) < len(jobs) else "")

    def _track_delivery(self, conn: sqlite3.Connection, event: Event) -> str:
        """Record the newest timestamp per delivery; say why an update is stale, if it is."""
        ts = parse_timestamp(event.timestamp).timestamp()
        row = conn.execute("SELECT newest, cancelled FROM deliveries WHERE delivery_id=?",
                           (event.delivery_id,)).fetchone()
        newest, cancelled = (row or (None, 0))
        cancelling = event.type == "delivery.cancelled"
        conn.execute(
            "INSERT INTO deliveries(delivery_id, newest, cancelled) VALUES (?,?,?)"
            " ON CONFLICT(delivery_id) DO UPDATE SET newest=max(newest, excluded.newest),"
            " cancelled=max(cancelled, excluded.cancelled)",
            (event.delivery_id, ts, int(cancelling)))
        if cancelling:
            cur = conn.execute(
                "UPDATE jobs SET state='suppressed', last_error=? WHERE delivery_id=?"
                " AND event_type='delivery.updated' AND state='pending' AND suppress_stale=1",
                ("delivery was cancelled", event.delivery_id))
            self._backlog -= cur.rowcount
        if event.type != "delivery.updated":
            return ""
        if cancelled:
            return "delivery was already cancelled"
        if newest is not None and ts < newest:
            return "an update with a newer timestamp was already received"
        return ""

    async def claim(self, receiver: str, limit: int, now: float, lease: float, owner: str,
                    bucket: Bucket | None, circuit: Circuit) -> ClaimResult:
        return await self._call(self._claim, receiver, limit, now, lease, owner, bucket,
                                circuit)

    def _claim(self, conn: sqlite3.Connection, receiver: str, limit: int, now: float,
               lease: float, owner: str, bucket: Bucket | None, circuit: Circuit,
               ) -> ClaimResult:
        failures, open_until = self._receiver(conn, receiver, circuit)
        if open_until > now:
            return ClaimResult([], open_until, paused=True)
        if failures >= circuit.failures:  # half-open: one probe at a time
            busy = conn.execute("SELECT 1 FROM jobs WHERE receiver=? AND state='claimed'"
                                " AND lease_until>? LIMIT 1", (receiver, now)).fetchone()
            if busy:
                return ClaimResult([])
            limit = 1
        if bucket:
            tokens = _refill(conn, receiver, bucket, now)
            if tokens < 1:
                return ClaimResult([], now + (1 - tokens) * bucket.per / bucket.count)
            limit = min(limit, int(tokens))
        # Expired leases go back to pending first; they keep their old due time, so
        # they come first. Both statements walk the jobs_due index: no scan, no sort.
        conn.execute("UPDATE jobs SET state='pending', claim_token=NULL, claimed_by=NULL,"
                     " lease_until=NULL WHERE state='claimed' AND receiver=? AND lease_until<?",
                     (receiver, now))
        token = uuid.uuid4().hex
        rows = conn.execute(
            f"UPDATE jobs SET state='claimed', claim_token=?, claimed_by=?, lease_until=?"
            f" WHERE id IN (SELECT id FROM jobs WHERE state='pending' AND receiver=?"
            f" AND next_attempt_at<=? ORDER BY next_attempt_at, id LIMIT ?) RETURNING {JOB_COLUMNS}",
            (token, owner, now + lease, receiver, now, limit)).fetchall()
        if bucket and rows:
            conn.execute("UPDATE receivers SET tokens=tokens-? WHERE name=?", (len(rows), receiver))
        jobs = sorted((_row_job(r) for r in rows), key=lambda j: j.id)
        return ClaimResult(jobs, None if len(jobs) == limit else self._next_due(conn, receiver))

    @staticmethod
    def _next_due(conn: sqlite3.Connection, receiver: str) -> float | None:
        pending = conn.execute("SELECT min(next_attempt_at) FROM jobs WHERE state='pending'"
                               " AND receiver=?", (receiver,)).fetchone()[0]
        lease = conn.execute("SELECT min(lease_until) FROM jobs WHERE state='claimed'"
                             " AND receiver=?", (receiver,)).fetchone()[0]
        times = [t for t in (pending, lease) if t is not None]
        return min(times) if times else None

    @staticmethod
    def _receiver(conn: sqlite3.Connection, name: str, circuit: Circuit,
                  ) -> tuple[int, float]:
        row = conn.execute("SELECT failures, open_until FROM receivers WHERE name=?",
                           (name,)).fetchone()
        if row:
            return row[0], row[1]
        conn.execute("INSERT INTO receivers(name, cooldown) VALUES (?,?)", (name, circuit.cooldown))
        return 0, 0.0

    async def complete(self, job: Job, attempt: Attempt) -> None:
        await self._call(self._finish, job, "sent", None, attempt, True)

    async def bury(self, job: Job, attempt: Attempt) -> None:
        await self._call(self._finish, job, "dead", None, attempt, False)

    async def retry_later(self, job: Job, at: float, attempt: Attempt, circuit: Circuit,
                          ) -> bool:
        await self._call(self._finish, job, "pending", at, attempt, False)
        return await self._call(self._trip, job.receiver, attempt.at, circuit)

    async def release(self, job: Job) -> None:
        await self._call(self._release, job)

    def _release(self, conn: sqlite3.Connection, job: Job) -> None:
        conn.execute("UPDATE jobs SET state='pending', claim_token=NULL, claimed_by=NULL,"
                     " lease_until=NULL WHERE id=? AND claim_token=?", (job.id, job.claim_token))

    def _finish(self, conn: sqlite3.Connection, job: Job, state: str, at: float | None,
                attempt: Attempt, success: bool) -> None:
        cur = conn.execute(
            "UPDATE jobs SET state=?, attempts=attempts+1, last_error=?, claim_token=NULL,"
            " claimed_by=NULL, lease_until=NULL, next_attempt_at=coalesce(?, next_attempt_at),"
            " finished_at=? WHERE id=? AND claim_token=? AND state='claimed'",
            (state, attempt.error, at, attempt.at if state != "pending" else None, job.id,
             job.claim_token))
        if cur.rowcount == 0:
            raise StaleClaim(f"job {job.id} is no longer claimed by this worker")
        conn.execute("INSERT INTO attempts(job_id, at, outcome, error, duration) VALUES"
                      " (?,?,?,?,?)", (job.id, attempt.at, attempt.outcome, attempt.error,
                                        attempt.duration))
        if state != "pending":
            self._backlog -= 1
        if success:
            conn.execute("UPDATE receivers SET failures=0, open_until=0, cooldown=0 WHERE name=?",
                         (job.receiver,))

    def _trip(self, conn: sqlite3.Connection, receiver: str, now: float, circuit: Circuit,
              ) -> bool:
        """Count a failure; open the circuit at the threshold. True when it just opened."""
        failures, cooldown = conn.execute(
            "UPDATE receivers SET failures=failures+1 WHERE name=? RETURNING failures, cooldown",
            (receiver,)).fetchone() or (0, 0.0)
        if failures < circuit.failures:
            return False
        cooldown = min(max(cooldown * 2, circuit.cooldown), circuit.max_cooldown) \
            if failures > circuit.failures else circuit.cooldown
        conn.execute("UPDATE receivers SET open_until=?, cooldown=? WHERE name=?",
                     (now + cooldown, cooldown, receiver))
        return failures == circuit.failures

    async def active_receivers(self) -> set[str]:
        return await self._call(lambda conn: {r[0] for r in conn.execute(
            "SELECT DISTINCT receiver FROM jobs WHERE state IN ('pending','claimed')")})

    async def stats(self) -> Stats:
        return await self._call(self._stats)

    def _stats(self, conn: sqlite3.Connection) -> Stats:
        backlog = self._count_backlog(conn)
        dead = conn.execute("SELECT count(*) FROM jobs WHERE state='dead'").fetchone()[0]
        oldest = conn.execute("SELECT min(created_at) FROM jobs WHERE state IN"
                              " ('pending','claimed')").fetchone()[0]
        return Stats(backlog, dead, oldest)

    async def dead(self, receiver: str | None = None, limit: int = 100) -> list[Job]:
        return await self._call(self._dead, receiver, limit)

    def _dead(self, conn: sqlite3.Connection, receiver: str | None, limit: int) -> list[Job]:
        rows = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE state='dead' AND"
                            " (? IS NULL OR receiver=?) ORDER BY id LIMIT ?",
                            (receiver, receiver, limit)).fetchall()
        return [_row_job(r) for r in rows]

    async def detail(self, job_id: int) -> JobDetail | None:
        return await self._call(self._detail, job_id)

    def _detail(self, conn: sqlite3.Connection, job_id: int) -> JobDetail | None:
        row = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id=?", (job_id,)).fetchone()
        if not row:
            return None
        job = _row_job(row)
        payload = conn.execute("SELECT payload FROM events WHERE id=?",
                               (job.event_id,)).fetchone()[0]
        history = conn.execute("SELECT at, outcome, error, duration FROM attempts WHERE"
                               " job_id=? ORDER BY id", (job_id,)).fetchall()
        return JobDetail(job, json.loads(payload), tuple(Attempt(*h) for h in history))

    async def replay(self, job_ids: Sequence[int] | None, receiver: str | None, now: float,
                     ) -> int:
        count = await self._call(self._replay, list(job_ids) if job_ids else None, receiver, now)
        if count:
            for listener in self.listeners:
                listener()
        return count

    def _replay(self, conn: sqlite3.Connection, job_ids: list[int] | None,
                receiver: str | None, now: float) -> int:
        where, params = "state='dead'", list[Any]()
        if job_ids:
            where += f" AND id IN ({','.join('?' * len(job_ids))})"
            params += job_ids
        if receiver:
            where += " AND receiver=?"
            params.append(receiver)
        # A replay starts a fresh schedule: attempts reset, history kept.
        cur = conn.execute(f"UPDATE jobs SET state='pending', attempts=0, next_attempt_at=?,"
                           f" created_at=?, finished_at=NULL WHERE {where}", [now, now, *params])
        self._backlog += cur.rowcount
        return cur.rowcount

    async def purge(self, before: float, batch: int = 500) -> int:
        return await self._call(self._purge, before, batch)

    def _purge(self, conn: sqlite3.Connection, before: float, batch: int) -> int:
        ids = [r[0] for r in conn.execute(
            "SELECT id FROM events e WHERE received_at<? AND NOT EXISTS (SELECT 1 FROM jobs j"
            " WHERE j.event_id=e.id AND j.state IN ('pending','claimed','dead')) LIMIT ?",
            (before, batch))]
        if not ids:  # then the per-delivery ordering state of deliveries quiet as long
            return conn.execute("DELETE FROM deliveries WHERE rowid IN (SELECT rowid FROM"
                                " deliveries WHERE newest < ? LIMIT ?)", (before, batch)).rowcount
        marks = ",".join("?" * len(ids))
        conn.execute(f"DELETE FROM attempts WHERE job_id IN (SELECT id FROM jobs WHERE"
                     f" event_id IN ({marks}))", ids)
        conn.execute(f"DELETE FROM jobs WHERE event_id IN ({marks})", ids)
        conn.execute(f"DELETE FROM events WHERE id IN ({marks})", ids)
        return len(ids)


def _refill(conn: sqlite3.Connection, receiver: str, bucket: Bucket, now: float) -> float:
    """Top the receiver's bucket up for the time passed; return the tokens now available."""
    tokens, last = conn.execute("SELECT tokens, tokens_at FROM receivers WHERE name=?",
                                (receiver,)).fetchone()
    if tokens is None or last is None:
        tokens = float(bucket.count)
    else:
        tokens = min(float(bucket.count), tokens + max(0.0, now - last) * bucket.count / bucket.per)
    conn.execute("UPDATE receivers SET tokens=?, tokens_at=? WHERE name=?",
                 (tokens, now, receiver))
    return float(tokens)


def _owner_gone(owner: str | None, host: str) -> bool:
    """True when a claim's owner was a process on this host that no longer runs."""
    parts = (owner or "").rsplit(":", 2)
    if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
        return not owner
    pid = int(parts[1])
    if pid == os.getpid():
        return True  # a pid reused by us (PID 1 in a restarted container)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass


def _settle_all(results: list[tuple[Any, Any, BaseException | None]]) -> None:
    for future, value, error in results:
        _settle(future, value, error)


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
