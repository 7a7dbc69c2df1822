"""Operator mistakes, run as users run them: one line on stderr, a non-zero exit, no traceback."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from click.testing import CliRunner

from relay.cli import listen_problem, main
from relay.store.schema import SCHEMA_VERSION
from tests.conftest import (
    ROOT,
    at_most,
    free_port,
    spawn_relay,
    wait_for_sync,
    wait_healthy,
)
from tests.forkserver import RelayProcess, run_relay

# Variables the example config reads: unset, so results do not depend on the shell.
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("KOURIER_", "OPS_"))}
UNSET = [k for k in os.environ if k.startswith(("KOURIER_", "OPS_"))]


def run(*args: str, cwd: Path | None = None, timeout: float = 30,
        ) -> subprocess.CompletedProcess[str]:
    """The command in its own process; a timeout fails the test instead of hanging it."""
    return run_relay(args, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                     env=CLEAN_ENV)


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed command (asserting there is one, and no traceback)."""
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert done.returncode != 0
    return lines[0]


SHAPES = {
    "empty": ("", "1: the config is empty: it needs at least a server: section with tokens"
                  " (see config.example.yaml)"),
    "comments only": ("# nothing yet\n", "1: the config is empty: it needs at least a server:"
                                         " section with tokens (see config.example.yaml)"),
    "a list": ("- server\n- routes\n", "1: the top level must be a mapping of sections such as"
                                       " server:, receivers:, routes: (see config.example.yaml),"
                                       " got a list"),
    "a scalar": ("relay\n", "1: the top level must be a mapping of sections such as server:,"
                            " receivers:, routes: (see config.example.yaml), got a string"),
    "no server": ("receivers:\n  - name: log\n    urls: [\"console://\"]\n",
                  '1: missing "server:" section: it needs at least server.tokens, the bearer'
                  " tokens Kourier sends"),
}


@pytest.fixture(scope="module")
def served_shapes(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess[str]]]:
    """`serve` on every shape, run side by side; a spin fails by its timeout."""
    folder = tmp_path_factory.mktemp("shapes")
    procs = {}
    for shape, (text, _) in SHAPES.items():
        cfg = folder / f"{shape.replace(' ', '_')}.yaml"
        cfg.write_text(text)
        procs[shape] = cfg, RelayProcess(["serve", "-c", str(cfg)], env=CLEAN_ENV,
                                         text=True, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE)
    results = {}
    for shape, (cfg, proc) in procs.items():
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            err += "\n(timed out: it spins)"
        results[shape] = cfg, subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_serving_a_config_of_the_wrong_shape_is_one_line_not_a_spin(served_shapes, shape):
    cfg, done = served_shapes[shape]
    assert one_line(done) == f"{cfg}:{SHAPES[shape][1]}"
    assert done.returncode == 1


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_checking_a_config_of_the_wrong_shape_is_one_finding_not_a_spin(tmp_path, shape):
    text, message = SHAPES[shape]
    cfg = tmp_path / "config.yaml"
    cfg.write_text(text)
    with at_most(10):
        result = CliRunner().invoke(main, ["check", "-c", str(cfg)], env=dict.fromkeys(UNSET))
    assert result.stdout.splitlines() == [f"{cfg}:{message}"]
    assert result.stderr == f"{cfg}: 1 error(s), 0 warning(s)\n"  # findings go to stdout
    assert result.exit_code == 1


def relay_config(folder: Path, listen: str, store: str = "sqlite:relay.db") -> Path:
    cfg = folder / "config.yaml"
    cfg.write_text(f"""\
server:
  listen: "{listen}"
  tokens: ["t0ken"]
store:
  url: "{store}"
receivers:
  - name: log
    urls: ["console://"]
default_receiver: log
""")
    return cfg


LISTEN_HINT = "server.listen (or --listen)"


def test_a_second_relay_on_a_port_in_use_says_so_in_one_line(tmp_path):
    port = free_port()
    first = spawn_relay(relay_config(tmp_path, f"127.0.0.1:{port}"))
    try:
        wait_healthy(port)
        (tmp_path / "second").mkdir()
        cfg = relay_config(tmp_path / "second", f"127.0.0.1:{port}")
        line = one_line(run("serve", "-c", str(cfg)))
        assert line == (f"error: cannot listen on 127.0.0.1:{port}: the port is already in use"
                        " (another relay?): stop that process, or choose a free port in"
                        f" {LISTEN_HINT}")
    finally:
        first.terminate()
        first.wait(20)


