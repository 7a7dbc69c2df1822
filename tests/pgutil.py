"""PostgreSQL for tests: the server at KOURIER_TEST_PG_DSN, a schema per test, and a
private throwaway cluster for tests that must stop the server.

A test picks its schema at the call site:
- `fresh_schema`: a new EMPTY schema, dropped after the test. For what must start from
  nothing: migrations, "no relay schema" errors, replicas creating the schema together,
  and relays run as processes (a relay that failed to stop can only harm a dropped schema).
- `migrated_schema`: a schema the relay's own migrations made, taken from this test
  process's pool (~100 ms of DDL saved per test; it is made the first time). After the
  test it is emptied and checked against what migration leaves (tables, columns,
  constraints, indexes, no trigger or function more, schema_version 1..N, sequences
  restarted); a schema that differs, or whose test failed, is dropped instead.

Without KOURIER_TEST_PG_DSN (or with the server unreachable) PostgreSQL tests
skip and say why; with KOURIER_REQUIRE_PG=1 (as `.ci/run` sets) they fail instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

ENV_DSN = "KOURIER_TEST_PG_DSN"
T = TypeVar("T")
_checked: dict[str, str] = {}  # dsn -> "" when reachable, else why not


def unavailable(reason: str) -> NoReturn:
    """Skip, or fail when PostgreSQL tests are required (KOURIER_REQUIRE_PG=1)."""
    if os.environ.get("KOURIER_REQUIRE_PG") == "1":
        pytest.fail(f"PostgreSQL is required (KOURIER_REQUIRE_PG=1) but {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL test skipped: {reason}")


def with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


def with_schema(dsn: str, schema: str) -> str:
    """The DSN with `search_path` set to `schema` (libpq's `options=-csearch_path=...`).

    Commits do not wait for the server's WAL flush (`synchronous_commit=off`): the
    tests kill relays, never this server, and each commit would otherwise wait on a
    disk flush (the private cluster below runs with `fsync=off` for the same reason).
    """
    sep = "&" if urlsplit(dsn).query else "?"
    options = quote(f"-csearch_path={schema} -csynchronous_commit=off", safe="")
    return f"{dsn}{sep}options={options}"


async def base_dsn() -> str:
    """The test server's DSN, once it is known to answer (its database is created if missing)."""
    dsn = os.environ.get(ENV_DSN, "")
    if not dsn:
        unavailable(f"{ENV_DSN} is not set (e.g. postgresql://postgres@127.0.0.1:5432/test)")
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        unavailable("asyncpg is not installed (pip install 'kourier-relay[postgres]')")
    if dsn not in _checked:
        _checked[dsn] = await _reachable(dsn)
    if _checked[dsn]:
        unavailable(_checked[dsn])
    return dsn


async def _reachable(dsn: str) -> str:
    import asyncpg as pg

    try:
        conn = await pg.connect(dsn, timeout=3)
    except pg.InvalidCatalogNameError:
        database = urlsplit(dsn).path.lstrip("/")
        try:
            admin = await pg.connect(with_database(dsn, "postgres"), timeout=3)
            await admin.execute(f'CREATE DATABASE "{database}"')
            await admin.close()
            conn = await pg.connect(dsn, timeout=3)
        except (OSError, pg.PostgresError) as e:
            return f"database {database!r} is missing and cannot be created: {e}"
    except (OSError, pg.PostgresError, TimeoutError) as e:
        host = urlsplit(dsn).hostname
        return f"the server at {host} is unreachable ({type(e).__name__}: {e})"
    await conn.close()
    return ""


@contextlib.asynccontextmanager
async def fresh_schema(dsn: str) -> AsyncIterator[str]:
    """A new empty schema for one test; yields a DSN whose search_path is that schema."""
    import asyncpg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(dsn, server_settings={"synchronous_commit": "off"})
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        yield with_schema(dsn, schema)
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()


async def fetch(dsn: str, sql: str, *args: Any, one: bool = False) -> Any:
    """The rows `sql` returns (`one`: its first value), on a connection of its own (closed
    again)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return await (conn.fetchval if one else conn.fetch)(sql, *args)
    finally:
        await conn.close()


async def fetchval(dsn: str, sql: str, *args: Any) -> Any:
    """The first value `sql` returns, on a connection of its own."""
    return await fetch(dsn, sql, *args, one=True)


# Every object in the current schema, one line each, in a fixed order, without the schema's
# name (pg_get_indexdef writes it), so equal schemas read the same. Internal triggers (those
# of foreign keys) are named by OID: their constraint's name stands in. pg_class is read
# once, the rest through the indexes on a relation's oid (the test server's catalogs are
# large: every fresh schema adds ~50 relations and their columns, and drops them).
FINGERPRINT = """
WITH rel AS MATERIALIZED (
  SELECT oid, relname, relkind, relpersistence, relrowsecurity, reloptions, relacl FROM pg_class
  WHERE relnamespace = current_schema()::regnamespace)
SELECT replace(string_agg(line, E'\\n' ORDER BY line), current_schema() || '.', '') FROM (
  SELECT concat_ws(' ', 'rel', relname, relkind, relpersistence, relrowsecurity,
                   reloptions::text, relacl::text) AS line FROM rel
  UNION ALL
  SELECT concat_ws(' ', 'col', r.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
                   a.attcollation, a.attnotnull, a.attisdropped, a.attidentity, a.attgenerated,
                   (SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d
                    WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum))
    FROM rel r, LATERAL (SELECT * FROM pg_attribute WHERE attrelid = r.oid AND attnum > 0) a
  UNION ALL
  SELECT concat_ws(' ', 'con', r.relname, k.conname, pg_get_constraintdef(k.oid))
    FROM rel r, LATERAL (SELECT * FROM pg_constraint WHERE conrelid = r.oid) k
  UNION ALL
  SELECT concat_ws(' ', 'idx', pg_get_indexdef(i.indexrelid), i.indisvalid)
    FROM rel r, LATERAL (SELECT * FROM pg_index WHERE indrelid = r.oid) i
  UNION ALL
  SELECT concat_ws(' ', 'seq', r.relname, s.seqtypid::regtype::text, s.seqstart, s.seqincrement,
                   s.seqmin, s.seqmax, s.seqcycle)
    FROM rel r, LATERAL (SELECT * FROM pg_sequence WHERE seqrelid = r.oid) s
  UNION ALL
  SELECT concat_ws(' ', 'trigger', r.relname,
                   CASE WHEN t.tgisinternal THEN (SELECT conname FROM pg_constraint
                                                  WHERE oid = t.tgconstraint) ELSE t.tgname END,
                   t.tgfoid::regproc::text, t.tgtype, t.tgenabled)
    FROM rel r, LATERAL (SELECT * FROM pg_trigger WHERE tgrelid = r.oid) t
  UNION ALL
  SELECT concat_ws(' ', 'rule', r.relname, w.rulename, w.ev_enabled)
    FROM rel r, LATERAL (SELECT * FROM pg_rewrite WHERE ev_class = r.oid) w
  UNION ALL
  SELECT concat_ws(' ', 'policy', r.relname, p.polname)
    FROM rel r, LATERAL (SELECT * FROM pg_policy WHERE polrelid = r.oid) p
  UNION ALL
  SELECT concat_ws(' ', 'function', oid::regprocedure::text) FROM pg_proc
    WHERE pronamespace = current_schema()::regnamespace
  UNION ALL
  SELECT concat_ws(' ', 'type', typname, typtype) FROM pg_type
    WHERE typnamespace = current_schema()::regnamespace
  UNION ALL
  SELECT concat_ws(' ', 'constraint', conname, pg_get_constraintdef(oid)) FROM pg_constraint
    WHERE connamespace = current_schema()::regnamespace AND conrelid = 0
  UNION ALL
  SELECT concat_ws(' ', 'statistics', stxname) FROM pg_statistic_ext
    WHERE stxnamespace = current_schema()::regnamespace
) lines
"""


# The catalog and schema_version, in one round trip.
STATE = f"SELECT ({FINGERPRINT}), (SELECT array_agg(version ORDER BY version) FROM schema_version)"


@dataclass(frozen=True)
class Migrated:
    """What migration leaves in a schema, learnt from the first one this process makes."""

    tables: tuple[str, ...]  # schema_version first, then those emptied after each test
    sequences: tuple[str, ...]
    catalog: str  # FINGERPRINT
    versions: list[int]


class _Admin:
    """This test process's connection for making, resetting and dropping pooled schemas.

    Every test runs on an event loop of its own and an asyncpg connection belongs to one
    loop, so this one lives on a loop of its own, in a daemon thread. One warm connection
    instead of one per test: a new backend reads the (large) catalogs afresh, ~40 ms.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._conn: Any = None

    async def run(self, dsn: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """`await fn(conn, *args)` on the admin connection to `dsn`."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="pg-admin",
                                            daemon=True)
            self._thread.start()
        done = asyncio.run_coroutine_threadsafe(self._call(dsn, fn, *args), self._loop)
        return await asyncio.wrap_future(done)

    async def _call(self, dsn: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        import asyncpg

        if self._conn is None:  # a lock a test left held is an error here, not a hang
            self._conn = await asyncpg.connect(
                dsn, server_settings={"synchronous_commit": "off", "lock_timeout": "20s"})
        try:
            return await fn(self._conn, *args)
        except BaseException:
            conn, self._conn = self._conn, None  # whatever state it is in, the next gets a new one
            conn.terminate()
            raise

    def stop(self, dsn: str, schemas: list[str]) -> None:
        """Drop `schemas`, close the connection, end the thread."""
        if self._loop is None or self._thread is None:
            return

        async def end() -> None:
            try:
                for schema in schemas:
                    await self._call(dsn, _drop, schema)
            finally:
                if self._conn is not None:
                    await self._conn.close()
                    self._conn = None

        try:
            asyncio.run_coroutine_threadsafe(end(), self._loop).result(60)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            if not self._thread.is_alive():
                self._loop.close()
            self._loop = self._thread = None


_admin = _Admin()
_reference: Migrated | None = None
_pool: list[str] = []  # migrated schemas no test holds now, each as migration left it
_held: dict[str, bool] = {}  # schema -> may go back to the pool after its test


async def _create(conn: Any, schema: str) -> None:
    await conn.execute(f"CREATE SCHEMA {schema}")


async def _drop(conn: Any, schema: str) -> None:
    await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


async def _describe(conn: Any, schema: str) -> Migrated:
    async with conn.transaction():
        await conn.execute(f"SET LOCAL search_path TO {schema}")
        tables, sequences = [tuple(r[0] for r in await conn.fetch(
            "SELECT relname FROM pg_class WHERE relnamespace = current_schema()::regnamespace"
            " AND relkind::text = $1 ORDER BY relname <> 'schema_version', relname", kind))
            for kind in "rS"]
        catalog, versions = await conn.fetchrow(STATE)
    return Migrated(tables, sequences, catalog, versions)


async def _reset(conn: Any, schema: str) -> bool:
    """Empty a used schema and check it is as migration left it; False: it is not."""
    import asyncpg

    reference = _reference
    assert reference is not None
    try:
        async with conn.transaction():
            # A prepared statement is parsed again when the search_path differs (PREPARE).
            await conn.execute(f"SET LOCAL search_path TO {schema}")
            # Every transaction on these tables has ended, and none starts during the reset.
            await conn.execute(f"LOCK TABLE {', '.join(reference.tables)} IN ACCESS EXCLUSIVE MODE")
            # DELETE, not TRUNCATE: a test's few rows go in ~2 ms; TRUNCATE makes new files, ~100.
            # With no trigger, rule or child table (the catalog check), no row is left.
            await conn.execute("".join(f"DELETE FROM {t};\n" for t in reference.tables[1:])
                               + "".join(f"SELECT setval('{s}', 1, false);\n"
                                         for s in reference.sequences))
            if not await as_migrated(conn):
                raise _NotPristine
        return True
    except (_NotPristine, asyncpg.PostgresError):  # a fault trigger, a dropped table...
        return False  # (rolled back; the connection is fine)


async def as_migrated(conn: Any) -> bool:
    """The current schema's catalog and schema_version are as migration left them (the
    first migrated schema of this test process shows how)."""
    assert _reference is not None, "no migrated schema made yet"
    catalog, versions = await conn.fetchrow(STATE)
    return (catalog, versions) == (_reference.catalog, _reference.versions)


class _NotPristine(Exception):
    """Rolls the reset back: the schema is dropped instead."""


async def _new_migrated(dsn: str) -> str:
    """A new schema, migrated by the relay itself (a store opened on it and closed)."""
    from relay.store import open_store

    global _reference
    schema = f"t_{uuid.uuid4().hex[:12]}"
    await _admin.run(dsn, _create, schema)
    store = open_store(with_schema(dsn, schema))
    await store.open()
    await store.close()
    made = await _admin.run(dsn, _describe, schema)
    if _reference is None:
        _reference = made
    elif made != _reference:  # migration is deterministic, or comparing schemas means nothing
        raise AssertionError(f"a new migrated schema differs from the first one: {made}")
    return schema


@contextlib.asynccontextmanager
async def migrated_schema(dsn: str) -> AsyncIterator[str]:
    """A schema as the relay's migrations leave it (see the module's docstring); yields its DSN.

    It goes back to the pool only when the block ends normally and no phase of the test
    failed (`pytest_runtest_makereport`); otherwise it is dropped."""
    schema = _pool.pop() if _pool else await _new_migrated(dsn)
    _held[schema] = True
    try:
        yield with_schema(dsn, schema)
    except BaseException:
        _held[schema] = False
        raise
    finally:
        reusable = _held.pop(schema)
        pristine = False
        try:
            pristine = reusable and await _admin.run(dsn, _reset, schema)
        finally:
            if pristine:
                _pool.append(schema)
            else:
                await _admin.run(dsn, _drop, schema)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None],
                              ) -> Iterator[pytest.TestReport]:
    """A test that failed (or whose setup did) leaves its schemas to be dropped, not reused."""
    report: pytest.TestReport = yield
    if report.failed:
        for schema in _held:
            _held[schema] = False
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Drop this process's pooled schemas (each xdist worker has its own pool), and any a
    test still holds (a teardown that never ran)."""
    _admin.stop(os.environ.get(ENV_DSN, ""), [*_pool, *_held])
    _pool.clear()
    _held.clear()


