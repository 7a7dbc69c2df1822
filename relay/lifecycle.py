"""One running relay: store, worker, send processes, supervised tasks, reload, readiness, purge.

Process concerns (signals, the listening socket) are the entry points'
(`relay.app`); what is compiled from a config is `relay.runtime`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from relay import config as config_mod
from relay.config import Config
from relay.errors import ConfigError, SchemaTooNew, StoreError
from relay.exposure import example_token, shared_tokens
from relay.logs import fields, scrub
from relay.metrics import Metrics
from relay.notice import FailingReceiverNotice
from relay.observers import LogObserver, MetricsObserver
from relay.runtime import Runtime, build_runtime
from relay.sending import Sending
from relay.sendpool import SendPool
from relay.store import Store, new_owner, open_store
from relay.supervisor import Supervisor
from relay.web import Readiness, Services, create_app
from relay.worker import Worker
from relay.yamlfile import MAX_BYTES

log = logging.getLogger(__name__)
FRESH_START_WAIT = 5.0  # seconds a reload waits for the store to close a changed URL's circuit
PURGE_EVERY = 600.0
STORE_WAIT = 30.0  # at start-up, wait this long for the database (e.g. a PostgreSQL starting)
WATCH_EVERY = 0.5  # server.watch_config: how often the file is looked at
RESTART_KEYS = ("server.listen", "server.path", "store.url", "sending.processes")


class Relay:
    """One running relay: store, worker, web app and the live runtime."""

    def __init__(self, config_path: str, env: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.time,
                 live_api: Mapping[str, str] | None = None, log_args: Sequence[str] = (),
                 loaded: tuple[str, Config] | None = None) -> None:
        """`live_api`: platform API roots for tests (see `relay.sending.Sending`); `log_args`:
        the logging options of `serve`, for its send processes; `loaded`: the file's text and
        config as `serve` read them (else read here)."""
        self.config_path = config_path
        self.env = env
        self.clock = clock
        self.metrics = Metrics()
        text, config = loaded or config_mod.load_text(config_path, env)
        _log_warnings(config)
        self.executor = ThreadPoolExecutor(max_workers=config.sending.concurrency,
                                           thread_name_prefix="send")
        # With sending.processes > 1 every send runs in a send process, none here.
        self.senders = (SendPool(config.sending.processes - 1, text, config_path,
                                 config.sending.attempt_timeout, env, log_args)
                        if config.sending.processes > 1 else None)
        if self.senders is not None:
            self.senders.launch()
        self.live: Runtime = build_runtime(config, self.executor, self.senders)
        if self.senders is not None:
            self.senders.fallback = self.live.notifier
        try:
            self.store: Store = open_store(config.store.url, exclusive=True,
                                           busy_timeout=config.store.busy_timeout)
        except StoreError as e:
            raise ConfigError([config.source.issue("store.url", str(e))]) from None
        self.tasks = Supervisor()
        self.sending = Sending(self.store, new_owner(), clock, live_api)
        self.worker = Worker(self.store, lambda: self.live, self.metrics, clock,
                             sender=self.sending)
        self.worker.on_crash = self.tasks.crash
        counted, logged = MetricsObserver(self.metrics), LogObserver()
        for observer in (counted, logged, FailingReceiverNotice(self.store, lambda: self.live,
                                                                 clock, self.tasks.spawn)):
            self.worker.subscribe(observer)
        for timer_observer in (counted, logged):
            self.worker.timers.subscribe(timer_observer)
        self._reload_lock = asyncio.Lock()
        self.reload_failure = ""  # why the file no longer loads, since the last reload tried
        self.metrics.reload_success.set(1)
        self.metrics.reload_time.set(time.time())

    @property
    def config(self) -> Config:
        return self.live.config

    def web_app(self) -> web.Application:
        services = Services(self.store, self.metrics, lambda: self.live, self.reload,
                            self.readiness, self.clock, self.worker.owner)
        app = create_app(services, self.config.server.path, self.config.server.max_body_bytes)
        app.cleanup_ctx.append(self._lifetime)
        return app

    async def _lifetime(self, app: web.Application) -> Any:
        await self.start()
        yield
        await self.stop()

    async def start(self) -> None:
        if self.senders is not None:  # first: they load while the store opens
            await self.senders.start()
        remote = self.config.store.url.startswith(("postgresql:", "postgres:"))
        await self._open_store(STORE_WAIT if remote else 0.0)
        self.store.subscribe(self.worker.wake)
        self.store.subscribe_timers(self.worker.wake_timers)
        self.supervise("worker", self.worker.run())
        self.supervise("purge", self._purge_loop())
        self.supervise("watch-config", self._watch_loop())

    def supervise(self, name: str, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a background task for the relay's lifetime; its crash makes /readyz fail."""
        self.tasks.spawn(name, coro)

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
        await self.sending.close()
        if self.senders is not None:  # after the worker: its last sends run there
            await self.senders.close()
        await self.tasks.stop()
        await self.store.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def reload(self) -> None:
        """Load, validate and build the new config; swap it in only if all of that worked.

        Reloads never overlap. A failed one keeps the running config and raises why.
        Jobs already queued keep their rendered text; their URLs come from the new config.
        """
        async with self._reload_lock:
            try:
                text, config = await asyncio.to_thread(config_mod.load_text, self.config_path,
                                                       self.env)
                live = build_runtime(config, self.executor, self.senders)
                _log_warnings(config)
            except Exception as e:  # whatever went wrong, the running config stays
                self.metrics.reload_success.set(0)
                self.reload_failure = _first_line(e)
                log.error("config reload failed; keeping the running config:\n%s", e)
                raise
            for warning in moved_urls(self.config, config):
                log.warning("%s", warning)
            changed = [k for k in RESTART_KEYS if _setting(config, k) != _setting(self.config, k)]
            if changed:
                log.warning("%s changed: restart the relay to apply (the rest is live now)",
                            ", ".join(changed))
            before, self.live = self.config, live
            if self.senders is not None:
                self.senders.configure(text, config.sending.attempt_timeout)
                self.senders.fallback = live.notifier
            self.reload_failure = ""
            self.metrics.reload_success.set(1)
            self.metrics.reload_time.set(time.time())
            await self._fresh_start(changed_urls(before, config))
            self.worker.config_changed()
            log.info("config reloaded", extra=fields(routes=len(config.routes),
                                                     receivers=len(config.receivers)))

    async def _fresh_start(self, changed: Sequence[tuple[str, int]]) -> None:
        """Another URL in a receiver's place: what the old one failed at counts no more.
        Its circuit closes and the jobs waiting out a retry's backoff go now (the new URL is
        what they go to); a store that does not answer leaves them on their schedule."""
        for name, index in changed:
            try:  # bounded: a reload's answer never waits on a database that hangs
                waiting = await asyncio.wait_for(
                    self.store.retry_now(name, index, now=self.clock()), FRESH_START_WAIT)
            except (StoreError, TimeoutError) as e:
                log.warning('receiver "%s": urls[%d] changed, but its circuit and retries stay'
                            " as they were: %s", name, index,
                            e if isinstance(e, StoreError) else "the store did not answer in"
                            f" {FRESH_START_WAIT:g}s (kourier-relay retry-now does it later)")
                continue
            log.info('receiver "%s": urls[%d] is another URL now: its circuit is closed and'
                     " its %d waiting retr%s go now", name, index, waiting,
                     "y" if waiting == 1 else "ies",
                     extra=fields(receiver=name, url_index=index, retries=waiting))

    async def reload_quietly(self) -> None:
        """A reload whose failure is only logged (SIGHUP, the file watch): the old config serves."""
        try:
            await self.reload()
        except Exception:  # already logged by reload()
            pass

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
                await self.reload_quietly()
            previous = current

    async def readiness(self) -> Readiness:
        """The store answers, the worker runs and its last pass did not fail, and no
        background task has crashed."""
        try:
            await asyncio.wait_for(self.store.ping(), 2.0)
            store_ok = True
        except (TimeoutError, StoreError):
            store_ok = False
        crashed = dict(self.tasks.crashed)
        # The store answers a ping, yet the worker's passes fail (a table it may not use):
        # nothing is sent. While the store does not answer, that is the store's check; once
        # it answers again, a pass now says whether the worker still fails.
        if store_ok and self.worker.failing and self.worker.running:
            await self.worker.recheck(2.0)
        failing = self.worker.failing if store_ok else ""
        checks = {"config": True, "store": store_ok,
                  "worker": self.worker.running and not crashed and not failing}
        reasons = {name: f"crashed: {why}" for name, why in crashed.items()}
        if failing and "worker" not in reasons:
            reasons["worker"] = f"its passes fail, so nothing is sent: {failing}"
        if self.reload_failure:  # ready, on the config it runs; the file would not start
            reasons["config"] = ("the file no longer loads, so a restart would fail; serving"
                                 f" the config loaded before: {self.reload_failure}")
        return Readiness(checks, reasons)

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