def test_a_second_relay_on_the_same_sqlite_file_is_refused_and_a_killed_one_leaves_no_lock(
        tmp_path):
    """Two relays on one SQLite file would each count its backlog and commit as if alone:
    the second is refused in one line while the first keeps serving, and the `dead`
    commands still read the file. The lock dies with its process: after kill -9 a relay
    starts on the file at once."""
    shared = tmp_path / "shared.db"
    port, other = free_port(), free_port()
    first = spawn_relay(relay_config(tmp_path, f"127.0.0.1:{port}", f"sqlite:///{shared}"))
    try:
        wait_healthy(port)
        (tmp_path / "second").mkdir()
        cfg = relay_config(tmp_path / "second", f"127.0.0.1:{other}", f"sqlite:///{shared}")
        assert one_line(run("serve", "-c", str(cfg))) == (
            f"error: another relay is serving from {shared}: stop it first, or give this one a"
            " store.url of its own (several relays on one store need PostgreSQL)")
        wait_healthy(port, timeout=2)
        listed = run("dead", "list", "-c", str(cfg))
        assert (listed.returncode, listed.stdout) == (0, "no dead jobs\n")
    finally:
        first.kill()
        first.wait(20)
    third = spawn_relay(cfg)
    try:
        wait_healthy(other)
    finally:
        third.terminate()
        assert third.wait(20) == 0


@pytest.mark.parametrize(("error", "address", "problem"), [
    (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "nowhere:80",
     "cannot listen on nowhere:80: the host 'nowhere' does not resolve: set"
     f" {LISTEN_HINT} to an IP address or a name of this machine, e.g. 0.0.0.0:8080"),
    (OSError(errno.EADDRINUSE, "in use"), ":8080",
     "cannot listen on :8080: the port is already in use (another relay?): stop that"
     f" process, or choose a free port in {LISTEN_HINT}"),
    (OSError(errno.EACCES, "denied"), "0.0.0.0:80",
     "cannot listen on 0.0.0.0:80: permission denied (ports below 1024 need root or"
     f" CAP_NET_BIND_SERVICE): choose a port of 1024 or above in {LISTEN_HINT}"),
    (OSError(errno.EADDRNOTAVAIL, "not available"), "10.9.8.7:8080",
     "cannot listen on 10.9.8.7:8080: 10.9.8.7 is not an address of this machine: use one"
     f" of its addresses in {LISTEN_HINT}, or 0.0.0.0 for all"),
    (OSError(errno.EINVAL, "invalid argument"), "[ff02::1]:8080",
     "cannot listen on [ff02::1]:8080: [ff02::1] cannot be listened on (a multicast or"
     f" IPv4-mapped address?): use one of this machine's addresses in {LISTEN_HINT}, or"
     " 0.0.0.0 for all"),
    (OSError(errno.EMFILE, "too many open files"), "0.0.0.0:8080", None),
    (OSError("no errno"), "0.0.0.0:8080", None),
])
def test_each_listen_error_names_what_to_change(error, address, problem):
    """`serve` prints these as one line; an error it has no advice for is raised as it is."""
    assert listen_problem(error, address) == problem


def test_a_listen_host_that_does_not_resolve_is_one_line(tmp_path):
    cfg = relay_config(tmp_path, "no-such-host.invalid:8080")
    assert one_line(run("serve", "-c", str(cfg))) == (
        "error: cannot listen on no-such-host.invalid:8080: the host 'no-such-host.invalid'"
        f" does not resolve: set {LISTEN_HINT} to an IP address or a name of this machine,"
        " e.g. 0.0.0.0:8080")


def _as_nobody() -> None:
    nobody = pwd.getpwnam("nobody")
    os.setgroups([])
    os.setgid(nobody.pw_gid)
    os.setuid(nobody.pw_uid)


def _readable_by_all(path: Path) -> bool:
    return all(p.stat().st_mode & 0o005 == 0o005 for p in path.parents) and \
        path.stat().st_mode & 0o005 == 0o005


def _python_for_nobody() -> tuple[list[str], dict[str, str]]:
    """An interpreter nobody may run, with this venv's packages; skips when there is none."""
    real = Path(os.path.realpath(sys.executable))
    if _readable_by_all(real) and _readable_by_all(Path(sysconfig.get_paths()["stdlib"])):
        return [sys.executable], {}
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system = Path("/usr/bin") / version
    if not system.exists() or not _readable_by_all(system):
        pytest.skip(f"running as root, and the interpreter ({real}) is in a folder the user"
                    f" nobody may not read, and there is no /usr/bin/{version}")
    site = sysconfig.get_paths()["purelib"]
    return [str(system)], {"PYTHONPATH": os.pathsep.join([site, str(ROOT)])}


