"""The send loop: fire due timers, claim due jobs per receiver URL -> send -> record the outcome.

Each receiver URL (a receiver's name and the index of one of its URLs) is
claimed for separately and only up to its free capacity (its concurrency
slots, rate-limit tokens and circuit state, configured once on the receiver
and applied to each of its URLs), so a slow or failing URL never holds back
another one, not even its receiver's other URLs, and nothing waits in memory:
excess jobs wait in the store.

What an attempt means is decided by `relay.decision.decide` (pure); the worker
writes it to the store and tells its observers (metrics, logs, the
failing-receiver notice), which never edit the loop. Due timers (watches) are
fired first in each pass by `relay.firing.TimerPass`, so the jobs they make
are claimed in the same pass.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Protocol

from relay.config import ReceiverConfig
from relay.decision import Decision, Observer, Report, decide, orphaned
from relay.errors import StaleClaim, StoreError
from relay.firing import TimerPass
from relay.logs import fields, scrub
from relay.metrics import Metrics
from relay.notify import Outcome
from relay.runtime import Runtime
from relay.store import Attempt, Job, Store, new_owner

log = logging.getLogger(__name__)
POLL = 1.0  # re-check every receiver URL at least this often (other processes add jobs too)
ORPHAN_CHECK = 30.0
ORPHAN_BATCH = 100  # jobs of a removed receiver URL buried per pass; a full batch: at once again


class JobSender(Protocol):
    """Makes one attempt at a job (`relay.sending.Sending`: live messages, email threads)."""

    async def send(self, job: Job, rt: Runtime) -> Outcome: ...


class AppriseSender:
    """Every job through Apprise, as it was rendered."""

    async def send(self, job: Job, rt: Runtime) -> Outcome:
        m = job.message
        return await rt.send_with().send(job.receiver, job.url_index, m.title, m.body, m.type,
                                         m.format)


class Worker:
    """One send loop. Observers (`subscribe`) hear every recorded decision."""

    def __init__(self, store: Store, runtime: Callable[[], Runtime], metrics: Metrics,
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None,
                 sender: JobSender | None = None) -> None:
        self.store = store
        self.sender: JobSender = sender or AppriseSender()
        self.runtime = runtime
        self.metrics = metrics
        self.clock = clock
        self.rng = rng or random.Random()
        self.owner = new_owner()
        self.inflight: dict[asyncio.Task[None], Job] = {}
        self.observers: list[Observer] = []
        self.on_crash: Callable[[str, BaseException], None] = _log_only
        self.timers = TimerPass(store, self.owner, lambda what, e: self.on_crash(what, e))
        self._per_receiver: dict[tuple[str, int], int] = {}  # in flight per receiver URL
        self._not_before: dict[tuple[str, int], float] = {}
        self._wake = asyncio.Event()
        self._pass = asyncio.Lock()  # one pass at a time, whoever asks for it
        self._orphans_at = 0.0
        self._reloads = 0  # config_changed() calls: a pass that saw one begin looks again
        self._exited = asyncio.Event()
        self._exited.set()
        self._stopping = False
        self._paused = False
        self.running = False
        self.failing = ""  # why the last pass failed (a store error), until one succeeds
        self._passed = asyncio.Event()  # set when the loop's next pass ends

    def subscribe(self, observer: Observer) -> None:
        """Hear every recorded job decision (timers' outcomes: `self.timers.subscribe`)."""
        self.observers.append(observer)

    def wake(self) -> None:
        """New jobs exist: look at every receiver again now."""
        self._not_before.clear()
        self._wake.set()

    async def recheck(self, timeout: float) -> None:
        """Wake the loop out of its back-off and wait (at most `timeout`) for that pass to
        end: whether the worker still fails is then known now, not after up to 30 s."""
        passed = self._passed
        self.wake()
        try:
            await asyncio.wait_for(passed.wait(), timeout)
        except TimeoutError:
            pass

    def wake_timers(self) -> None:
        """Timers were armed or changed: look for due ones in the next pass."""
        self.timers.kick()
        self._wake.set()

    async def pause(self) -> None:
        """Claim nothing until `resume()`; returns once a pass under way is over.

        Sends already started finish and are recorded as usual.
        """
        self._paused = True
        async with self._pass:
            pass

    def resume(self) -> None:
        self._paused = False
        self.wake()

    def config_changed(self) -> None:
        """A reload may have removed receivers: look for their jobs now. A pass under way
        read the config before the reload, so its own look does not count (`_reloads`)."""
        self._reloads += 1
        self._orphans_at = 0.0
        self.wake()

    async def run_once(self) -> float:
        """One full pass, after any pass under way: fire due timers, then claim, send, record.

        Returns once every send it started is recorded, with the seconds until
        the loop would look again (for a caller that drives the clock itself).
        """
        started: list[asyncio.Task[None]] = []
        wait = await self._tick(started, fresh=True)
        await asyncio.gather(*started, return_exceptions=True)  # _done reports any crash
        return wait

    async def run(self) -> None:
        """The loop: until `stop()`. Store outages back off; anything else is a crash."""
        self.running = True
        self._exited.clear()
        backoff = 0.5
        try:
            while not self._stopping:
                self._wake.clear()  # before the tick, so a wake-up during it is not lost
                try:
                    wait = await self._tick()
                    backoff, self.failing = 0.5, ""
                except StoreError as e:
                    log.error("store unavailable, worker backing off %.1fs: %s", backoff, e)
                    wait, backoff = backoff, min(backoff * 2, 30.0)
                    self.failing = scrub(" ".join(str(e).split()))  # /readyz shows it
                self._passed.set()
                self._passed = asyncio.Event()
                await self._sleep(wait)
        finally:
            self.running = False
            self._exited.set()

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), max(0.0, seconds))
        except TimeoutError:
            pass

    async def _tick(self, started: list[asyncio.Task[None]] | None = None, *,
                    fresh: bool = False) -> float:
        """One pass. `fresh` (run_once): ask about timers and every receiver now, whatever
        an earlier pass, at an earlier moment, concluded; decided inside the pass, so a
        pass that was under way cannot use the request up at its own `now`."""
        async with self._pass:
            if fresh:
                self._not_before.clear()
                self.timers.kick()
            reloads = self._reloads
            rt = self.runtime()
            now = self.clock()
            if self._paused:
                return POLL
            more_timers = await self.timers.run(rt, now)
            wake_at = now if more_timers else now + POLL
            for name, rc in rt.config.receivers.items():
                for index in range(len(rc.urls)):
                    wake_at = min(wake_at, await self._claim_for((name, index), rc, rt, now,
                                                                 started))
            if now >= self._orphans_at:
                more = await self._bury_orphans(rt, now)
                if self._reloads == reloads:  # else the next pass looks with the new config
                    self._orphans_at = now if more else now + ORPHAN_CHECK
                wake_at = now if more else wake_at
            return wake_at - now

    async def _claim_for(self, url: tuple[str, int], rc: ReceiverConfig, rt: Runtime, now: float,
                         started: list[asyncio.Task[None]] | None) -> float:
        """Claim up to the receiver URL's free capacity; when to look at it again."""
        if self._not_before.get(url, 0.0) > now:
            return self._not_before[url]
        free = min(rc.concurrency - self._per_receiver.get(url, 0),
                   rt.config.sending.concurrency - len(self.inflight))
        if free <= 0:
            return now + POLL
        name, index = url
        result = await self.store.claim(
            name, index, limit=free, now=now, lease=rt.config.sending.lease, owner=self.owner,
            bucket=rc.rate_limit, circuit=rt.config.sending.circuit)
        self.metrics.set_circuit(name, index, result.paused)
        for job in result.jobs:
            task = self._start(job, rt)
            if started is not None:
                started.append(task)
        if len(result.jobs) >= free:
            return now + POLL
        self._not_before[url] = min(result.wait_until or now + POLL, now + POLL)
        return self._not_before[url]

    async def _bury_orphans(self, rt: Runtime, now: float) -> bool:
        """Jobs whose receiver left the config, or whose receiver no longer has their URL
        (the operator removed it from `urls`), go dead with that reason (replay after a fix),
        once no other live relay on the store sends for their URL either.

        At most one batch per receiver URL a pass, so that a removed URL's ten thousand
        jobs do not hold up the sends of the others; True: a batch was full, and the next
        pass (at once) buries more, instead of 100 every 30 s."""
        receivers = rt.config.receivers
        configured = {(name, i) for name, rc in receivers.items() for i in range(len(rc.urls))}
        self.metrics.keep_circuits(configured)
        # Not this relay's config alone: another replica may still (or already) send for a
        # receiver this config does not have (a rolling config change, relay.store.relays).
        live = await self.store.announce(self.owner, configured, now=now)
        more = False
        for name, index in sorted(await self.store.active_receivers() - live):
            dead = orphaned(name, index if name in receivers else None)
            # No circuit: a removed URL's circuit is often open (it is why it was
            # removed), and its jobs go dead now without a send, not one per probe.
            result = await self.store.claim(name, index, limit=ORPHAN_BATCH, now=now,
                                            lease=rt.config.sending.lease,
                                            owner=self.owner, bucket=None, circuit=None)
            for job in result.jobs:
                attempt = Attempt(now, "failed", dead.reason)
                await self.store.bury(job, attempt)
                self._tell(Report(job, attempt, dead, attempted=False))
            more = more or len(result.jobs) == ORPHAN_BATCH
        return more

    def _start(self, job: Job, rt: Runtime) -> asyncio.Task[None]:
        task = asyncio.create_task(self._attempt(job, rt), name=f"send-{job.id}")
        self.inflight[task] = job
        url = (job.receiver, job.url_index)
        self._per_receiver[url] = self._per_receiver.get(url, 0) + 1
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        job = self.inflight.pop(task)
        self._per_receiver[(job.receiver, job.url_index)] -= 1
        self._wake.set()
        if not task.cancelled() and (error := task.exception()) is not None:
            # A bug, not an outcome: the job stays claimed until its lease ends.
            self.on_crash(f"send of job {job.id}", error)

    async def _attempt(self, job: Job, rt: Runtime) -> None:
        started = self.clock()
        t0 = time.perf_counter()
        outcome = await self.sender.send(job, rt)
        attempt = Attempt(started, outcome.kind, outcome.error, time.perf_counter() - t0)
        decision = decide(job, outcome, rt.config.retry_for(job.receiver), started, self.rng)
        opened = await self._record(job, decision, attempt, rt)
        if opened is not None:
            self._tell(Report(job, attempt, decision, opened,
                              attempted=decision.kind != "postponed"))

    def _tell(self, report: Report) -> None:
        for observer in self.observers:
            observer.observe(report)

    async def _record(self, job: Job, decision: Decision, attempt: Attempt, rt: Runtime,
                      ) -> bool | None:
        """Write the decision, retrying while the store is down (the lease covers us meanwhile).

        Whether it opened the receiver URL's circuit; None when it could not be written.
        """
        backoff = 0.2
        while True:
            try:
                return await self._write(job, decision, attempt, rt)
            except StaleClaim:
                log.warning("job %s was taken over by another worker; outcome dropped", job.id,
                            extra=fields(job_id=job.id, receiver=job.receiver))
                return None
            except StoreError as e:
                if self._stopping and backoff > 2:
                    log.error("could not record job %s before shutdown: %s", job.id, e)
                    return None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _write(self, job: Job, decision: Decision, attempt: Attempt, rt: Runtime) -> bool:
        if decision.kind == "postponed":  # nothing was attempted: no attempt, no failure
            await self.store.release(job, at=decision.at)
            return False
        if decision.kind == "sent":  # a skipped live update reached nobody: no circuit news
            await self.store.complete(job, attempt, reached=decision.live != "skip")
            return False
        if decision.kind == "dead":
            circuit = rt.config.sending.circuit if decision.receiver_fault else None
            return await self.store.bury(job, Attempt(attempt.at, attempt.outcome,
                                                      decision.reason, attempt.duration),
                                         circuit=circuit)
        return await self.store.retry_later(job, attempt, at=decision.at,
                                            circuit=rt.config.sending.circuit)

    async def stop(self, grace: float) -> None:
        """Stop claiming; let in-flight sends finish within `grace`, then release the rest."""
        first, self._stopping = not self._stopping, True
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
        try:  # the other replicas need not wait ANNOUNCED_FOR to bury what only we sent for
            if first:
                await self.store.withdraw(self.owner)
        except StoreError as e:
            log.warning("could not say this relay stopped (the others will notice): %s", e)

    async def _release(self, job: Job) -> None:
        try:
            await self.store.release(job)
            log.info("released job %s for a later run", job.id, extra=fields(job_id=job.id))
        except StoreError as e:
            log.warning("could not release job %s (its lease will expire): %s", job.id, e)


def _log_only(what: str, error: BaseException) -> None:
    log.error("%s crashed", what, exc_info=error)

