"""Composition root: build the runtime from config, run it, reload it, stop it."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from relay import config as config_mod
from relay import server
from relay.config import Config
from relay.errors import ConfigError, Issue, SchemaTooNew, StoreError
from relay.events import Event
from relay.logs import fields
from relay.metrics import Metrics
from relay.notify import Notifier, check_urls
from relay.pipeline import Notification, Planner
from relay.processes import SendingProcesses, follow_parent
from relay.routing import MatcherError, Router
from relay.store import Store, open_store
from relay.templating import Templates
from relay.web import Services, create_app
from relay.worker import Worker

log = logging.getLogger(__name__)
PURGE_EVERY = 600.0
STORE_WAIT = 30.0  # at start-up, wait this long for the database (e.g. a PostgreSQL starting)
WATCH_EVERY = 0.5  # server.watch_config: how often the file is looked at
RESTART_KEYS = ("server.listen", "server.path", "store.url")


@dataclass
class LiveRuntime:
    """Everything compiled from one config; swapped whole on reload."""

    config: Config
    notifier: Notifier
    planner: Planner
    circuit_hook: Callable[[str, str], None] | None = None

    def on_circuit_open(self, receiver: str, error: str) -> None:
        if self.circuit_hook:
            self.circuit_hook(receiver, error)


def compile_config(config: Config, executor: ThreadPoolExecutor | None = None,
                   ) -> tuple[Router, Templates, Notifier, list[Issue]]:
    """Build every runtime piece; raise ConfigError on errors, return warnings."""
    issues: list[Issue] = []
    router = templates = None
    try:
        router = Router.from_config(config)
    except MatcherError as e:
        issues += e.issues
    try:
        templates = Templates.from_config(config)
    except ConfigError as e:
        issues += e.issues
    url_issues = check_urls(config)
    issues += url_issues
    errors = [i for i in issues if i.severity == "error"]
    if errors:
        raise ConfigError(sorted(errors, key=lambda i: i.line))
    assert router and templates
    notifier = Notifier(config.receivers, executor or _DRY_RUN_EXECUTOR,
                        config.sending.attempt_timeout)
    return router, templates, notifier, [i for i in issues if i.severity != "error"]


# `check` and `route` build a runtime but never send: this pool never starts a thread.
_DRY_RUN_EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dry-run")


def build_runtime(config: Config, executor: ThreadPoolExecutor | None = None,
                  on_circuit_open: Callable[[str, str], None] | None = None) -> LiveRuntime:
    router, templates, notifier, _ = compile_config(config, executor)
    planner = Planner(config, router, templates, notifier.channels())
    return LiveRuntime(config, notifier, planner, on_circuit_open)


class Relay:
    """One running relay: store, worker, web app and the live runtime."""

    def __init__(self, config_path: str, env: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config_path = config_path
        self.env = env
        self.clock = clock
        self.metrics = Metrics()
        config = config_mod.load(config_path, env)
        _log_warnings(config)
        self.executor = ThreadPoolExecutor(max_workers=config.sending.concurrency,
                                           thread_name_prefix="send")
        self.live = build_runtime(config, self.executor, self._circuit_opened)
        try:
            self.store: Store = open_store(config.store.url,
                                           busy_timeout=config.store.busy_timeout)
        except StoreError as e:
            raise ConfigError([config.source.issue("store.url", str(e))]) from None
        self.worker = Worker(self.store, lambda: self.live, self.metrics, clock)
        self._tasks: list[asyncio.Task[Any]] = []
        self._reload_lock = asyncio.Lock()
        self.metrics.reload_success.set(1)
        self.metrics.reload_time.set(time.time())

    @property
    def config(self) -> Config:
        return self.live.config

    def web_app(self) -> web.Application:
        services = Services(self.store, self.metrics, lambda: self.live, self.reload,
                            self.readiness, self.clock)
        app = create_app(services, self.config.server.path, self.config.server.max_body_bytes)
        app.cleanup_ctx.append(self._lifetime)
        return app

    async def _lifetime(self, app: web.Application) -> Any:
        await self.start()
        yield
        await self.stop()

    async def start(self) -> None:
        remote = self.config.store.url.startswith(("postgresql:", "postgres:"))
        await self._open_store(STORE_WAIT if remote else 0.0)
        self.store.subscribe(self.worker.wake)
        self._tasks = [asyncio.create_task(self.worker.run(), name="worker"),
                       asyncio.create_task(self._purge_loop(), name="purge"),
                       asyncio.create_task(self._watch_loop(), name="watch-config")]

    async def _open_store(self, patience: float) -> None:
        """Open the store, waiting a while for a database that is still starting."""
        deadline = time.monotonic() + patience
        delay = 0.5
        while True:
            try:
                await self.store.open()
                return
            except SchemaTooNew:
                raise
            except StoreError as e:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("store not available yet (%s); retrying in %.1fs", e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def stop(self) -> None:
        await self.worker.stop(self.config.sending.grace_period)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.store.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def reload(self) -> None:
        """Load, validate and build the new config; swap it in only if all of that worked.

        Reloads never overlap. A failed one keeps the running config and raises why.
        Jobs already queued keep their rendered text; their URLs come from the new config.
        """
        async with self._reload_lock:
            try:
                config = await asyncio.to_thread(config_mod.load, self.config_path, self.env)
                live = build_runtime(config, self.executor, self._circuit_opened)
                _log_warnings(config)
            except Exception as e:  # whatever went wrong, the running config stays
                self.metrics.reload_success.set(0)
                log.error("config reload failed; keeping the running config:\n%s", e)
                raise
            changed = [k for k in RESTART_KEYS if _setting(config, k) != _setting(self.config, k)]
            if changed:
                log.warning("%s changed: restart the relay to apply (the rest is live now)",
                            ", ".join(changed))
            self.live = live
            self.metrics.reload_success.set(1)
            self.metrics.reload_time.set(time.time())
            self.worker.config_changed()
            log.info("config reloaded", extra=fields(routes=len(config.routes),
                                                     receivers=len(config.receivers)))

    async def _watch_loop(self) -> None:
        """With server.watch_config, reload once the file has changed and then held still."""
        loaded = previous = _file_signature(self.config_path)
        while True:
            await asyncio.sleep(WATCH_EVERY)
            if not self.config.server.watch_config:
                continue
            current = await asyncio.to_thread(_file_signature, self.config_path)
            # Unchanged since the last look: an editor (or a ConfigMap swap) is done writing.
            if current is not None and current != loaded and current == previous:
                loaded = current
                await _reload_quietly(self)
            previous = current

    async def readiness(self) -> dict[str, bool]:
        try:
            await asyncio.wait_for(self.store.ping(), 2.0)
            store_ok = True
        except (TimeoutError, StoreError):
            store_ok = False
        return {"config": True, "store": store_ok, "worker": self.worker.running}

    def _circuit_opened(self, receiver: str, error: str) -> None:
        fallback = self.config.sending.fallback_receiver
        if fallback and fallback != receiver:
            asyncio.get_running_loop().create_task(self._notify_fallback(fallback, receiver, error))

    async def _notify_fallback(self, fallback: str, receiver: str, error: str) -> None:
        now = self.clock()
        stamp = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        payload = {"event": "relay.receiver_failing", "delivery_id": "-", "timestamp": stamp,
                   "receiver": receiver, "error": error}
        event = Event(payload["event"], "-", stamp, None, payload)
        jobs = [Notification(fallback, i, "(fallback)", f"Receiver {receiver} is failing",
                       f"The relay paused deliveries to {receiver!r} after repeated failures"
                       f" and will probe it again. Last error: {error}", "failure", "text")
                for i in range(len(self.config.receivers[fallback].urls))]
        try:
            await self.store.accept(event, f"circuit:{receiver}:{stamp}", jobs, now=now)
        except StoreError as e:
            log.error("could not queue the failing-receiver notice: %s", e)

    async def _purge_loop(self) -> None:
        while True:
            await asyncio.sleep(PURGE_EVERY)
            await self.purge()

    async def purge(self) -> int:
        """Delete finished events past retention, in small batches that let ingest through."""
        total = 0
        before = self.clock() - self.config.store.retention
        try:
            while (n := await self.store.purge(before, 500)) > 0:
                total += n
                await asyncio.sleep(0.05)
        except StoreError as e:
            log.warning("purge postponed: %s", e)
        if total:
            log.info("purged %d old events", total)
        return total


async def serve(config_path: str, env: Mapping[str, str] | None = None,
                listen: str | None = None, log_args: list[str] | None = None) -> None:
    """Run until SIGTERM/SIGINT; SIGHUP reloads the config."""
    relay = Relay(config_path, env)
    host, _, port = (listen or relay.config.server.listen).rpartition(":")
    # Bind before the store and worker start: a relay that cannot listen (the port is
    # taken, say by another relay on the same store) must not start sending either.
    sock = bind(host or "0.0.0.0", int(port))
    extra = SendingProcesses(config_path, relay.config.sending.processes - 1, log_args or [])
    app = relay.web_app()
    if extra.count:
        app.on_startup.append(lambda _: _start_extra(relay, extra))
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = await server.listen(runner, host or "0.0.0.0", int(port), lambda: relay.config, sock)
    settle_garbage_collector()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def hangup() -> None:
        loop.create_task(_reload_quietly(relay))
        extra.signal(signal.SIGHUP)

    loop.add_signal_handler(signal.SIGHUP, hangup)
    log.info("listening", extra=fields(listen=f"{host}:{port}", path=relay.config.server.path,
                                       store=relay.config.store.url.split(":", 1)[0],
                                       pid=os.getpid()))
    await stop.wait()
    log.info("shutting down (grace %.0fs)", relay.config.sending.grace_period)
    await site.stop()
    await asyncio.gather(runner.cleanup(), extra.stop(relay.config.sending.grace_period))
    log.info("stopped")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; raises OSError (`socket.gaierror` for a name that does not resolve)."""
    host = host.removeprefix("[").removesuffix("]")  # [::1]:8080 names an IPv6 address
    family, *_ = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                    flags=socket.AI_PASSIVE)[0]
    return socket.create_server((host, port), family=family, backlog=1024)


