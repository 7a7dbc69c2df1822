"""PostgreSQL store for several replicas: leased claims with `FOR UPDATE SKIP LOCKED`.

Every operation is one transaction on a pooled asyncpg connection. A receiver
URL's token bucket and circuit live in `receivers` (one row per receiver name and
URL index) and are read under `SELECT ... FOR UPDATE`, so a limit holds for the
whole deployment, not per replica. New jobs `NOTIFY`; one dedicated `LISTEN`
connection per process wakes its workers. Any connection or server failure
surfaces as StoreError (ingest answers 503, the worker backs off); the pool
reconnects by itself once the server is back.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, TypeVar

import asyncpg

from relay.errors import RelayError, StaleClaim, StoreError
from relay.events import Event, parse_timestamp
from relay.store import records, rules, sql
from relay.store.live import PostgresLive
from relay.store.pg_ingest import hold, insert_event, track_delivery
from relay.store.pg_ledger import PostgresLedger
from relay.store.pg_support import (
    CHANNEL,
    COMMAND_TIMEOUT,
    CONNECT_ERRORS,
    CONNECT_TIMEOUT,
    ERRORS,
    announce,
    describe,
    listen_forever,
    lock_receiver,
    redact,
    rows_touched,
    take,
)
from relay.store.pg_timers import PostgresTimers, apply_timers
from relay.store.relays import Place
from relay.store.schema import (
    SCHEMA_VERSION,
    check_version,
    log_migrated,
    migrations,
)
from relay.store.sql import numbered as q

log = logging.getLogger(__name__)
T = TypeVar("T")
BACKLOG_TTL = 1.0
MIGRATIONS = migrations("postgres")


class PostgresStore(PostgresLive, PostgresTimers, PostgresLedger, rules.Wakeups):
    # No connection floor (min_size 0): asyncpg would log a traceback for every failed
    # attempt to restore it while the server is down; connections open on demand instead.
    def __init__(self, url: str, min_size: int = 0, max_size: int = 10, create: bool = True,
                 ) -> None:
        self.url = url
        self.create = create  # False: a reader; a schema that is not there is an error
        self.min_size = min_size
        self.max_size = max_size
        self._subscribers: list[Callable[[], None]] = []
        self._timer_subscribers: list[Callable[[], None]] = []
        self._pool: Any = None
        self._schema = ""
        self._origin = secrets.token_hex(6)  # names this store in its NOTIFY payloads
        self._listen_task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._refresh_task: asyncio.Task[None] | None = None
        self._backlog = rules.Backlog(BACKLOG_TTL)

    def __repr__(self) -> str:
        return f"PostgresStore({redact(self.url)!r})"

    # ------------------------------------------------------------ plumbing

    async def open(self) -> None:
        if self._pool is not None:
            return
        # The DSN's own application_name (e.g. one per replica) wins over ours.
        named = "application_name=" in self.url.partition("?")[2]
        try:
            pool = await asyncpg.create_pool(
                self.url, min_size=self.min_size, max_size=self.max_size,
                timeout=CONNECT_TIMEOUT, command_timeout=COMMAND_TIMEOUT,
                server_settings=None if named else {"application_name": "kourier-relay"})
        except CONNECT_ERRORS as e:
            raise StoreError(f"cannot connect to {redact(self.url)}: {describe(e)}") from e
        try:
            async with pool.acquire() as conn:
                await self._migrate(conn)
                self._schema = await conn.fetchval("SELECT current_schema()")
                self._backlog.counted(await conn.fetchval(sql.BACKLOG))
        except BaseException as e:
            pool.terminate()
            if isinstance(e, CONNECT_ERRORS):
                raise StoreError(f"cannot open {redact(self.url)}: {describe(e)}") from e
            raise
        self._pool = pool
        self._listen_task = asyncio.create_task(
            listen_forever(self.url, self._notified, self._connected), name="pg-listen")

    async def close(self) -> None:
        for task in (self._listen_task, self._refresh_task):
            if task:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._listen_task = self._refresh_task = None
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 5.0)
            except (TimeoutError, *ERRORS):
                pool.terminate()

    async def _migrate(self, conn: Any) -> None:
        """Create or upgrade the schema; replicas starting together queue on one lock."""
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('kourier-relay schema '"
                               " || coalesce(current_schema(), '')))")
            exists = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = current_schema()"
                " AND tablename = 'schema_version')")
            version = await conn.fetchval("SELECT max(version) FROM schema_version") \
                if exists else 0
            check_version(version, redact(self.url), create=self.create)
            if not exists:
                await conn.execute("CREATE TABLE schema_version (version integer PRIMARY KEY,"
                                   " applied_at timestamptz NOT NULL DEFAULT now())")
            for step in range(version + 1, SCHEMA_VERSION + 1):
                await conn.execute(MIGRATIONS[step])
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", step)
        log_migrated(version)  # committed

    async def _tx(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `fn(conn, *args)` in one transaction; a lost deadlock race is retried."""
        for attempt in range(3):
            try:
                return await self._once(fn, *args)
            except asyncpg.TransactionRollbackError as e:
                if attempt == 2:
                    raise StoreError(f"store unavailable: {describe(e)}") from e
            except RelayError:
                raise
            except ERRORS as e:
                raise StoreError(f"store unavailable: {describe(e)}") from e
        raise AssertionError("unreachable")

    async def _once(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        pool = self._pool
        if pool is None:
            raise StoreError("store is not open")
        conn = await pool.acquire(timeout=COMMAND_TIMEOUT)
        try:
            async with conn.transaction():
                return await fn(conn, *args)
        finally:
            try:
                await pool.release(conn)
            except ERRORS as e:
                # After a commit this must not turn into an error: the caller would think
                # nothing happened (a claim would then sit out its lease unsent).
                log.debug("dropping a broken connection: %s", describe(e))

    @property
    def listening(self) -> bool:
        """The LISTEN connection is up: other replicas' work wakes this store."""
        return self._listening.is_set()

    def _connected(self) -> None:
        self._listening.set()
        self._wake(timers=True)  # work may have arrived while nobody was listening

    async def _notify(self, conn: Any, timers: bool = False) -> None:
        """Tell the other replicas (on commit): `schema origin jobs|timers`."""
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL,
                           f"{self._schema} {self._origin} {'timers' if timers else 'jobs'}")

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        schema, _, rest = payload.partition(" ")
        if schema != self._schema:  # other schemas in the same database are other relays
            return
        origin, _, kind = rest.partition(" ")
        if origin == self._origin:  # our own: this store woke its subscribers already
            return
        self._wake(timers=kind != "jobs")  # (an older relay sends the schema alone)

    # ------------------------------------------------------------ hot path

    async def ping(self) -> None:
        await self._tx(lambda conn: conn.execute(q(sql.PING), time.time()))

    def backlog_estimate(self) -> int:
        if self._backlog.stale and self._refresh_task is None and self._pool is not None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return self._backlog.value
            self._refresh_task = loop.create_task(self._refresh_backlog())
        return self._backlog.value

    async def _refresh_backlog(self) -> None:
        try:
            self._backlog.counted(await self._tx(lambda conn: conn.fetchval(sql.BACKLOG)))
        except StoreError as e:
            log.debug("backlog refresh failed: %s", e)
            self._backlog.counted(self._backlog.value)  # look again after the TTL
        finally:
            self._refresh_task = None

    async def accept(self, event: Event, key: str, jobs: Sequence[records.Notification], *, now: float,
                     timers: Sequence[records.TimerOp] = ()) -> records.Accepted:
        accepted, suppressed = await self._tx(self._accept, event, key, jobs, now, timers)
        self._backlog.add(accepted.jobs - suppressed)
        if accepted.jobs or accepted.timers:
            self._wake(timers=bool(accepted.timers))
        return accepted

    async def _accept(self, conn: Any, event: Event, key: str, jobs: Sequence[records.Notification],
                      now: float, timers: Sequence[records.TimerOp]) -> tuple[records.Accepted, int]:
        event_id = await insert_event(conn, event, key, now)
        if event_id < 0:
            return records.Accepted(-event_id, True, 0), 0
        ts = parse_timestamp(event.timestamp).timestamp()
        reason, suppressed = await track_delivery(conn, event, event_id, ts)
        kept = []
        for spec in (j for j in jobs if not (reason and j.suppress_stale)):
            job, replaced = await hold(conn, event_id, event, spec, ts, now)
            kept.append(job)
            suppressed += replaced
        await conn.executemany(q(sql.INSERT_JOB), sql.job_rows(event_id, event, kept, now, ts))
        queued = sql.active(kept)
        changes = await apply_timers(conn, timers, event_id, now, [j.spec for j in kept],
                                     event.delivery_id)
        if queued or changes:
            await self._notify(conn, timers=bool(changes))
        why = reason if len(kept) < len(jobs) else next((j.reason for j in kept if j.reason), "")
        return records.Accepted(event_id, False, queued, why, changes), suppressed

    async def claim(self, receiver: str, url_index: int, *, limit: int, now: float, lease: float,
                    owner: str, bucket: records.RateLimit | None,
                    circuit: records.Circuit | None) -> records.ClaimResult:
        return await self._tx(self._claim, (receiver, url_index), limit, now, lease, owner,
                              bucket, circuit)

    async def _claim(self, conn: Any, url: tuple[str, int], limit: int, now: float, lease: float,
                     owner: str, bucket: records.RateLimit | None,
                     circuit: records.Circuit | None) -> records.ClaimResult:
        row = await lock_receiver(conn, url, circuit)
        probing = rules.needs_probe_check(row, now, circuit) and \
            await conn.fetchval(q(sql.PROBE_OUT), *url, now) is not None
        admission = rules.admit(row, limit=limit, now=now, bucket=bucket, circuit=circuit,
                                probing=probing)
        jobs = await take(conn, url, admission.limit, now, lease, owner) \
            if admission.limit else []
        if admission.tokens is not None:
            await conn.execute(q(sql.SET_TOKENS), admission.tokens - len(jobs), now, *url)
        if not admission.limit:
            return records.ClaimResult([], admission.wait_until, admission.paused)
        due = await conn.fetchval(q(sql.NEXT_DUE), *url, *url) \
            if rules.wants_next_due(admission, len(jobs)) else None
        return records.ClaimResult(jobs, None if due is None else float(due))

    async def complete(self, job: records.Job, attempt: records.Attempt, *, reached: bool = True) -> None:
        async def complete(conn: Any) -> None:
            await self._finish(conn, job, "sent", None, attempt)
            if reached:
                await conn.execute(q(sql.CLOSE_CIRCUIT),
                                   *sql.close_args(job.receiver, job.url_index))

        await self._tx(complete)
        self._backlog.left("sent")

    async def bury(self, job: records.Job, attempt: records.Attempt, *,
                   circuit: records.Circuit | None = None) -> bool:
        opened = await self._tx(self._fail, job, attempt, "dead", None, circuit)
        self._backlog.left("dead")
        return opened

    async def retry_later(self, job: records.Job, attempt: records.Attempt, *, at: float,
                          circuit: records.Circuit) -> bool:
        return await self._tx(self._fail, job, attempt, "pending", at, circuit)

    async def _fail(self, conn: Any, job: records.Job, attempt: records.Attempt, state: records.JobState,
                    at: float | None, circuit: records.Circuit | None) -> bool:
        """Finish a failed attempt; with `circuit`, count it against the job's receiver URL
        (True: that opened its circuit)."""
        await self._finish(conn, job, state, at, attempt)
        if circuit is None:
            return False
        counted = await conn.fetchrow(q(sql.COUNT_FAILURE), job.receiver, job.url_index)
        tripped = counted and rules.trip(counted["failures"], counted["cooldown"], attempt.at,
                                         circuit)
        if not tripped:
            return False
        await conn.execute(q(sql.OPEN_CIRCUIT), tripped.open_until, tripped.cooldown,
                           job.receiver, job.url_index)
        return tripped.opened

    async def release(self, job: records.Job, *, at: float | None = None) -> None:
        async def release(conn: Any) -> None:
            if rows_touched(await conn.execute(q(sql.RELEASE), at, job.id, job.claim_token)):
                await self._notify(conn)  # another replica may send it now

        await self._tx(release)

    @staticmethod
    async def _finish(conn: Any, job: records.Job, state: records.JobState, at: float | None,
                      attempt: records.Attempt) -> None:
        if rows_touched(await conn.execute(q(sql.FINISH), *sql.finish_args(job, state, at, attempt))
                  ) == 0:
            raise StaleClaim(f"job {job.id} is no longer claimed by this worker")
        await conn.execute(q(sql.INSERT_ATTEMPT), *sql.attempt_args(job, attempt))

    async def active_receivers(self) -> set[tuple[str, int]]:
        rows = await self._tx(lambda conn: conn.fetch(sql.ACTIVE_RECEIVERS))
        return {(r[0], r[1]) for r in rows}

    async def replay(self, job_ids: Sequence[int] | None, receiver: str | None, now: float,
                     ) -> int:
        async def replay(conn: Any) -> int:
            # A replay starts a fresh schedule: attempts reset, history kept.
            count = rows_touched(await conn.execute(
                "UPDATE jobs SET state = 'pending', attempts = 0, next_attempt_at = $1,"
                " created_at = $1, finished_at = NULL WHERE state = 'dead'"
                " AND ($2::bigint[] IS NULL OR id = ANY($2::bigint[]))"
                " AND ($3::text IS NULL OR receiver = $3)",
                now, list(job_ids) if job_ids else None, receiver or None))
            if count:
                await self._notify(conn)
            return count

        count: int = await self._tx(replay)
        return self._queued(count, count)

    async def announce(self, owner: str, places: Collection[Place], *, now: float,
                       ) -> set[Place]:
        return await self._tx(announce, owner, places, now)

    async def withdraw(self, owner: str) -> None:
        await self._tx(lambda conn: conn.execute(q(sql.WITHDRAW), owner))

    async def retry_now(self, receiver: str, url_index: int, *, now: float) -> int:
        async def retry(conn: Any) -> int:
            await conn.execute(q(sql.CLOSE_CIRCUIT), *sql.close_args(receiver, url_index))
            count = rows_touched(await conn.execute(q(sql.RETRY_NOW), now, now, receiver,
                                                    url_index))
            await self._notify(conn)  # the circuit closed even where no job was waiting
            return count

        count: int = await self._tx(retry)
        self._wake()
        return count

    async def purge(self, before: float, batch: int = 500) -> int:
        """Delete up to `batch` finished events received before `before`, with their jobs."""
        status = await self._tx(lambda conn: conn.execute(
            "DELETE FROM events WHERE id IN (SELECT id FROM events e WHERE received_at < $1"
            " AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.event_id = e.id"
            f" AND j.state IN ('pending', 'claimed', 'dead', 'held')) AND {sql.KEEPS_EVENT}"
            " ORDER BY received_at LIMIT $2 FOR UPDATE SKIP LOCKED)", before, batch))
        if rows_touched(status):
            return rows_touched(status)
        status = await self._tx(lambda conn: conn.execute(
            f"DELETE FROM timers WHERE id IN ({q(sql.ENDED_TIMERS)} FOR UPDATE SKIP LOCKED)",
            before, batch))
        if rows_touched(status):
            return rows_touched(status)
        # Then the per-delivery ordering state of deliveries quiet for as long.
        status = await self._tx(lambda conn: conn.execute(
            "DELETE FROM deliveries WHERE delivery_id IN (SELECT delivery_id FROM deliveries"
            " WHERE newest < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)", before, batch))
        if rows_touched(status):
            return rows_touched(status)
        status = await self._tx(lambda conn: conn.execute(  # then quiet live messages
            q(sql.PURGE_LIVE_SKIP_LOCKED), before, before, batch))
        return rows_touched(status)