def _first_line(e: Exception) -> str:
    """Why a reload failed, in one line: a config error's first issue (and how many more)."""
    if isinstance(e, ConfigError) and e.issues:
        more = len(e.issues) - 1
        return str(e.issues[0]) + (f" (and {more} more)" if more else "")
    return scrub(" ".join(str(e).split()) or type(e).__name__)


def moved_urls(old: Config, new: Config) -> list[str]:
    """A reload that moves a receiver's URL to another place in its `urls` (a reorder, or a
    URL removed before it): jobs, live messages and circuits go by place, so what waits for
    the old place now goes to the URL there. Said by index only (the URLs hold secrets)."""
    out = []
    for name in sorted(old.receivers.keys() & new.receivers.keys()):
        moves = _moves(old.receivers[name].urls, new.receivers[name].urls)
        if moves:
            out.append(f'receiver "{name}": its URLs changed places ({", ".join(moves)}); jobs,'
                       " live messages and circuits go by place in urls, so those waiting for a"
                       " place now go to the URL there: put the URLs back in their order, or let"
                       " the receiver's queue empty before moving them")
    return out


def changed_urls(old: Config, new: Config) -> list[tuple[str, int]]:
    """The (receiver, index) places that hold another URL than before (fixed, rotated,
    moved), in both configs."""
    return [(name, i) for name in sorted(old.receivers.keys() & new.receivers.keys())
            for i, (was, now) in enumerate(zip(old.receivers[name].urls,
                                               new.receivers[name].urls, strict=False))
            if was != now]