def test_a_port_the_user_may_not_bind_is_one_line():
    if Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text().strip() != "1024":
        pytest.skip("this machine lets every user bind low ports")
    python, env, drop = [sys.executable], {}, None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("nobody")
        except KeyError:
            pytest.skip("running as root and there is no user nobody to drop to")
        (python, env), drop = _python_for_nobody(), _as_nobody
    # Not under pytest's tmp_path: nobody may not enter root's private folders.
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        folder.chmod(0o777)
        cfg = relay_config(folder, "127.0.0.1:1")
        done = subprocess.run([*python, "-m", "relay", "serve", "-c", str(cfg)], cwd=folder,
                              env={**CLEAN_ENV, **env}, preexec_fn=drop, capture_output=True,
                              text=True, timeout=30)
    assert one_line(done) == (
        "error: cannot listen on 127.0.0.1:1: permission denied (ports below 1024 need root or"
        f" CAP_NET_BIND_SERVICE): choose a port of 1024 or above in {LISTEN_HINT}")


def test_a_store_path_whose_parent_is_a_file_is_one_line(tmp_path):
    (tmp_path / "data").write_text("not a folder")
    cfg = relay_config(tmp_path, f"127.0.0.1:{free_port()}", "sqlite:data/relay.db")
    assert one_line(run("serve", "-c", str(cfg))) == (
        f"error: cannot create the store's folder {tmp_path / 'data'}: {tmp_path / 'data'} is a"
        " file, not a folder: set store.url to a path in a folder the relay may write")


@pytest.mark.parametrize("command", [["dead", "list"], ["dead", "show", "1"],
                                     ["dead", "replay", "--all"]])
def test_a_command_that_only_reads_the_store_never_creates_one(tmp_path, command):
    (tmp_path / "etc").mkdir()
    (tmp_path / "elsewhere").mkdir()
    cfg = relay_config(tmp_path / "etc", "127.0.0.1:8080")
    done = run(*command, "-c", str(cfg), cwd=tmp_path / "elsewhere")
    assert one_line(done) == (
        f"error: no store at {tmp_path / 'etc' / 'relay.db'} (store.url in {cfg}; a relative"
        " sqlite: path is relative to the config file's folder): check store.url, or start the"
        " relay once with serve")
    assert done.returncode == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["config.yaml", "elsewhere", "etc"]


def test_a_relative_store_path_is_beside_the_config_wherever_the_command_runs(tmp_path):
    for folder in ("etc", "here", "there"):
        (tmp_path / folder).mkdir()
    port = free_port()
    cfg = relay_config(tmp_path / "etc", f"127.0.0.1:{port}")
    relay = RelayProcess(["serve", "-c", str(cfg)], cwd=tmp_path / "here", env=CLEAN_ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(port)  # serve creates the store
    finally:
        relay.terminate()
        assert relay.wait(20) == 0
    assert (tmp_path / "etc" / "relay.db").exists()
    assert list((tmp_path / "here").iterdir()) == []
    done = run("dead", "list", "-c", str(cfg), cwd=tmp_path / "there")
    assert (done.returncode, done.stdout, done.stderr) == (0, "no dead jobs\n", "")
    migrated = run("migrate", "-c", str(tmp_path / "etc" / ".." / "etc" / "config.yaml"),
                   cwd=tmp_path / "there")
    assert migrated.returncode == 0, migrated.stderr
    assert list((tmp_path / "there").iterdir()) == []


@pytest.mark.parametrize("host, loopback", [("0.0.0.0", "127.0.0.1"), ("[::]", "[::1]"),
                                           ("[::1]", "[::1]")])
def test_healthcheck_and_send_read_the_address_from_the_config(tmp_path, host, loopback):
    # An IPv6 listen address made both exit 70 (the host kept its brackets and got a second
    # pair); "[::]" is IPv6 only (socket.create_server sets IPV6_V6ONLY), so its loopback is ::1.
    port = free_port()
    cfg = relay_config(tmp_path, f"{host}:{port}")
    relay = spawn_relay(cfg)
    try:
        wait_healthy(port, host=loopback)
        done = run("healthcheck", "-c", str(cfg))
        assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
        sent = run("send", "-c", str(cfg))
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout.startswith(f"POST http://{loopback}:{port}/webhook\n")
    finally:
        relay.terminate()
        relay.wait(20)


def test_healthcheck_names_its_own_url_unmasked_when_nothing_answers(tmp_path):
    port = free_port()
    cfg = relay_config(tmp_path, f"127.0.0.1:{port}")
    assert one_line(run("healthcheck", "-c", str(cfg))) == (
        f"error: http://127.0.0.1:{port}/healthz did not answer: [Errno 111] Connection refused")


def test_healthcheck_loads_neither_asyncio_nor_the_store_nor_aiohttp(tmp_path):
    """The image's HEALTHCHECK runs it every 30 s: it reads the config and makes one HTTP
    request, and loads nothing a store or the server needs (a third of its instructions)."""
    cfg = relay_config(tmp_path, f"127.0.0.1:{free_port()}")
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "relay", "healthcheck",
                           "-c", str(cfg)], capture_output=True, text=True, timeout=30,
                          cwd=ROOT, env=CLEAN_ENV)
    loaded = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines()
              if line.startswith("import time:") and "|" in line}
    assert {"relay.cli_client", "relay.config", "urllib.request"} <= loaded
    assert not {"asyncio", "relay.store", "aiohttp", "apprise", "sqlite3"} & loaded
    assert "did not answer" in done.stderr and done.returncode == 1


