"""The worker's timers pass: a stop or re-arm while a timer is being fired, a kind this relay
has no handler for, a handler that crashes. A real relay and store on the fake clock; the
only stand-ins are at our own seams (the planner's handlers, a gate on the store's reads).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from relay.pipeline import FireHandler, Planner
from relay.store import Timer, TimerInputs
from relay.store.records import TimerKind
from tests.conftest import FakeClock, wait_for
from tests.test_supervision import _not_ready, tracebacks
from tests.test_watches import HOUR, created, start, ts

LEASE = 60.0


def timer_row(db: Path) -> tuple[str, str | None]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT state, claim_token FROM timers").fetchone()


def fired_count(r) -> float:
    value = r.relay.metrics.registry.get_sample_value(
        "kourier_relay_timers_total", {"kind": "watch", "change": "fired"})
    return value or 0.0


class Gate:
    """The relay's own store, with one read that stops for the test: `reached` is set when it
    gets there, and it goes on once the test sets `go`."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.reached = asyncio.Event()
        self.go = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def stop(self) -> None:
        self.reached.set()
        await self.go.wait()


class GatedInputs(Gate):
    """`timer_inputs` stops: the moment between a timer's claim and its fire, when an event
    may still change it."""

    async def timer_inputs(self, timer: Timer) -> TimerInputs:
        inputs = await self.store.timer_inputs(timer)
        await self.stop()
        return inputs


@pytest.mark.parametrize("meanwhile", ["cancelled", "created again"])
async def test_an_event_that_changes_a_timer_while_it_fires_means_nothing_is_sent(
        running, sink, tmp_path, caplog, meanwhile):
    caplog.set_level(logging.INFO, logger="relay.worker")
    clock = FakeClock()
    r = await start(running, sink, clock)
    await r.post(created(clock))
    clock.advance(4 * HOUR)
    gate = GatedInputs(r.relay.store)
    r.relay.worker.timers.store = gate
    firing = asyncio.create_task(r.relay.worker.run_once())
    await asyncio.wait_for(gate.reached.wait(), 10)
    assert timer_row(tmp_path / "relay.db")[0] == "claimed"
    event = created(clock) if meanwhile == "created again" else {
        "event": "delivery.cancelled", "delivery_id": "D-1", "timestamp": ts(clock)}
    assert (await r.post(event))[0] == 202  # ingest is not held by the worker's pass
    gate.go.set()
    await firing
    await r.relay.worker.run_once()
    assert sink.messages("ops") == []
    assert (await r.relay.store.stats()).backlog == 0  # no job was queued either
    assert fired_count(r) == 0
    assert "timer changed before it fired" in caplog.text
    if meanwhile == "cancelled":
        assert timer_row(tmp_path / "relay.db")[0] == "disarmed"
        return
    assert timer_row(tmp_path / "relay.db")[0] == "armed"  # the clock started again
    clock.advance(4 * HOUR)
    await r.relay.worker.run_once()
    [message] = await wait_for(lambda: sink.messages("ops"), message="the re-armed alert")
    assert message["title"] == "Delivery D-1 not delivered after 4h"
    assert fired_count(r) == 1


@dataclass(frozen=True)
class PlannerWith(Planner):
    """The running planner with other handlers: an older relay, or a broken handler."""

    only: dict[TimerKind, FireHandler] | None = None

    @property
    def handlers(self) -> dict[TimerKind, FireHandler]:
        return self.only or {}


def use_handlers(r, handlers: dict[TimerKind, FireHandler]) -> None:
    planner = r.relay.live.planner
    r.relay.live = replace(r.relay.live, planner=PlannerWith(
        planner.config, planner.router, planner.templates, planner.channels, planner.watches,
        handlers))


async def test_a_kind_this_relay_cannot_fire_stays_claimed_for_one_that_can(
        running, sink, tmp_path, caplog):
    """A rolling upgrade: a replica without the kind's handler leaves the timer to its lease."""
    clock = FakeClock()
    r = await start(running, sink, clock)
    newer = r.relay.live
    await r.post(created(clock))
    use_handlers(r, {})
    clock.advance(4 * HOUR)
    await r.relay.worker.run_once()
    state, token = timer_row(tmp_path / "relay.db")
    assert state == "claimed" and sink.messages("ops") == []
    assert "no handler for watch timers here; left for a relay that has one" in caplog.text
    clock.advance(LEASE - 1)
    await r.relay.worker.run_once()
    assert timer_row(tmp_path / "relay.db") == ("claimed", token)  # its lease still holds
    r.relay.live = newer
    clock.advance(2)
    await r.relay.worker.run_once()
    [message] = await wait_for(lambda: sink.messages("ops"), message="the alert, after the lease")
    assert message["title"] == "Delivery D-1 not delivered after 4h 1m"
    assert timer_row(tmp_path / "relay.db")[0] == "fired"


