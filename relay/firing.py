"""The worker's timers pass: claim due timers, fire each through its kind's handler, once.

Each tick the worker runs this pass before its job claims, so the jobs a timer
makes are claimed in the same tick. A timer is claimed with a lease like a
job; its kind's handler (`Planner.handlers`: `watch`, `digest`, `quiet`)
renders its jobs from `store.timer_inputs`, and `store.fire` inserts them and
marks the timer fired in one transaction, only while the claim still holds, so
each timer fires once across replicas.
Observers hear what each claimed timer came to, as the worker's observers
hear each job's decision.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from relay.errors import StaleClaim, StoreError
from relay.runtime import Runtime
from relay.store import Timer, TimerQueue

log = logging.getLogger("relay.worker")  # operators filter on the worker's logger name
BATCH = 50  # due timers claimed per pass; a full batch means another pass at once
# Unless timers were armed or changed meanwhile (`kick`), the store is asked for due
# timers at most this often (real seconds, the worker's poll): a pass that only claims
# jobs (one per send completion while a backlog drains) then costs no timer claim.
LOOK = 1.0


@dataclass(frozen=True)
class TimerReport:
    """What one claimed timer came to.

    `fired`: its jobs are queued. `stale`: disarmed, re-armed or taken over while
    it was being rendered, so nothing was sent (a re-armed timer fires later).
    `deferred`: due again at `until`, nothing consumed (a summary found due inside
    its receiver's next quiet time: `Planner.deferred`).
    `unhandled`: no handler for its kind here; it stays claimed until its lease
    ends, for a relay that has one (a newer replica during a rolling upgrade).
    """

    timer: Timer
    outcome: Literal["fired", "stale", "unhandled", "deferred"]
    jobs: int = 0
    until: float | None = None


class TimerObserver(Protocol):
    """Hears every claimed timer's outcome; must not block (it runs on the event loop)."""

    def observe_timer(self, report: TimerReport) -> None: ...


class TimerPass:
    """The timers part of the worker's pass; `on_crash` hears a handler's bug."""

    def __init__(self, store: TimerQueue, owner: str,
                 on_crash: Callable[[str, BaseException], None]) -> None:
        self.store = store
        self.owner = owner
        self.on_crash = on_crash
        self.observers: list[TimerObserver] = []
        self._next_look = 0.0

    def subscribe(self, observer: TimerObserver) -> None:
        self.observers.append(observer)

    def kick(self) -> None:
        """Timers were armed or changed: the next pass asks the store."""
        self._next_look = 0.0

    async def run(self, rt: Runtime, now: float) -> bool:
        """Fire every due timer of one batch; True when the batch was full (more may be due).

        Asks the store only when kicked, or `LOOK` seconds after it last asked."""
        if time.monotonic() < self._next_look:
            return False
        timers = await self.store.claim_timers(limit=BATCH, now=now,
                                               lease=rt.config.sending.lease, owner=self.owner)
        self._next_look = time.monotonic() + LOOK if len(timers) < BATCH else 0.0
        for timer in timers:
            try:
                report = await self._fire(timer, rt, now)
            except StaleClaim:
                report = TimerReport(timer, "stale")
            except StoreError:
                raise  # the worker backs off; the timer's lease gives it back meanwhile
            except Exception as e:  # a bug, not an outcome: the timer's lease ends, it is tried again
                self.on_crash(f"firing of timer {timer.id} ({timer.kind})", e)
                continue
            for observer in self.observers:
                observer.observe_timer(report)
        return len(timers) >= BATCH

    async def _fire(self, timer: Timer, rt: Runtime, now: float) -> TimerReport:
        handler = rt.planner.handlers.get(timer.kind)
        if handler is None:
            return TimerReport(timer, "unhandled")
        inputs = await self.store.timer_inputs(timer)
        later = rt.planner.deferred(timer, inputs, now)
        if later is not None:  # at `later` it fires with all it holds then, in one message
            await self.store.release_timer(timer, due_at=later)
            return TimerReport(timer, "deferred", until=later)
        jobs = handler(timer, inputs, now)
        # Consumed: exactly the digest events and held jobs rendered; later ones re-open it.
        await self.store.fire(timer, jobs, now=now, consumed=inputs)
        return TimerReport(timer, "fired", len(jobs))