def test_healthcheck_never_prints_a_password_of_its_url():
    port = free_port()
    line = one_line(run("healthcheck", "--url", f"http://ops:s3cr3t@127.0.0.1:{port}/healthz"))
    assert line.startswith(f"error: http://ops:***@127.0.0.1:{port}/healthz did not answer: ")
    assert "s3cr3t" not in line


def test_send_to_a_relay_that_never_starts_gives_up_after_its_timeout_in_one_line():
    port = free_port()
    done = run("send", "--url", f"http://127.0.0.1:{port}/webhook", "--token", "t0ken",
               "--timeout", "0.3")
    assert one_line(done) == (f"error: cannot reach http://127.0.0.1:{port}/webhook:"
                              " [Errno 111] Connection refused (waited 0.3s)")
    assert "t0ken" not in done.stdout + done.stderr


DEAD_CONFIG = """\
server:
  listen: "127.0.0.1:{port}"
  tokens: ["t0ken"]
sending:
  retry: {schedule: [0], jitter: 0}   # one attempt: a refused connection is dead at once
receivers:
  - name: hook
    urls: ["json://127.0.0.1:{closed}/"]
routes:
  - receivers: [hook]
"""


@pytest.fixture(scope="module")
def one_dead_job(tmp_path_factory) -> tuple[Path, int]:
    """A real store holding one dead job, made by a real relay that could not send it."""
    folder = tmp_path_factory.mktemp("dead")
    port = free_port()
    cfg = folder / "config.yaml"
    cfg.write_text(DEAD_CONFIG.replace("{port}", str(port)).replace("{closed}", str(free_port())))
    relay = spawn_relay(cfg)
    try:
        wait_healthy(port)
        assert run("send", "-c", str(cfg)).returncode == 0

        def dead() -> list[dict[str, object]]:
            return json.loads(run("dead", "list", "--json", "-c", str(cfg)).stdout)

        jobs = wait_for_sync(dead, message="the job to go dead")
    finally:
        relay.terminate()
        relay.wait(20)
    return cfg, int(jobs[0]["id"])  # type: ignore[call-overload]


def test_replaying_a_job_that_does_not_exist_says_so(one_dead_job):
    cfg, _ = one_dead_job
    done = run("dead", "replay", "999", "-c", str(cfg))
    assert one_line(done) == "error: no job 999"
    assert done.stdout == "replayed 0 job(s)\n"


def test_replaying_an_unknown_receiver_says_it_is_not_in_the_config(one_dead_job):
    cfg, _ = one_dead_job
    done = run("dead", "replay", "--receiver", "nosuch", "-c", str(cfg))
    assert one_line(done) == (f'error: receiver "nosuch" is not in {cfg} (its receivers: hook)'
                              " and has no dead jobs")


def test_replay_says_which_ids_it_could_not_replay_and_replays_the_rest(tmp_path, one_dead_job):
    cfg, job = one_dead_job
    shutil.copytree(cfg.parent, tmp_path / "copy")  # this test changes the store
    copy = tmp_path / "copy" / "config.yaml"
    done = run("dead", "replay", str(job), "999", "-c", str(copy))
    assert one_line(done) == "error: no job 999"
    assert done.stdout == "replayed 1 job(s)\n"
    again = run("dead", "replay", str(job), "-c", str(copy))
    assert one_line(again) == f"error: job {job} is pending, not dead"
    everything = run("dead", "replay", "--all", "-c", str(copy))
    assert one_line(everything) == "error: there are no dead jobs"
    hook = run("dead", "replay", "--receiver", "hook", "-c", str(copy))
    assert one_line(hook) == 'error: receiver "hook" has no dead jobs'