async def test_a_crashing_handler_is_logged_fails_readyz_and_the_lease_retries_it(
        running, sink, tmp_path, caplog):
    clock = FakeClock()
    r = await start(running, sink, clock)
    good = r.relay.live
    await r.post(created(clock))

    def broken(timer: Timer, inputs: TimerInputs, now: float) -> tuple[()]:
        raise RuntimeError(f"handler bug on timer {timer.id}")

    use_handlers(r, {"watch": broken})
    clock.advance(4 * HOUR)
    caplog.set_level(logging.ERROR)
    await r.relay.worker.run_once()
    status, body = await wait_for(lambda: _not_ready(r.url), message="readyz to fail")
    assert body["reasons"] == {"firing of timer 1 (watch)":
                               "crashed: RuntimeError: handler bug on timer 1"}
    assert tracebacks(caplog, "firing of timer 1 (watch)")
    assert r.relay.worker.running  # the loop goes on: other timers and jobs still go out
    assert timer_row(tmp_path / "relay.db")[0] == "claimed"
    r.relay.live = good  # the fix is deployed
    clock.advance(LEASE + 1)
    await r.relay.worker.run_once()
    await wait_for(lambda: sink.messages("ops"), message="the alert once the lease ended")
    assert timer_row(tmp_path / "relay.db")[0] == "fired"


async def test_the_pass_asks_the_store_for_due_timers_only_when_kicked_or_a_look_later(
        running, sink, tmp_path):
    """A pass that only claims jobs (one per completed send while a backlog drains) costs
    no timer claim: the store is asked when timers were armed or changed here (the store's
    timer wake-up), after `run_once()`, or `LOOK` seconds after the last time."""
    from relay import firing
    from tests.test_watches import timers as timer_states

    clock = FakeClock()
    r = await start(running, sink, clock)
    await r.post(created(clock, "D-1"))
    await r.relay.worker.pause()  # only this test's passes from here on
    timers, rt, db = r.relay.worker.timers, r.relay.worker.runtime(), tmp_path / "relay.db"
    await timers.run(rt, clock())  # kicked by the arming: asks, nothing is due yet
    clock.advance(4 * HOUR)
    await timers.run(rt, clock())  # within LOOK of the last look, no kick: does not ask
    assert timer_states(db) == [("not-delivered:D-1", "armed")]
    await r.post(created(clock, "D-2"))  # arms a timer: the store's wake-up kicks the pass
    await timers.run(rt, clock())
    assert timer_states(db) == [("not-delivered:D-1", "fired"), ("not-delivered:D-2", "armed")]
    clock.advance(4 * HOUR)
    await timers.run(rt, clock())
    assert timer_states(db)[1] == ("not-delivered:D-2", "armed")
    timers._next_look -= firing.LOOK  # as if a LOOK had passed since (real seconds)
    await timers.run(rt, clock())
    assert timer_states(db)[1] == ("not-delivered:D-2", "fired")
    r.relay.worker.resume()
    await wait_for(lambda: len(sink.messages("ops")) == 2, message="both alerts")


class GatedClaim(Gate):
    """The first `claim_timers` stops: a pass under way at the moment it asks which timers
    are due."""

    async def claim_timers(self, **kwargs: Any) -> list[Timer]:
        if not self.reached.is_set():
            await self.stop()
        return await self.store.claim_timers(**kwargs)


async def test_run_once_fires_what_is_due_at_its_own_moment_after_a_pass_under_way(
        running, sink):
    clock = FakeClock()
    r = await start(running, sink, clock)
    await r.post(created(clock))  # the watch falls due in 4 h
    gate = GatedClaim(r.relay.store)
    r.relay.worker.timers.store = gate
    earlier = asyncio.create_task(r.relay.worker.run_once())  # a pass now: nothing is due
    await asyncio.wait_for(gate.reached.wait(), 10)
    clock.advance(4 * HOUR)
    later = asyncio.create_task(r.relay.worker.run_once())
    await asyncio.sleep(0)  # a yield, not a wait: `later` starts and queues for the pass
    gate.go.set()
    await earlier
    await later  # its own pass, at its own moment: the watch is due
    assert fired_count(r) == 1
    [message] = await wait_for(lambda: sink.messages("ops"), message="the alert")
    assert message["title"] == "Delivery D-1 not delivered after 4h"