async def _start_extra(relay: Relay, extra: SendingProcesses) -> None:
    extra.start()
    relay.store.subscribe(extra.wake)


async def send_only(config_path: str) -> None:
    """A sending-only process (`sending.processes`): the worker without the HTTP server."""
    relay = Relay(config_path)
    await relay.start()
    settle_garbage_collector()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(_reload_quietly(relay)))
    follow_parent(relay.worker.wake, stop)
    log.info("sending only", extra=fields(pid=os.getpid()))
    await stop.wait()
    await relay.stop()


def settle_garbage_collector() -> None:
    """Move start-up objects out of the collector's sight and collect less often.

    Measured (bench/README.md): the collector's pauses made up much of the ack
    p99 under load; freezing the long-lived start-up heap cut p99 by about a
    quarter at no memory cost.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


async def _reload_quietly(relay: Relay) -> None:
    try:
        await relay.reload()
    except Exception:  # already logged; the old config keeps serving
        pass


def _log_warnings(config: Config) -> None:
    for issue in config.warnings:
        log.warning("config: %s", issue)


def _setting(config: Config, dotted: str) -> Any:
    section, key = dotted.split(".")
    return getattr(getattr(config, section), key)


def _file_signature(path: str) -> bytes | None:
    """A digest of the file's content: mtimes can be too coarse, and a `touch` changes nothing.

    Follows symlinks, so a Kubernetes ConfigMap update (a swapped link) is seen too.
    """
    try:
        return hashlib.sha256(Path(path).read_bytes()).digest()
    except OSError:
        return None