def test_a_reading_command_neither_creates_nor_upgrades_a_sqlite_schema(tmp_path):
    """`dead` commands on an empty file, or on a store an older relay may still be running
    on: one line, and the schema is left as it was (only serve and migrate change it)."""
    import sqlite3

    cfg = relay_config(tmp_path, "127.0.0.1:8080")
    db = tmp_path / "relay.db"
    db.touch()
    for args in (["dead", "list"], ["dead", "show", "1"], ["dead", "replay", "--all"]):
        assert one_line(run(*args, "-c", str(cfg))) == (
            f"error: no relay schema in {db} (check store.url, or run migrate or serve once)")
    assert db.stat().st_size == 0  # not even a header written
    assert run("migrate", "-c", str(cfg)).returncode == 0
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 5")  # as a relay of schema step 5 left it
    assert one_line(run("dead", "list", "-c", str(cfg))) == (
        f"error: {db} has schema version 5, this relay's is {SCHEMA_VERSION}: a reading command"
        " does not upgrade it; run migrate (or serve) first")
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (5,)


@pytest.mark.postgres
async def test_a_reading_command_on_postgresql_refuses_a_database_without_the_schema(tmp_path):
    from tests import pgutil

    async with pgutil.fresh_schema(await pgutil.base_dsn()) as dsn:
        cfg = relay_config(tmp_path, "127.0.0.1:8080", dsn)
        done = run("dead", "list", "-c", str(cfg))
        line = one_line(done)
        assert line.startswith("error: ") and "no relay schema in postgresql://" in line
        assert line.endswith(" (check store.url, or run migrate or serve once)")
        conn = await __import__("asyncpg").connect(dsn)
        try:  # and it created nothing there
            assert await conn.fetchval("SELECT count(*) FROM pg_tables"
                                       " WHERE schemaname = current_schema()") == 0
        finally:
            await conn.close()
        assert run("migrate", "-c", str(cfg)).returncode == 0
        assert run("dead", "list", "-c", str(cfg)).returncode == 0
        conn = await __import__("asyncpg").connect(dsn)
        try:  # as a relay of schema step 5 left it
            await conn.execute("DELETE FROM schema_version WHERE version > 5")
        finally:
            await conn.close()
        line = one_line(run("dead", "list", "-c", str(cfg)))
        assert line.startswith("error: postgresql://") and line.endswith(
            f" has schema version 5, this relay's is {SCHEMA_VERSION}: a reading command does"
            " not upgrade it; run migrate (or serve) first")


NO_SCHEMA = ("error: cannot open postgresql://***: no schema to create the relay's"
             " tables in: the schemas of the search_path do not exist in this database,"
             " or its user may not use them: create one (CREATE SCHEMA name), or name"
             " one that exists in the URL's options=-csearch_path%3Dname, and give the"
             " user USAGE and CREATE on it (GRANT USAGE, CREATE ON SCHEMA name TO user)")


@pytest.mark.postgres
async def test_a_postgresql_schema_the_relay_cannot_create_tables_in_is_said_in_plain_words(
        tmp_path):
    """A search_path naming no existing schema (asyncpg: "no schema has been selected to
    create in") and a user without CREATE on the schema (PostgreSQL 15 no longer grants it
    on public): one line each that says what to do, and the URL keeps its colon."""
    import uuid

    from tests import pgutil

    base = await pgutil.base_dsn()
    missing = relay_config(tmp_path, "127.0.0.1:8080",
                           pgutil.with_schema(base, f"nosuch_{uuid.uuid4().hex[:8]}"))
    line = one_line(run("migrate", "-c", str(missing)))
    assert line == NO_SCHEMA
    async with pgutil.fresh_schema(base) as dsn, \
            using_only(tmp_path, base, dsn) as (cfg, _, schema, _):
        line = one_line(run("migrate", "-c", str(cfg)))
        assert line == (f"error: cannot open postgresql://***: permission denied for schema"
                        f" {schema}: the relay creates its tables itself, so its user needs"
                        " CREATE on that schema (GRANT CREATE ON SCHEMA name TO user;"
                        " PostgreSQL 15 no longer grants it on public), or run migrate once"
                        " as the schema's owner")


@contextlib.asynccontextmanager
async def using_only(tmp_path: Path, base: str, dsn: str,
                     ) -> AsyncIterator[tuple[Path, Any, str, str]]:
    """A login role that may use the schema of `dsn` and nothing else: (its config in
    tmp_path/role, a superuser connection to grant it more, the schema, the role); the
    role is dropped afterwards."""
    import uuid

    import asyncpg

    role = f"relay_{uuid.uuid4().hex[:8]}"
    schema = dsn.split("search_path%3D", 1)[1].split("%20", 1)[0]
    conn = await asyncpg.connect(base)
    try:
        await conn.execute(f"CREATE ROLE {role} LOGIN; GRANT USAGE ON SCHEMA {schema} TO {role}")
        parts = urlsplit(dsn)
        as_role = urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))
        (tmp_path / "role").mkdir()
        yield relay_config(tmp_path / "role", "127.0.0.1:8080", as_role), conn, schema, role
    finally:
        await conn.execute(f"DROP OWNED BY {role}; DROP ROLE IF EXISTS {role}")
        await conn.close()


