"""Shared fixtures: real servers on free ports, real files, no mocks of our own modules."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import io
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from relay.httptap import install_requests_tap
from relay.lifecycle import Relay
from tests.forkserver import RelayProcess, share_under_xdist

install_requests_tap()  # what `serve` does at start-up: these tests build the relay themselves

# Write bytecode caches even where the shell says not to (PYTHONDONTWRITEBYTECODE): the suite
# starts ~120 relay processes, and each would compile relay/ from source again (~50 ms of CPU).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

# Fixtures: slack, discord, telegram (faked at HTTP); homeserver (a real Synapse); the
# PostgreSQL schema pool's hooks (tests.pgutil).
pytest_plugins = ["tests.livefakes", "tests.synapse", "tests.ordering", "tests.pgutil"]
ROOT = Path(__file__).resolve().parent.parent
TOKEN = "test-token"


@contextmanager
def at_most(seconds: float) -> Iterator[None]:
    """Fail, instead of hanging forever, when the block spins."""
    def spun(signum: int, frame: object) -> None:
        raise AssertionError(f"still running after {seconds}s: it spins")

    previous = signal.signal(signal.SIGALRM, spun)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def relay_log_lines(formatter: logging.Formatter) -> Iterator[io.StringIO]:
    """What the relay's loggers write at INFO and up, formatted as `serve` would."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    relay_log = logging.getLogger("relay")
    relay_log.addHandler(handler)
    old_level = relay_log.level
    relay_log.setLevel(logging.INFO)
    try:
        yield out
    finally:
        relay_log.removeHandler(handler)
        relay_log.setLevel(old_level)


