"""PostgreSQL store for several replicas: leased claims with `FOR UPDATE SKIP LOCKED`.

Every operation is one transaction on a pooled asyncpg connection. A receiver's
token bucket and circuit live in `receivers` and are read under `SELECT ... FOR
UPDATE`, so a limit holds for the whole deployment, not per replica. New jobs
`NOTIFY`; one dedicated `LISTEN` connection per process wakes its workers. Any
connection or server failure surfaces as StoreError (ingest answers 503, the
worker backs off); the pool reconnects by itself once the server is back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

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
CHANNEL = "kourier_relay_jobs"
CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 10.0  # bounds a query on a connection whose server vanished silently
BACKLOG_TTL = 1.0
KEEPALIVE = 5.0
# InternalClientError: asyncpg's protocol state after the server dropped mid-command.
ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError,
          asyncio.TimeoutError)

MIGRATIONS: dict[int, str] = {1: """
CREATE TABLE events (
    id bigserial PRIMARY KEY,
    dedup_key text NOT NULL UNIQUE,
    type text NOT NULL,
    delivery_id text NOT NULL,
    received_at double precision NOT NULL,
    payload text NOT NULL
);
CREATE INDEX events_received ON events (received_at);
CREATE TABLE jobs (
    id bigserial PRIMARY KEY,
    event_id bigint NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    receiver text NOT NULL,
    url_index integer NOT NULL,
    route text NOT NULL,
    title text NOT NULL,
    body text NOT NULL,
    type text NOT NULL,
    format text NOT NULL,
    delivery_id text NOT NULL,
    event_type text NOT NULL,
    suppress_stale boolean NOT NULL DEFAULT false,
    state text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'claimed', 'sent', 'dead', 'suppressed')),
    attempts integer NOT NULL DEFAULT 0,
    created_at double precision NOT NULL,
    next_attempt_at double precision NOT NULL,
    lease_until double precision,
    claim_token text,
    claimed_by text,
    last_error text NOT NULL DEFAULT '',
    finished_at double precision
);
CREATE INDEX jobs_pending ON jobs (receiver, next_attempt_at, id) WHERE state = 'pending';
CREATE INDEX jobs_claimed ON jobs (receiver, lease_until) WHERE state = 'claimed';
CREATE INDEX jobs_dead ON jobs (receiver, id) WHERE state = 'dead';
CREATE INDEX jobs_event ON jobs (event_id);
CREATE INDEX jobs_delivery ON jobs (delivery_id) WHERE state = 'pending';
CREATE TABLE attempts (
    id bigserial PRIMARY KEY,
    job_id bigint NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    at double precision NOT NULL,
    outcome text NOT NULL,
    error text NOT NULL,
    duration double precision NOT NULL
);
CREATE INDEX attempts_job ON attempts (job_id);
CREATE TABLE receivers (
    name text PRIMARY KEY,
    tokens double precision,
    tokens_at double precision,
    failures integer NOT NULL DEFAULT 0,
    open_until double precision NOT NULL DEFAULT 0,
    cooldown double precision NOT NULL DEFAULT 0
);
CREATE TABLE deliveries (
    delivery_id text PRIMARY KEY,
    newest double precision NOT NULL,
    cancelled boolean NOT NULL DEFAULT false
);
"""}
JOB_COLUMNS = ("id, event_id, receiver, url_index, route, title, body, type, format, state, "
               "attempts, created_at, next_attempt_at, last_error, claim_token, delivery_id, "
               "event_type")
BACKLOG = "SELECT count(*) FROM jobs WHERE state IN ('pending', 'claimed')"


def redact(url: str) -> str:
    """The DSN with its password (in the netloc or the query) replaced by `***`."""
    try:
        parts = urlsplit(url)
    except ValueError:  # unparseable: say nothing of it but the scheme
        return url.split(":", 1)[0] + "://***"
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    query = urlencode([(k, "***" if k == "password" else v)
                       for k, v in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{hosts}", query=query))


def _row_job(row: Any) -> Job:
    r = tuple(row)
    return Job(*[*r[:13], r[13] or "", r[14] or "", r[15], r[16]])


def _count(status: str) -> int:
    """Rows touched, from a command status such as `UPDATE 3`."""
    return int(status.rsplit(" ", 1)[-1])


class PostgresStore:
    # No connection floor (min_size 0): asyncpg would log a traceback for every failed
    # attempt to restore it while the server is down; connections open on demand instead.
    def __init__(self, url: str, min_size: int = 0, max_size: int = 10) -> None:
        self.url = url
        self.min_size = min_size
        self.max_size = max_size
        self.listeners: list[Callable[[], None]] = []
        self._pool: Any = None
        self._schema = ""
        self._listen_task: asyncio.Task[None] | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        self._backlog = 0
        self._backlog_at = 0.0

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
        except (*ERRORS, ValueError) as e:
            raise StoreError(f"cannot connect to {redact(self.url)}: {_describe(e)}") from e
        try:
            async with pool.acquire() as conn:
                await self._migrate(conn)
                self._schema = await conn.fetchval("SELECT current_schema()")
                self._backlog = await conn.fetchval(BACKLOG)
        except BaseException as e:
            pool.terminate()
            if isinstance(e, (*ERRORS, ValueError)):  # ValueError: a malformed DSN
                raise StoreError(f"cannot open {redact(self.url)}: {_describe(e)}") from e
            raise
        self._pool = pool
        self._backlog_at = time.monotonic()
        self._listen_task = asyncio.create_task(self._listen_forever(), name="pg-listen")

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
            if version > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"{redact(self.url)} has schema version {version}; this relay knows up to"
                    f" {SCHEMA_VERSION}: upgrade the relay")
            if not exists:
                await conn.execute("CREATE TABLE schema_version (version integer PRIMARY KEY,"
                                   " applied_at timestamptz NOT NULL DEFAULT now())")
            for step in range(version + 1, SCHEMA_VERSION + 1):
                await conn.execute(MIGRATIONS[step])
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", step)
                log.info("store schema migrated to version %d", step)

    async def _tx(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `fn(conn, *args)` in one transaction; a lost deadlock race is retried."""
        for attempt in range(3):
            try:
                return await self._once(fn, *args)
            except asyncpg.TransactionRollbackError as e:
                if attempt == 2:
                    raise StoreError(f"store unavailable: {_describe(e)}") from e
            except RelayError:
                raise
            except ERRORS as e:
                raise StoreError(f"store unavailable: {_describe(e)}") from e
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
                log.debug("dropping a broken connection: %s", _describe(e))

    def _wake(self) -> None:
        for listener in list(self.listeners):
            listener()

    async def _notify(self, conn: Any) -> None:
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, self._schema)

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        if payload == self._schema:  # other schemas in the same database are other relays
            self._wake()

    async def _listen_forever(self) -> None:
        """Keep one LISTEN connection up, reconnecting with backoff when it drops."""
        backoff = 0.5
        while True:
            try:
                conn = await asyncpg.connect(self.url, timeout=CONNECT_TIMEOUT,
                                             command_timeout=COMMAND_TIMEOUT)
            except (*ERRORS, ValueError) as e:
                log.warning("LISTEN connection failed, retrying in %.1fs: %s", backoff,
                            _describe(e))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 0.5
            try:
                await self._listen(conn)
                log.warning("LISTEN connection lost; reconnecting")
            except ERRORS as e:
                log.warning("LISTEN connection lost: %s", _describe(e))
            finally:
                conn.terminate()
            await asyncio.sleep(backoff)

    async def _listen(self, conn: Any) -> None:
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        await conn.add_listener(CHANNEL, self._notified)
        self._wake()  # jobs may have arrived while nobody was listening
        while not lost.is_set():
            try:
                await asyncio.wait_for(lost.wait(), KEEPALIVE)
            except TimeoutError:
                await conn.execute("SELECT 1", timeout=KEEPALIVE)

    # ------------------------------------------------------------ protocol

    async def ping(self) -> None:
        await self._tx(lambda conn: conn.fetchval("SELECT 1"))

    def backlog_estimate(self) -> int:
        stale = time.monotonic() - self._backlog_at > BACKLOG_TTL
        if stale and self._refresh_task is None and self._pool is not None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return self._backlog
            self._refresh_task = loop.create_task(self._refresh_backlog())
        return self._backlog

    async def _refresh_backlog(self) -> None:
        try:
            self._backlog = await self._tx(lambda conn: conn.fetchval(BACKLOG))
        except StoreError as e:
            log.debug("backlog refresh failed: %s", e)
        finally:
            self._backlog_at = time.monotonic()
            self._refresh_task = None

    async def accept(self, event: Event, key: str, jobs: Sequence[JobSpec], now: float,
                     ) -> Accepted:
        accepted, suppressed = await self._tx(self._accept, event, key, jobs, now)
        self._backlog += accepted.jobs - suppressed
        if accepted.jobs:
            self._wake()
        return accepted

    async def _accept(self, conn: Any, event: Event, key: str, jobs: Sequence[JobSpec],
                      now: float) -> tuple[Accepted, int]:
        event_id = await self._insert_event(conn, event, key, now)
        if event_id < 0:
            return Accepted(-event_id, True, 0), 0
        reason, suppressed = await self._track_delivery(conn, event)
        kept = [j for j in jobs if not (reason and j.suppress_stale)]
        await conn.executemany(
            "INSERT INTO jobs (event_id, receiver, url_index, route, title, body, type, format,"
            " delivery_id, event_type, suppress_stale, created_at, next_attempt_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            [(event_id, j.receiver, j.url_index, j.route, j.title, j.body, j.type, j.format,
              event.delivery_id, event.type, j.suppress_stale, now, now) for j in kept])
        if kept:
            await self._notify(conn)
        why = reason if len(kept) < len(jobs) else ""
        return Accepted(event_id, False, len(kept), why), suppressed

    @staticmethod
    async def _insert_event(conn: Any, event: Event, key: str, now: float) -> int:
        """The new event's id, or minus the id of the event that already has this key."""
        for _ in range(3):  # the holder of the key may be purged between the two statements
            new = await conn.fetchval(
                "INSERT INTO events (dedup_key, type, delivery_id, received_at, payload)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (dedup_key) DO NOTHING RETURNING id",
                key, event.type, event.delivery_id, now, json.dumps(event.payload))
            if new is not None:
                return int(new)
            old = await conn.fetchval("SELECT id FROM events WHERE dedup_key = $1", key)
            if old is not None:
                return -int(old)
        raise StoreError(f"dedup key {key!r} keeps changing hands; retry later")

    @staticmethod
    async def _track_delivery(conn: Any, event: Event) -> tuple[str, int]:
        """Record the newest timestamp per delivery; say why an update is stale, if it is."""
        ts = parse_timestamp(event.timestamp).timestamp()
        cancelling = event.type == "delivery.cancelled"
        # A placeholder row first, so that concurrent events of one delivery queue on its lock.
        await conn.execute("INSERT INTO deliveries (delivery_id, newest) VALUES ($1, '-Infinity')"
                           " ON CONFLICT (delivery_id) DO NOTHING", event.delivery_id)
        newest, cancelled = await conn.fetchrow(
            "SELECT newest, cancelled FROM deliveries WHERE delivery_id = $1 FOR UPDATE",
            event.delivery_id)
        await conn.execute("UPDATE deliveries SET newest = greatest(newest, $2),"
                           " cancelled = cancelled OR $3 WHERE delivery_id = $1",
                           event.delivery_id, ts, cancelling)
        suppressed = 0
        if cancelling:
            suppressed = _count(await conn.execute(
                "UPDATE jobs SET state = 'suppressed', last_error = 'delivery was cancelled'"
                " WHERE delivery_id = $1 AND event_type = 'delivery.updated'"
                " AND state = 'pending' AND suppress_stale", event.delivery_id))
        if event.type != "delivery.updated":
            return "", suppressed
        if cancelled:
            return "delivery was already cancelled", suppressed
        if ts < newest:
            return "an update with a newer timestamp was already received", suppressed
        return "", suppressed

    async def claim(self, receiver: str, limit: int, now: float, lease: float, owner: str,
                    bucket: Bucket | None, circuit: Circuit) -> ClaimResult:
        return await self._tx(self._claim, receiver, limit, now, lease, owner, bucket, circuit)

    async def _claim(self, conn: Any, receiver: str, limit: int, now: float, lease: float,
                     owner: str, bucket: Bucket | None, circuit: Circuit) -> ClaimResult:
        state = await _lock_receiver(conn, receiver, circuit)
        if state["open_until"] > now:
            return ClaimResult([], state["open_until"], paused=True)
        if state["failures"] >= circuit.failures:  # half-open: one probe at a time
            if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM jobs WHERE receiver = $1"
                                   " AND state = 'claimed' AND lease_until > $2)", receiver, now):
                return ClaimResult([])
            limit = 1
        tokens = 0.0
        if bucket:
            tokens = _refill(state["tokens"], state["tokens_at"], bucket, now)
            if tokens < 1:
                await _set_tokens(conn, receiver, tokens, now)
                return ClaimResult([], now + (1 - tokens) * bucket.per / bucket.count)
            limit = min(limit, int(tokens))
        jobs = await _take(conn, receiver, limit, now, lease, owner)
        if bucket:
            await _set_tokens(conn, receiver, tokens - len(jobs), now)
        return ClaimResult(jobs, None if len(jobs) == limit else await _next_due(conn, receiver))

    async def complete(self, job: Job, attempt: Attempt) -> None:
        async def finish_and_close(conn: Any) -> None:
            await self._finish(conn, job, "sent", None, attempt)
            await _close_circuit(conn, job.receiver)

        await self._tx(finish_and_close)
        self._backlog -= 1

    async def bury(self, job: Job, attempt: Attempt) -> None:
        await self._tx(self._finish, job, "dead", None, attempt)
        self._backlog -= 1

    async def retry_later(self, job: Job, at: float, attempt: Attempt, circuit: Circuit,
                          ) -> bool:
        async def finish_and_trip(conn: Any) -> bool:
            await self._finish(conn, job, "pending", at, attempt)
            return await _trip(conn, job.receiver, attempt.at, circuit)

        return await self._tx(finish_and_trip)

    async def release(self, job: Job) -> None:
        async def release(conn: Any) -> None:
            status = await conn.execute(
                "UPDATE jobs SET state = 'pending', claim_token = NULL, claimed_by = NULL,"
                " lease_until = NULL WHERE id = $1 AND claim_token = $2", job.id, job.claim_token)
            if _count(status):
                await self._notify(conn)  # another replica may send it now

        await self._tx(release)

    @staticmethod
    async def _finish(conn: Any, job: Job, state: str, at: float | None, attempt: Attempt,
                      ) -> None:
        status = await conn.execute(
            "UPDATE jobs SET state = $1, attempts = attempts + 1, last_error = $2,"
            " claim_token = NULL, claimed_by = NULL, lease_until = NULL,"
            " next_attempt_at = coalesce($3, next_attempt_at), finished_at = $4"
            " WHERE id = $5 AND claim_token = $6 AND state = 'claimed'",
            state, attempt.error, at, attempt.at if state != "pending" else None, job.id,
            job.claim_token)
        if _count(status) == 0:
            raise StaleClaim(f"job {job.id} is no longer claimed by this worker")
        await conn.execute("INSERT INTO attempts (job_id, at, outcome, error, duration)"
                           " VALUES ($1, $2, $3, $4, $5)", job.id, attempt.at, attempt.outcome,
                           attempt.error, attempt.duration)

    async def active_receivers(self) -> set[str]:
        rows = await self._tx(lambda conn: conn.fetch(
            "SELECT DISTINCT receiver FROM jobs WHERE state IN ('pending', 'claimed')"))
        return {r[0] for r in rows}

    async def stats(self) -> Stats:
        return await self._tx(self._stats)

    async def _stats(self, conn: Any) -> Stats:
        self._backlog = await conn.fetchval(BACKLOG)
        self._backlog_at = time.monotonic()
        dead = await conn.fetchval("SELECT count(*) FROM jobs WHERE state = 'dead'")
        oldest = await conn.fetchval("SELECT min(created_at) FROM jobs"
                                     " WHERE state IN ('pending', 'claimed')")
        return Stats(self._backlog, dead, oldest)

    async def dead(self, receiver: str | None = None, limit: int = 100) -> list[Job]:
        rows = await self._tx(lambda conn: conn.fetch(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'dead'"
            " AND ($1::text IS NULL OR receiver = $1) ORDER BY id LIMIT $2", receiver, limit))
        return [_row_job(r) for r in rows]

    async def detail(self, job_id: int) -> JobDetail | None:
        return await self._tx(self._detail, job_id)

    @staticmethod
    async def _detail(conn: Any, job_id: int) -> JobDetail | None:
        row = await conn.fetchrow(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1", job_id)
        if row is None:
            return None
        job = _row_job(row)
        payload = await conn.fetchval("SELECT payload FROM events WHERE id = $1", job.event_id)
        history = await conn.fetch("SELECT at, outcome, error, duration FROM attempts"
                                   " WHERE job_id = $1 ORDER BY id", job_id)
        return JobDetail(job, json.loads(payload), tuple(Attempt(*h) for h in history))

    async def replay(self, job_ids: Sequence[int] | None, receiver: str | None, now: float,
                     ) -> int:
        async def replay(conn: Any) -> int:
            # A replay starts a fresh schedule: attempts reset, history kept.
            count = _count(await conn.execute(
                "UPDATE jobs SET state = 'pending', attempts = 0, next_attempt_at = $1,"
                " created_at = $1, finished_at = NULL WHERE state = 'dead'"
                " AND ($2::bigint[] IS NULL OR id = ANY($2::bigint[]))"
                " AND ($3::text IS NULL OR receiver = $3)",
                now, list(job_ids) if job_ids else None, receiver or None))
            if count:
                await self._notify(conn)
            return count

        count = await self._tx(replay)
        self._backlog += count
        if count:
            self._wake()
        return count

    async def purge(self, before: float, batch: int = 500) -> int:
        """Delete up to `batch` finished events received before `before`, with their jobs."""
        status = await self._tx(lambda conn: conn.execute(
            "DELETE FROM events WHERE id IN (SELECT id FROM events e WHERE received_at < $1"
            " AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.event_id = e.id"
            " AND j.state IN ('pending', 'claimed', 'dead'))"
            " ORDER BY received_at LIMIT $2 FOR UPDATE SKIP LOCKED)", before, batch))
        if _count(status):
            return _count(status)
        # Then the per-delivery ordering state of deliveries quiet for as long.
        status = await self._tx(lambda conn: conn.execute(
            "DELETE FROM deliveries WHERE delivery_id IN (SELECT delivery_id FROM deliveries"
            " WHERE newest < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)", before, batch))
        return _count(status)


async def _lock_receiver(conn: Any, name: str, circuit: Circuit) -> Any:
    """The receiver's row, locked until the transaction ends (created on first use)."""
    query = ("SELECT failures, open_until, tokens, tokens_at FROM receivers WHERE name = $1"
             " FOR UPDATE")
    row = await conn.fetchrow(query, name)
    if row is None:
        await conn.execute("INSERT INTO receivers (name, cooldown) VALUES ($1, $2)"
                           " ON CONFLICT (name) DO NOTHING", name, circuit.cooldown)
        row = await conn.fetchrow(query, name)
    return row


async def _take(conn: Any, receiver: str, limit: int, now: float, lease: float, owner: str,
                ) -> list[Job]:
    """Claim up to `limit` due jobs: expired leases first, then pending by due time."""
    ids = [r[0] for r in await conn.fetch(
        "SELECT id FROM jobs WHERE receiver = $1 AND state = 'claimed' AND lease_until < $2"
        " ORDER BY lease_until LIMIT $3 FOR UPDATE SKIP LOCKED", receiver, now, limit)]
    if len(ids) < limit:
        ids += [r[0] for r in await conn.fetch(
            "SELECT id FROM jobs WHERE receiver = $1 AND state = 'pending'"
            " AND next_attempt_at <= $2 ORDER BY next_attempt_at, id LIMIT $3"
            " FOR UPDATE SKIP LOCKED", receiver, now, limit - len(ids))]
    if not ids:
        return []
    rows = await conn.fetch(
        f"UPDATE jobs SET state = 'claimed', claim_token = $1, claimed_by = $2,"
        f" lease_until = $3 WHERE id = ANY($4::bigint[]) RETURNING {JOB_COLUMNS}",
        uuid.uuid4().hex, owner, now + lease, ids)
    return sorted((_row_job(r) for r in rows), key=lambda j: j.id)


async def _next_due(conn: Any, receiver: str) -> float | None:
    """When this receiver next has a job to claim: a due retry or an expiring lease."""
    value = await conn.fetchval(
        "SELECT least((SELECT min(next_attempt_at) FROM jobs WHERE receiver = $1"
        " AND state = 'pending'), (SELECT min(lease_until) FROM jobs WHERE receiver = $1"
        " AND state = 'claimed'))", receiver)
    return None if value is None else float(value)


def _refill(tokens: float | None, last: float | None, bucket: Bucket, now: float) -> float:
    """The tokens available now, topped up for the time passed since `last`."""
    if tokens is None or last is None:
        return float(bucket.count)
    return min(float(bucket.count), tokens + max(0.0, now - last) * bucket.count / bucket.per)


async def _set_tokens(conn: Any, receiver: str, tokens: float, now: float) -> None:
    await conn.execute("UPDATE receivers SET tokens = $2, tokens_at = $3 WHERE name = $1",
                       receiver, tokens, now)


async def _close_circuit(conn: Any, receiver: str) -> None:
    # Only a row that needs it is touched, so a success does not queue behind claims.
    await conn.execute("UPDATE receivers SET failures = 0, open_until = 0, cooldown = 0"
                       " WHERE name = $1 AND (failures <> 0 OR open_until <> 0 OR cooldown <> 0)",
                       receiver)


async def _trip(conn: Any, receiver: str, now: float, circuit: Circuit) -> bool:
    """Count a failure; open the circuit at the threshold. True when it just opened."""
    row = await conn.fetchrow("UPDATE receivers SET failures = failures + 1 WHERE name = $1"
                              " RETURNING failures, cooldown", receiver)
    if row is None or row["failures"] < circuit.failures:
        return False
    failures, cooldown = row["failures"], row["cooldown"]
    cooldown = min(max(cooldown * 2, circuit.cooldown), circuit.max_cooldown) \
        if failures > circuit.failures else circuit.cooldown
    await conn.execute("UPDATE receivers SET open_until = $2, cooldown = $3 WHERE name = $1",
                       receiver, now + cooldown, cooldown)
    return bool(failures == circuit.failures)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