@pytest.mark.postgres
async def test_a_postgresql_user_without_rights_on_the_relays_tables_is_not_told_to_get_create(
        tmp_path):
    """A user that may use a schema migrated by its owner but not read its tables gets
    "permission denied for table ...": the advice is to grant it the tables, not CREATE on
    the schema or to run migrate as the owner (which is how those tables came about)."""


    from tests import pgutil

    base = await pgutil.base_dsn()
    async with pgutil.fresh_schema(base) as dsn:
        owner = relay_config(tmp_path, "127.0.0.1:8080", dsn)
        assert run("migrate", "-c", str(owner)).returncode == 0
        async with using_only(tmp_path, base, dsn) as (cfg, conn, schema, role):
            line = one_line(run("migrate", "-c", str(cfg)))
            assert line == ("error: cannot open postgresql://***: permission denied for table"
                            " schema_version: the relay's user needs to read and write its"
                            " tables (GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN"
                            " SCHEMA name TO user; GRANT USAGE ON ALL SEQUENCES IN SCHEMA name"
                            " TO user)")
            await conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA"
                               f" {schema} TO {role}; GRANT USAGE ON ALL SEQUENCES IN SCHEMA"
                               f" {schema} TO {role}")  # the advice is enough
            done = run("dead", "list", "-c", str(cfg))
            assert (done.returncode, done.stdout) == (0, "no dead jobs\n"), done.stderr
            # A schema step alters a table: only its owner may, whatever the grants.
            await conn.execute(f"DELETE FROM {schema}.schema_version WHERE version >= 10")
            line = one_line(run("migrate", "-c", str(cfg)))
            assert line == ("error: cannot open postgresql://***: must be owner of table"
                            " receivers: a schema upgrade alters the relay's tables, which only"
                            " their owner may do: run migrate once as that user")


def test_a_delivery_id_or_receiver_name_no_store_can_hold_is_not_found_not_a_bug(tmp_path):
    """An argument that is not UTF-8 (a byte the shell passed on, read as a lone
    surrogate) names nothing stored: `delivery` and `dead list --receiver` say so in their
    usual line, instead of exit 70 'unexpected UnicodeEncodeError ... a bug'."""
    cfg = relay_config(tmp_path, "127.0.0.1:8080", f"sqlite:///{tmp_path / 'relay.db'}")
    assert run("migrate", "-c", str(cfg)).returncode == 0
    odd = os.fsdecode(b"D-\xff")
    assert one_line(run("delivery", "-c", str(cfg), odd)) == (
        "error: no delivery 'D-\\udcff' in the store (or its events are older than"
        " store.retention)")
    assert one_line(run("dead", "list", "-c", str(cfg), "--receiver", odd)) == (
        f'error: receiver "D-\\udcff" is not in {cfg} (its receivers: log) and has no dead'
        " jobs")


@pytest.mark.postgres
async def test_a_postgresql_schema_the_user_may_not_use_is_not_said_not_to_exist(tmp_path):
    """A schema that exists but the relay's user has no USAGE on is left out of its
    search_path, so PostgreSQL answers as for none ("no schema has been selected"): the
    line names that case too and the grant, not only CREATE SCHEMA (it exists)."""
    import uuid

    import asyncpg

    from tests import pgutil

    base = await pgutil.base_dsn()
    role = f"relay_{uuid.uuid4().hex[:8]}"
    async with pgutil.fresh_schema(base) as dsn:
        conn = await asyncpg.connect(base)
        try:
            await conn.execute(f"CREATE ROLE {role} LOGIN")
            parts = urlsplit(dsn)
            as_role = urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))
            cfg = relay_config(tmp_path, "127.0.0.1:8080", as_role)
            assert one_line(run("migrate", "-c", str(cfg))) == NO_SCHEMA
        finally:
            await conn.execute(f"DROP OWNED BY {role}; DROP ROLE IF EXISTS {role}")
            await conn.close()


def usage_error(done: subprocess.CompletedProcess[str]) -> str:
    """A usage error (exit 2): one `error: …` line that points at the command's --help (not
    click's usage block), no traceback; its message."""
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    found = re.fullmatch(r"error: (.+) \(see .*relay[a-z -]* --help\)", line)
    assert found, line
    return found.group(1)


BIG = str(2**64)  # past SQLite's integers: OverflowError inside the store before