async def post_event(port: int, body: dict[str, Any]) -> int:
    """POST one event to a relay process on `port` with the test token; its status."""
    async with aiohttp.ClientSession() as s, s.post(
            f"http://127.0.0.1:{port}/webhook", json=body,
            headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        return r.status


def _port_range() -> range:
    """This test process's own ports: below the ephemeral range, one block per xdist worker.

    A port the kernel hands out for `bind(0)` is free only until something else takes it,
    and every outgoing connection takes one from that same ephemeral range: a test that
    starts a relay on it later finds it in use now and then. Ports below the range are
    never handed out for connections, and each worker has its own block. The blocks of
    one run lie in a band picked by the run (its xdist run id, else its pid), so that two
    suites run side by side (two worktrees) mostly take different ports.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]) \
        if Path("/proc/sys/net/ipv4/ip_local_port_range").exists() else 32768
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    block, workers = 250, 16  # a block is reused round and round: a test holds a few ports
    bands = max(1, (low - 1024) // (block * workers))
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())
    band = int(hashlib.sha256(run.encode()).hexdigest(), 16) % bands
    start = 1024 + (band * workers + (int(worker) % workers if worker.isdigit() else 0)) * block
    return range(start, start + block)


_PORTS: Iterator[int] = iter(())


def free_port() -> int:
    """A port no other test process uses and nothing listens on now (see `_port_range`)."""
    global _PORTS
    for _ in range(2):
        for port in _PORTS:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
        _PORTS = iter(_port_range())  # the first use, or every port of the block was used once
    raise RuntimeError("no free port left in this test process's block")


async def wait_for(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
                   message: str = "condition") -> Any:
    """Poll a condition (sync or async) until it is truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(interval)


def wait_for_sync(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05,
                  message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


async def circuit_opened(relay: Relay, receiver: str, url_index: int = 0) -> Any:
    """The receiver URL's stored state once its circuit is open (for `wait_for`), else None:
    the sink's last refusal arrives before the worker has recorded it."""
    for state in await relay.store.receivers():
        if (state.name, state.url_index) == (receiver, url_index) and state.open_until > 0:
            return state
    return None


@dataclass
class Sink:
    """A local HTTP server behind Apprise `json://`: records what arrives, fails on demand."""

    received: list[dict[str, Any]] = field(default_factory=list)
    # path -> list of behaviours consumed in order: int status, ("status", headers), "hang"
    script: dict[str, list[Any]] = field(default_factory=dict)
    default_status: int = 200
    delay: float = 0.0
    port: int = 0
    hits: list[str] = field(default_factory=list)
    let_go: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str = "", **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"json://127.0.0.1:{self.port}/{path.lstrip('/')}" + (f"?{query}" if query else "")

    def messages(self, path: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.received if path is None or r["path"] == "/" + path.lstrip("/")]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.hits.append(request.path)
        plan = self.script.get(request.path)
        action: Any = plan.pop(0) if plan else self.default_status
        if self.delay:
            await asyncio.sleep(self.delay)
        if action == "hang":  # until the test is over (the fixture lets go at teardown)
            await self.let_go.wait()
            raise web.HTTPServiceUnavailable()
        status, headers = action if isinstance(action, tuple) else (action, {})
        if status < 300:
            peer = request.transport.get_extra_info("peername") if request.transport else None
            self.received.append({"path": request.path, "arrived": time.monotonic(),
                                  "peer_port": peer[1] if peer else None, **body})
        return web.Response(status=status, headers=headers, text="ok")


async def serve_posts(handler: Callable[[web.Request], Any]) -> TestServer:
    """A real HTTP server on a free port answering every POST with `handler`."""
    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    server = TestServer(app, host="127.0.0.1", port=free_port())
    await server.start_server()
    return server


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    s = Sink()
    server = await serve_posts(s.handle)
    s.port = server.port or 0
    yield s
    s.let_go.set()
    await server.close()


def write_config(path: Path, body: str, **values: Any) -> Path:
    """Write a config whose text may use {placeholders} (e.g. {db}); other braces stay."""
    text = textwrap.dedent(body)
    for key, value in values.items():
        text = text.replace("{" + key + "}", str(value))
    path.write_text(text)
    return path


def serve_head(store: str = "sqlite:{db}", admin: bool = False) -> str:
    """The `server:` and `store:` sections a `relay serve` subprocess's config starts with:
    `{port}` and `{token}` (and with `admin`, `{admin}`) for `write_config` (or
    `str.format`), and the store's URL (by default a SQLite file at `{db}`; `"{store}"` or
    `"{dsn}"` leaves the whole URL to fill)."""
    admin_line = "  admin_token: {admin}\n" if admin else ""
    return f"""\
server:
  listen: 127.0.0.1:{{port}}
  tokens: ["{{token}}"]
{admin_line}store:
  url: "{store}"
"""


BASE_CONFIG = """\
server:
  listen: 127.0.0.1:{port}
  tokens: ["{token}", "second-token"]
  admin_token: {admin}
  {server}
store:
  url: "sqlite:{db}"
  {store}
sending:
  {sending}
"""
SENDING = """grace_period: 2s
  retry: {schedule: [0, 0.1, 0.2], jitter: 0}"""
# The placeholders of BASE_CONFIG besides port and db, for relays run as subprocesses too.
DEFAULTS = {"token": TOKEN, "admin": "admin-secret", "server": "", "store": "",
            "sending": SENDING}


@dataclass
class RunningRelay:
    relay: Relay
    url: str
    session: ClientSession

    async def post(self, payload: Any = None, token: str | None = TOKEN, raw: bytes | None = None,
                   content_type: str = "application/json", headers: dict[str, str] | None = None,
                   path: str = "/webhook") -> tuple[int, Any, Any]:
        import json as _json

        h = {"Content-Type": content_type, **(headers or {})}
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        data = raw if raw is not None else _json.dumps(payload).encode()
        async with self.session.post(self.url + path, data=data, headers=h) as r:
            try:
                body = await r.json(content_type=None)
            except ValueError:
                body = await r.text()
            return r.status, body, r.headers


_SQLITE_TEMPLATE: list[Path] = []  # this test process's empty store, as migration left it


async def empty_sqlite_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty SQLite store the relay's own migrations made (once per test process): a
    copy of it is the file a relay's first start would make (~10 ms of CPU less a start)."""
    if not _SQLITE_TEMPLATE:
        from relay.store import open_store
        from relay.store.schema import SCHEMA_VERSION

        folder = tmp_path_factory.mktemp("store-template")
        path = folder / "template.db"
        store = open_store(f"sqlite:{path}")
        await store.open()
        await store.close()
        # closed: its write-ahead log is checkpointed into the file and removed
        assert sorted(p.name for p in folder.iterdir()) == ["template.db"], list(folder.iterdir())
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        finally:
            conn.close()
        _SQLITE_TEMPLATE.append(path)
    return _SQLITE_TEMPLATE[0]


@pytest.fixture
async def running(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
                  ) -> AsyncIterator[Callable[..., Any]]:
    """Start the relay as a real aiohttp server on a free port; extra YAML is appended.

    Its default store file (`relay.db` in tmp_path), when not there yet, starts as a copy
    of an empty store the relay's migrations made: the relay opens it as it opens any
    current store. Tests of creating or upgrading a store open one themselves."""
    started: list[tuple[TestServer, RunningRelay]] = []
    default_db = tmp_path / "relay.db"

    async def start(extra: str = "", env: dict[str, str] | None = None,
                    clock: Callable[[], float] = time.time,
                    live_api: dict[str, str] | None = None, config_name: str = "config.yaml",
                    **values: Any) -> RunningRelay:
        port = free_port()
        values = {"port": port, "db": default_db, **DEFAULTS, **values}
        if values["db"] == default_db and not default_db.exists():
            shutil.copy(await empty_sqlite_store(tmp_path_factory), default_db)
        cfg = write_config(tmp_path / config_name,
                           BASE_CONFIG + textwrap.dedent(extra), **values)
        relay = Relay(str(cfg), env=env or {}, clock=clock, live_api=live_api)
        server = TestServer(relay.web_app(), host="127.0.0.1", port=port)
        await server.start_server()
        running = RunningRelay(relay, f"http://127.0.0.1:{port}", ClientSession())
        started.append((server, running))
        return running

    yield start
    for server, r in reversed(started):
        await r.session.close()
        await server.close()


class FakeClock:
    """An injectable clock for retry schedules: tests move time, the worker follows."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def pytest_configure(config: pytest.Config) -> None:
    share_under_xdist(config)


def pytest_collection_finish(session: pytest.Session) -> None:
    # Every test module is imported now: keep that heap out of the collector's full passes,
    # as `serve` does with its start-up objects (`settle_garbage_collector`).
    gc.collect()
    gc.freeze()


def relay_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "relay", *args]


def spawn_relay(config: Path, env: dict[str, str] | None = None, log: Path | None = None,
                args: Sequence[str] = ()) -> RelayProcess:
    """The relay as its users start it, `python -m relay serve -c FILE [ARGS]`, in its own
    process (forked from tests/forkserver.py, which has done the imports)."""
    argv = ["serve", "-c", str(config), *args]
    if log is None:
        return RelayProcess(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}, cwd=config.parent)
    with open(log, "ab") as out:
        return RelayProcess(argv, stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}, cwd=config.parent)


def wait_healthy(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    """Until the relay at host:port (`[::1]` for IPv6) answers /readyz with 200."""
    import urllib.request

    def up() -> bool:
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/readyz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    wait_for_sync(up, timeout, message=f"relay on port {port} to be ready")