@dataclass
class Cluster:
    """A private PostgreSQL server in a temporary directory, stoppable at will."""

    bin: Path
    data: Path
    port: int

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        _as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-t", "20", *args])

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1"
                   " -c fsync=off -c max_connections=60")
        self._ctl("-o", options, "-l", str(self.data / "server.log"), "start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "stop")


def _as_postgres(cmd: list[str]) -> None:
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                   timeout=60)


@contextlib.contextmanager
def private_cluster(port: int) -> Iterator[Cluster]:
    """initdb + start a throwaway server (never the machine's own), stop and delete it after."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        unavailable("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb)")
    if os.geteuid() == 0 and not shutil.which("runuser"):
        unavailable("running as root without runuser, so initdb cannot run")
    bindir = Path(bins[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="kourier-pg-"))
    data = root / "data"
    try:
        if os.geteuid() == 0:
            shutil.chown(root, "postgres")
        _as_postgres([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                      "--no-sync", "-E", "UTF8"])
        cluster = Cluster(bindir, data, port)
        cluster.start()
    except (subprocess.CalledProcessError, LookupError, OSError) as e:
        shutil.rmtree(root, ignore_errors=True)
        detail = getattr(e, "stderr", b"") or b""
        unavailable(f"cannot start a private PostgreSQL cluster: {e} {detail.decode()[-500:]}")
    try:
        yield cluster
    finally:
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