@pytest.mark.parametrize("args, error", [
    (["dead", "show", BIG], f"Invalid value for 'JOB_ID': {BIG} is not in the range"
                            f" 1<=x<={2**63 - 1}"),
    (["dead", "replay", BIG], f"Invalid value for '[JOB_IDS]...': {BIG} is not in the"
                              f" range 1<=x<={2**63 - 1}"),
    (["dead", "show", "0"], f"Invalid value for 'JOB_ID': 0 is not in the range"
                            f" 1<=x<={2**63 - 1}"),
    (["dead", "list", "--limit", BIG], f"Invalid value for '--limit': {BIG} is not in the"
                                       " range 1<=x<=10000"),
    (["dead", "list", "--limit", "-5"], "Invalid value for '--limit': -5 is not in the"
                                        " range 1<=x<=10000"),
])
def test_a_job_id_or_limit_out_of_range_is_a_usage_error_not_a_traceback(tmp_path, args, error):
    cfg = relay_config(tmp_path, "127.0.0.1:8080")
    assert run("migrate", "-c", str(cfg)).returncode == 0
    assert usage_error(run(*args, "-c", str(cfg))) == error


@pytest.mark.parametrize("args, error", [
    (["send", "--timeout", "nan"], "Invalid value for '--timeout': expected seconds"
                                   " (0 or more), got nan"),
    (["send", "--timeout", "-1"], "Invalid value for '--timeout': expected seconds"
                                  " (0 or more), got -1"),
    (["healthcheck", "--timeout", "0"], "Invalid value for '--timeout': expected"
                                        " seconds (more than 0), got 0"),
    (["healthcheck", "--timeout", "-1"], "Invalid value for '--timeout': expected"
                                         " seconds (more than 0), got -1"),
    (["send", "--url", "notaurl"], "Invalid value for '--url': expected an http:// or"
                                   " https:// URL, got 'notaurl'"),
    (["send", "--url", "ftp://u:s3cr3t@host/x"], "Invalid value for '--url': expected"
                                                 " an http:// or https:// URL, got 'ftp://***'"),
    (["healthcheck", "--url", "localhost/healthz"], "Invalid value for '--url':"
     " expected an http:// or https:// URL, got 'localhost/healthz'"),
    (["serve", "--listen", "bogus"], "Invalid value for '--listen': expected host:port,"
                                     " got 'bogus'"),
    (["serve", "--listen", ":99999"], "Invalid value for '--listen': expected"
                                      " host:port, got ':99999'"),
])
def test_an_option_value_no_command_can_use_is_a_usage_error_not_a_traceback(tmp_path, args,
                                                                             error):
    cfg = relay_config(tmp_path, f"127.0.0.1:{free_port()}")
    done = run(*args, "-c", str(cfg), "--token", "t") if args[0] == "send" \
        else run(*args, "-c", str(cfg))
    assert usage_error(done) == error
    assert "s3cr3t" not in done.stderr


def test_replaying_one_id_twice_names_it_once(tmp_path):
    cfg = relay_config(tmp_path, "127.0.0.1:8080")
    assert run("migrate", "-c", str(cfg)).returncode == 0
    assert one_line(run("dead", "replay", "7", "7", "-c", str(cfg))) == \
        "error: no job 7"


def test_a_corrupt_sqlite_store_is_one_line(tmp_path):
    cfg = relay_config(tmp_path, "127.0.0.1:8080")
    assert run("migrate", "-c", str(cfg)).returncode == 0
    with open(tmp_path / "relay.db", "r+b") as db:  # a page of the table tree, overwritten
        db.seek(3 * 4096)
        db.write(b"\xde\xad" * 2048)
    assert one_line(run("dead", "list", "-c", str(cfg))) == \
        "error: store unavailable: database disk image is malformed"


def test_a_postgresql_port_out_of_range_is_one_line_without_the_password(tmp_path):
    cfg = relay_config(tmp_path, "127.0.0.1:8080", "postgresql://relay:s3cr3t@127.0.0.1:99999/x")
    line = one_line(run("dead", "list", "-c", str(cfg)))
    assert line.startswith("error: cannot open postgresql://***") and "port must be 0-65535" in line
    assert "s3cr3t" not in line


def test_an_unexpected_error_is_one_line_naming_where_and_exit_70(one_dead_job, tmp_path):
    # A row changed outside the relay (by hand, or a disk fault): its event's payload is no
    # longer JSON. `dead show` printed json's traceback; any error the relay has no words for
    # is one line naming its type and where it was raised (never its text), and exit 70.
    import sqlite3

    cfg, job = one_dead_job
    for f in cfg.parent.iterdir():
        shutil.copy(f, tmp_path / f.name)
    with sqlite3.connect(tmp_path / "relay.db") as db:
        db.execute("UPDATE events SET payload = 'not json'")
    done = run("dead", "show", str(job), "-c", str(tmp_path / "config.yaml"))
    assert re.fullmatch(r"error: unexpected JSONDecodeError in relay/store/sqlite\.py:\d+ \(\w+\):"
                        r" a bug, or a store changed outside the relay;"
                        r" KOURIER_RELAY_TRACEBACK=1 prints the traceback", one_line(done))
    assert done.returncode == 70
    shown = run_relay(["dead", "show", str(job), "-c", str(tmp_path / "config.yaml")],
                      capture_output=True, text=True, timeout=30,
                      env={**CLEAN_ENV, "KOURIER_RELAY_TRACEBACK": "1"})
    assert "Traceback" in shown.stderr and "JSONDecodeError" in shown.stderr


