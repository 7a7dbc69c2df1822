"""PostgreSQL for tests: the server at KOURIER_TEST_PG_DSN, a fresh schema per test,
and a private throwaway cluster for tests that must stop the server.

Without KOURIER_TEST_PG_DSN (or with the server unreachable) PostgreSQL tests
skip and say why; with KOURIER_REQUIRE_PG=1 (as `.ci/run` sets) they fail instead.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

ENV_DSN = "KOURIER_TEST_PG_DSN"
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
