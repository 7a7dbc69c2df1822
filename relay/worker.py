"""The send loop: claim due jobs per receiver -> send -> record the outcome.

Each receiver is claimed for separately and only up to its free capacity
(concurrency slots, rate-limit tokens, circuit state), so a slow or failing
receiver never holds back another one, and nothing waits in memory: excess
jobs wait in the store.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Protocol

from relay.config import Config
from relay.errors import StaleClaim, StoreError
from relay.logs import fields
from relay.metrics import Metrics
from relay.notify import Notifier, Outcome
from relay.retry import delay_for
from relay.store import Attempt, Bucket, Circuit, Job, Store, new_owner

log = logging.getLogger(__name__)
POLL = 1.0  # re-check every receiver at least this often (other processes add jobs too)
ORPHAN_CHECK = 30.0


class Runtime(Protocol):
    """What the worker needs from the live config; swapped whole on reload."""

    config: Config
    notifier: Notifier

    def on_circuit_open(self, receiver: str, error: str) -> None: ...


class Worker:
    def __init__(self, store: Store, runtime: Callable[[], Runtime], metrics: Metrics,
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None,
                 ) -> None:
        self.store = store
        self.runtime = runtime
        self.metrics = metrics
        self.clock = clock
        self.rng = rng or random.Random()
        self.owner = new_owner()
        self.inflight: dict[asyncio.Task[None], Job] = {}
        self._per_receiver: dict[str, int] = {}
        self._not_before: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._orphans_at = 0.0
        self._exited = asyncio.Event()
        self._exited.set()
        self.ticks = 0  # completed passes over the receivers (tests wait on it)
        self._stopping = False
        self.running = False
        self.paused = False

    def wake(self) -> None:
        """New jobs exist: look at every receiver again now."""
        self._not_before.clear()
        self._wake.set()

    def config_changed(self) -> None:
        """A reload may have removed receivers: look for their jobs now."""
        self._orphans_at = 0.0
        self.wake()

    async def run(self) -> None:
        self.running = True
        self._exited.clear()
        backoff = 0.5
        try:
            while not self._stopping:
                self._wake.clear()  # before the tick, so a wake-up during it is not lost
                try:
                    wait = await self._tick()
                    backoff = 0.5
                except StoreError as e:
                    log.error("store unavailable, worker backing off %.1fs: %s", backoff, e)
                    wait, backoff = backoff, min(backoff * 2, 30.0)
                await self._sleep(wait)
        finally:
            self.running = False
            self._exited.set()

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), max(0.0, seconds))
        except TimeoutError:
            pass

    async def _tick(self) -> float:
        rt = self.runtime()
        now = self.clock()
        if self.paused:
            return POLL
        wake_at = now + POLL
        cap = rt.config.sending.concurrency
        for name, rc in rt.config.receivers.items():
            if self._not_before.get(name, 0.0) > now:
                wake_at = min(wake_at, self._not_before[name])
                continue
            free = min(rc.concurrency - self._per_receiver.get(name, 0), cap - len(self.inflight))
            if free <= 0:
                continue
            result = await self.store.claim(
                name, limit=free, now=now, lease=rt.config.sending.lease, owner=self.owner,
                bucket=Bucket(rc.rate_limit.count, rc.rate_limit.per) if rc.rate_limit else None,
                circuit=_circuit(rt.config))
            self.metrics.circuit_open.labels(name).set(1 if result.paused else 0)
            for job in result.jobs:
                self._start(job, rt)
            if len(result.jobs) < free:
                self._not_before[name] = min(result.wait_until or now + POLL, now + POLL)
                wake_at = min(wake_at, self._not_before[name])
        if now >= self._orphans_at:
            self._orphans_at = now + ORPHAN_CHECK
            await self._bury_orphans(rt, now)
        self.ticks += 1
        return wake_at - now

    async def _bury_orphans(self, rt: Runtime, now: float) -> None:
        """Jobs whose receiver left the config go dead with that reason (replay after a fix)."""
        for name in await self.store.active_receivers() - set(rt.config.receivers):
            result = await self.store.claim(name, limit=100, now=now,
                                            lease=rt.config.sending.lease, owner=self.owner,
                                            bucket=None, circuit=_circuit(rt.config))
            for job in result.jobs:
                why = f"receiver {name!r} is no longer in the config"
                await self.store.bury(job, Attempt(now, "failed", why))
                log.error("dead: %s", why, extra=fields(job_id=job.id, receiver=name))

    def _start(self, job: Job, rt: Runtime) -> None:
        task = asyncio.create_task(self._attempt(job, rt))
        self.inflight[task] = job
        self._per_receiver[job.receiver] = self._per_receiver.get(job.receiver, 0) + 1
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        job = self.inflight.pop(task)
        self._per_receiver[job.receiver] -= 1
        self._wake.set()

    async def _attempt(self, job: Job, rt: Runtime) -> None:
        started = self.clock()
        t0 = time.perf_counter()
        outcome = await rt.notifier.send(job.receiver, job.url_index, job.title, job.body,
                                         job.type, job.format)
        elapsed = time.perf_counter() - t0
        self.metrics.attempt_seconds.labels(job.receiver).observe(elapsed)
        attempt = Attempt(started, outcome.kind, outcome.error, elapsed)
        await self._record(job, outcome, attempt, rt)

    async def _record(self, job: Job, outcome: Outcome, attempt: Attempt, rt: Runtime) -> None:
        """Write the outcome, retrying while the store is down (the lease covers us meanwhile)."""
        backoff = 0.2
        while True:
            try:
                await self._apply(job, outcome, attempt, rt)
                return
            except StaleClaim:
                log.warning("job %s was taken over by another worker; outcome dropped", job.id,
                            extra=fields(job_id=job.id, receiver=job.receiver))
                return
            except StoreError as e:
                if self._stopping and backoff > 2:
                    log.error("could not record job %s before shutdown: %s", job.id, e)
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _apply(self, job: Job, outcome: Outcome, attempt: Attempt, rt: Runtime) -> None:
        info = fields(job_id=job.id, event_id=job.event_id, delivery_id=job.delivery_id,
                      route=job.route, receiver=job.receiver, url=job.url_index,
                      attempt=job.attempts + 1)
        if outcome.sent:
            await self.store.complete(job, attempt)
            self.metrics.notifications.labels(job.receiver, "sent").inc()
            log.info("sent", extra=info)
            return
        delay = None
        if outcome.kind == "retry":
            delay = delay_for(rt.config.retry_for(job.receiver), job.attempts + 1,
                              outcome.min_delay, attempt.at - job.created_at, self.rng)
        if delay is None:
            why = outcome.error if outcome.kind == "failed" else \
                f"gave up after {job.attempts + 1} attempts: {outcome.error}"
            await self.store.bury(job, Attempt(attempt.at, outcome.kind, why, attempt.duration))
            self.metrics.count_burial(job.receiver, outcome.kind)
            log.error("dead: %s", why, extra=info)
            return
        opened = await self.store.retry_later(job, attempt, at=attempt.at + delay,
                                              circuit=_circuit(rt.config))
        self.metrics.notifications.labels(job.receiver, "retry").inc()
        log.warning("retry in %.0fs: %s", delay, outcome.error, extra=info)
        if opened:
            log.error("receiver %s keeps failing; pausing it", job.receiver,
                      extra=fields(receiver=job.receiver))
            rt.on_circuit_open(job.receiver, outcome.error)

    async def stop(self, grace: float) -> None:
        """Stop claiming; let in-flight sends finish within `grace`, then release the rest."""
        self._stopping = True
        self._wake.set()
        await self._exited.wait()  # no claim is half-way when we look at what is in flight
        tasks = list(self.inflight)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            unfinished = [self.inflight[t] for t in pending if t in self.inflight]
            for task in pending:
                task.cancel()
            for job in unfinished:
                await self._release(job)

    async def _release(self, job: Job) -> None:
        try:
            await self.store.release(job)
            log.info("released job %s for a later run", job.id, extra=fields(job_id=job.id))
        except StoreError as e:
            log.warning("could not release job %s (its lease will expire): %s", job.id, e)


def _circuit(config: Config) -> Circuit:
    c = config.sending.circuit
    return Circuit(c.failures, c.cooldown, c.max_cooldown)