def test_a_listen_address_the_kernel_refuses_is_one_line_naming_what_to_change(tmp_path):
    # An IPv4-mapped IPv6 address: the kernel refuses it with EINVAL, which `serve` printed
    # as a traceback.
    cfg = relay_config(tmp_path, f"[::ffff:10.9.8.7]:{free_port()}")
    assert "cannot be listened on (a multicast or IPv4-mapped address?)" in \
        one_line(run("serve", "-c", str(cfg)))


@pytest.mark.parametrize("host", ["224.0.0.1", "[ff02::1]", "255.255.255.255"])
def test_a_multicast_or_broadcast_listen_address_is_refused_at_its_key(tmp_path, host):
    # Linux lets a TCP socket bind 224.0.0.1: the relay started, and nothing could reach it.
    cfg = relay_config(tmp_path, f"{host}:8080")
    assert one_line(run("check", "-c", str(cfg))) == f"{cfg}: 1 error(s), 0 warning(s)"
    done = run("serve", "-c", str(cfg))
    assert one_line(done) == (
        f"{cfg}:2: server.listen: '{host}:8080' is a multicast or broadcast address, which"
        " takes no connections: use one of this machine's addresses, or 0.0.0.0 for all")
    assert one_line(run("serve", "-c", str(cfg), "--listen", f"{host}:8081")).startswith(
        f"error: Invalid value for '--listen': '{host}:8081' is a multicast or broadcast")


def test_serve_logs_an_unexpected_error_with_its_whole_traceback():
    # `serve` has set up its log: there the error keeps its traceback (one log record), and
    # the command still ends with the one line and exit 70.
    probe = ("from relay.logs import setup; from relay.cli_support import unexpected\n"
             "from relay.store.sql import timeline_event\n"
             "setup('info', 'json')\n"
             "try:\n"
             "    timeline_event({'id': 1, 'type': 'x', 'received_at': 0, 'payload': 'not json'})\n"
             "except Exception as e:\n"
             "    unexpected(e)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=30, env=CLEAN_ENV, cwd=ROOT)
    record, line = done.stderr.splitlines()
    assert json.loads(record)["level"] == "critical"
    assert "Traceback" in json.loads(record)["exception"]
    assert line.startswith("error: unexpected JSONDecodeError in relay/store/sql.py:")
    assert done.returncode == 70


@pytest.mark.skipif(os.path.exists("/etc/kourier-relay/config.yaml"),
                    reason="this machine has a config at the default path")
@pytest.mark.parametrize("command", [["check"], ["serve"], ["send"], ["dead", "list"]])
def test_no_config_at_the_default_path_says_how_to_name_one(tmp_path, command):
    # A first run without -c said only "cannot read config: No such file or directory" of
    # a path the user never typed.
    done = run(*command, cwd=tmp_path)
    line = (done.stdout + done.stderr).splitlines()[0]
    assert line == ("/etc/kourier-relay/config.yaml: cannot read config: No such file or"
                    " directory (the default path: give -c FILE, or set KOURIER_RELAY_CONFIG)")
    assert done.returncode == 1


def test_dead_list_of_a_receiver_not_in_the_config_says_so(tmp_path):
    # It said "no dead jobs" and exit 0 to a misspelt name, as if nothing had failed; replay
    # and the admin API already refused it.
    cfg = relay_config(tmp_path, "127.0.0.1:8080")
    assert run("migrate", "-c", str(cfg)).returncode == 0
    assert one_line(run("dead", "list", "--receiver", "lgo", "-c", str(cfg))) == \
        f'error: receiver "lgo" is not in {cfg} (its receivers: log) and has no dead jobs'
    known = run("dead", "list", "--receiver", "log", "-c", str(cfg))
    assert (known.returncode, known.stdout) == (0, "no dead jobs\n")
    # --json is the admin API's jobs, and the API answers a made-up name 400: not `[]`
    assert one_line(run("dead", "list", "--json", "--receiver", "lgo", "-c", str(cfg))) == \
        f'error: receiver "lgo" is not in {cfg} (its receivers: log) and has no dead jobs'
    known = run("dead", "list", "--json", "--receiver", "log", "-c", str(cfg))
    assert (known.returncode, json.loads(known.stdout)) == (0, [])