def _moves(was: Sequence[str], now: Sequence[str]) -> list[str]:
    """`urls[i] is now urls[j]` for each URL no longer at its place; a URL listed twice
    is matched place by place (one still where it was has not moved)."""
    kept = {i for i, u in enumerate(was) if i < len(now) and now[i] == u}
    free = [j for j in range(len(now)) if j not in kept]
    moves = []
    for i, u in enumerate(was):
        j = None if i in kept else next((j for j in free if now[j] == u), None)
        if j is not None:
            free.remove(j)
            moves.append(f"urls[{i}] is now urls[{j}]")
    return moves


def _log_warnings(config: Config) -> None:
    for issue in (*config.warnings, *shared_tokens(config)):
        log.warning("config: %s", issue)
    if said := example_token(config):
        log.warning("%s", said)


def _setting(config: Config, dotted: str) -> Any:
    section, key = dotted.split(".")
    return getattr(getattr(config, section), key)


def _file_signature(path: str) -> bytes | None:
    """A digest of the file's content: mtimes can be too coarse, and a `touch` changes nothing.

    Follows symlinks, so a Kubernetes ConfigMap update (a swapped link) is seen too.
    """
    try:
        with open(path, "rb") as f:  # no further than a config is read (a swap to a device)
            return hashlib.sha256(f.read(MAX_BYTES + 1)).digest()
    except OSError:
        return None
