"""The timer rules (relay.store.rules TIMER_FROM), against SQLite and PostgreSQL alike.

A second store instance on the same database stands in for another replica.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from relay.errors import StaleClaim
from relay.store import Store, Timer, TimerChange, TimerOp
from tests import test_store_contract as contract
from tests.conftest import wait_for
from tests.test_store_contract import T0, Backend, claim, event, job

backend = contract.backend  # the same fixtures: every test runs on SQLite and PostgreSQL
store = contract.store

WATCH = "not-delivered:d1"


def arm(key: str = WATCH, delay: float = 100.0, delivery: str = "d1", **context: Any,
        ) -> TimerOp:
    return TimerOp("arm", "watch", key, delivery, delay=delay,
                   context=context or {"watch": "not-delivered"})


def disarm(key: str = WATCH) -> TimerOp:
    return TimerOp("disarm", "watch", key, "d1")


def open_(key: str = "route-1:ops", delay: float = 60.0) -> TimerOp:
    return TimerOp("open", "digest", key, "", delay=delay, context={"route": "route-1"})


async def send(store: Store, n: int, *ops: TimerOp, now: float = T0, type: str = "delivery.updated",
               ts: str = "2024-09-14T14:30:00Z", delivery: str = "d1") -> Any:
    return await store.accept(event(type, delivery, ts, n=n), f"k{n}{delivery}", [], now=now,
                              timers=list(ops))


async def take(store: Store, now: float, owner: str = "a", limit: int = 10,
               lease: float = 30.0) -> list[Timer]:
    return await store.claim_timers(limit=limit, now=now, lease=lease, owner=owner)


# ---------------------------------------------------------------- arming in accept


async def test_an_armed_timer_is_stored_with_the_event_and_is_due_after_its_delay(
        store: Store) -> None:
    accepted = await send(store, 1, arm(delay=100.0))
    assert accepted.timers == (TimerChange("arm", "watch", WATCH),)
    assert await take(store, T0 + 99.9) == []
    [timer] = await take(store, T0 + 100)
    assert (timer.kind, timer.key, timer.delivery_id, timer.event_id, timer.due_at,
            timer.armed_at, timer.state, dict(timer.context)) == \
        ("watch", WATCH, "d1", accepted.event_id, T0 + 100, T0, "claimed",
         {"watch": "not-delivered"})
    assert timer.claim_token


async def test_a_timer_due_at_a_given_time_ignores_the_delay(store: Store) -> None:
    await send(store, 1, TimerOp("open", "quiet", "ops:0", due_at=T0 + 7, delay=999))
    assert [t.due_at for t in await take(store, T0 + 7)] == [T0 + 7]


async def test_a_duplicate_event_applies_none_of_its_timer_operations(store: Store) -> None:
    await send(store, 1, arm())
    await send(store, 2, disarm())
    again = await send(store, 1, arm())  # Kourier retries the arming event
    assert again.duplicate and again.timers == ()
    assert await take(store, T0 + 1000) == []


async def test_re_arming_restarts_the_clock_and_replaces_the_context(store: Store) -> None:
    await send(store, 1, arm(delay=100.0))
    second = await send(store, 2, arm(delay=100.0, watch="not-delivered", n=2), now=T0 + 50)
    assert await take(store, T0 + 100) == []
    [timer] = await take(store, T0 + 150)
    assert (timer.event_id, timer.armed_at, timer.context["n"]) == (second.event_id, T0 + 50, 2)


async def test_a_disarmed_timer_never_fires_and_disarming_nothing_changes_nothing(
        store: Store) -> None:
    assert (await send(store, 1, disarm())).timers == ()
    await send(store, 2, arm())
    assert (await send(store, 3, disarm())).timers == (TimerChange("disarm", "watch", WATCH),)
    assert (await send(store, 4, disarm())).timers == ()
    assert await take(store, T0 + 10_000) == []
    [timer] = (await store.timeline("d1")).timers
    assert (timer.state, timer.ended_at) == ("disarmed", T0)


async def test_a_watch_follows_its_deliverys_timestamps_not_the_arrival_order(
        store: Store) -> None:
    def at(action: str, ts: float) -> TimerOp:
        return TimerOp(action, "watch", WATCH, "d1", delay=100.0,  # type: ignore[arg-type]
                       context={"watch": "not-delivered", "event_at": ts})

    # The stop (time 20) arrives first, with no timer: it leaves a disarmed one.
    assert (await send(store, 1, at("disarm", 20.0))).timers == ()
    assert (await send(store, 2, at("arm", 10.0))).timers == ()  # older: arms nothing
    assert (await send(store, 3, at("arm", 20.0))).timers == ()  # as old as the stop: nothing
    [timer] = (await store.timeline("d1")).timers
    assert (timer.state, timer.context["event_at"], timer.context["never_armed"]) == \
        ("disarmed", 20.0, True)
    assert await take(store, T0 + 10_000) == []
    # A newer start arms; an older stop still disarms, and does not move the time back.
    assert (await send(store, 4, at("arm", 30.0))).timers == (TimerChange("arm", "watch", WATCH),)
    assert (await send(store, 5, at("disarm", 25.0))).timers == \
        (TimerChange("disarm", "watch", WATCH),)
    assert (await send(store, 6, at("arm", 28.0))).timers == ()
    [timer] = (await store.timeline("d1")).timers
    assert (timer.state, timer.context["event_at"]) == ("disarmed", 30.0)
    assert "never_armed" not in timer.context


async def test_the_last_operation_on_one_timer_in_one_event_wins(store: Store) -> None:
    await send(store, 1, arm("w:d1"))
    accepted = await send(store, 2, arm(), disarm(), disarm("w:d1"), arm("w:d1"))
    assert accepted.timers == (TimerChange("arm", "watch", "w:d1"),)  # WATCH: never armed
    assert [(t.key, t.state) for t in (await store.timeline("d1")).timers] == [("w:d1", "armed")]


async def test_open_creates_a_window_a_later_event_does_not_move(store: Store) -> None:
    assert (await send(store, 1, open_(delay=60))).timers == \
        (TimerChange("open", "digest", "route-1:ops"),)
    assert (await send(store, 2, open_(delay=60), now=T0 + 30)).timers == ()
    [timer] = await take(store, T0 + 60)
    await store.fire(timer, [], now=T0 + 60)
    assert (await send(store, 3, open_(delay=60), now=T0 + 70)).timers  # a new window
    assert [t.due_at for t in await take(store, T0 + 130)] == [T0 + 130]


# ---------------------------------------------------------------- claiming and firing


async def test_firing_inserts_the_jobs_and_the_timer_fires_only_once(store: Store) -> None:
    accepted = await send(store, 1, arm())
    [timer] = await take(store, T0 + 100)
    woken: list[int] = []
    store.subscribe(lambda: woken.append(1))
    assert await store.fire(timer, [job(), job(url_index=1)], now=T0 + 101) == 2
    assert woken == [1]  # the worker hears of the new jobs
    jobs = (await claim(store, now=T0 + 101)).jobs + (await claim(store, now=T0 + 101,
                                                                  url_index=1)).jobs
    assert [(j.event_id, j.delivery_id, j.event_type, j.created_at) for j in jobs] == \
        [(accepted.event_id, "d1", "timer.watch", T0 + 101)] * 2
    with pytest.raises(StaleClaim):
        await store.fire(timer, [job()], now=T0 + 102)
    assert await take(store, T0 + 10_000) == []
    [fired] = (await store.timeline("d1")).timers
    assert (fired.state, fired.ended_at, fired.claim_token) == ("fired", T0 + 101, "")
    assert store.backlog_estimate() == 2


async def test_a_claimed_timer_is_not_claimed_again_until_its_lease_expires(
        backend: Backend, store: Store) -> None:
    other = await backend.open()
    await send(store, 1, arm())
    [first] = await take(store, T0 + 100, owner="a", lease=30)
    assert await take(other, T0 + 129, owner="b") == []
    [second] = await take(other, T0 + 131, owner="b")
    assert second.id == first.id and second.claim_token != first.claim_token
    with pytest.raises(StaleClaim):  # the first owner came back too late
        await store.fire(first, [job()], now=T0 + 132)
    assert await other.fire(second, [job()], now=T0 + 132) == 1


async def test_a_stop_or_a_re_arm_while_firing_takes_the_claim_away(store: Store) -> None:
    await send(store, 1, arm(), arm("w:d2", delivery="d2"))
    claimed = {t.key: t for t in await take(store, T0 + 100)}
    await send(store, 2, disarm(), now=T0 + 100)
    await send(store, 3, arm("w:d2", delivery="d2"), now=T0 + 100, delivery="d2")
    for timer in claimed.values():
        with pytest.raises(StaleClaim):
            await store.fire(timer, [job()], now=T0 + 101)
    assert (await claim(store, now=T0 + 101)).jobs == []
    assert [t.key for t in await take(store, T0 + 200)] == ["w:d2"]  # the new arming


async def test_a_released_timer_is_armed_again(store: Store) -> None:
    await send(store, 1, arm())
    [timer] = await take(store, T0 + 100)
    await store.release_timer(timer)
    assert [t.id for t in await take(store, T0 + 100)] == [timer.id]


async def test_due_timers_come_oldest_first_up_to_the_limit(store: Store) -> None:
    for n, delay in enumerate([30, 10, 20]):
        await send(store, n, arm(f"w:{n}", delay=delay))
    assert [t.key for t in await take(store, T0 + 100, limit=2)] == ["w:1", "w:2"]
    assert [t.key for t in await take(store, T0 + 100, limit=2)] == ["w:0"]


async def test_two_stores_claiming_together_fire_each_timer_exactly_once(
        backend: Backend, store: Store) -> None:
    other = await backend.open()
    for n in range(40):
        await send(store, n, arm(f"w:{n}", delivery=f"d{n}"), delivery=f"d{n}")

    async def worker(s: Store, owner: str) -> int:
        fired = 0
        while timers := await take(s, T0 + 100, owner=owner, limit=3):
            for timer in timers:
                fired += await s.fire(timer, [job()], now=T0 + 100)
            await asyncio.sleep(0)
        return fired

    counts = await asyncio.gather(*(worker(s, f"o{i}") for i, s in
                                    enumerate([store, other, store, other])))
    assert sum(counts) == 40
    jobs = (await claim(store, limit=100, now=T0 + 100)).jobs
    assert sorted(j.delivery_id for j in jobs) == sorted(f"d{n}" for n in range(40))


# ---------------------------------------------------------------- inputs, timeline, purge


async def test_inputs_are_the_arming_event_and_the_deliverys_newest_event(store: Store) -> None:
    first = await send(store, 1, arm(), type="delivery.created", ts="2024-09-14T10:00:00Z")
    newest = await send(store, 2, ts="2024-09-14T12:00:00Z")
    await send(store, 3, ts="2024-09-14T11:00:00Z")  # arrives last, but is older
    [timer] = await take(store, T0 + 100)
    inputs = await store.timer_inputs(timer)
    assert inputs.arming is not None and inputs.last is not None
    assert (inputs.arming.id, inputs.arming.type, inputs.arming.payload["n"]) == \
        (first.event_id, "delivery.created", 1)
    assert (inputs.last.id, inputs.last.payload["n"]) == (newest.event_id, 2)


async def test_the_timeline_lists_the_deliverys_timers(store: Store) -> None:
    await send(store, 1, arm(), arm("other:d1"))
    await send(store, 2, arm("w:d9", delivery="d9"), delivery="d9")
    timeline = await store.timeline("d1")
    assert [(t.key, t.state) for t in timeline.timers] == \
        [(WATCH, "armed"), ("other:d1", "armed")]


async def test_the_timeline_lists_ended_and_re_armed_timers_and_no_other_kind(
        store: Store) -> None:
    """A delivery's watch timers are found through its events (schema step 8): a re-armed
    timer (its arming event is a later one), a disarmed one and a fired one all show; a
    quiet-hours timer opened by the same event is the receiver's, not the delivery's."""
    await send(store, 1, arm(), arm("gone:d1"), arm("due:d1", delay=5),
               TimerOp("open", "quiet", "ops:0", due_at=T0 + 50))
    await send(store, 2, arm(), disarm("gone:d1"), now=T0 + 1)
    [fired] = [t for t in await take(store, T0 + 10) if t.key == "due:d1"]
    await store.fire(fired, [], now=T0 + 10)
    timeline = await store.timeline("d1")
    assert [(t.key, t.state) for t in timeline.timers] == \
        [(WATCH, "armed"), ("gone:d1", "disarmed"), ("due:d1", "fired")]
    assert timeline.timers[0].event_id == timeline.events[1].id  # re-armed by event 2


async def listening(store: Store) -> None:
    """A PostgreSQL store's LISTEN connection is up (it wakes its subscribers once then)."""
    if hasattr(store, "listening"):
        await wait_for(lambda: store.listening, message="the LISTEN connection")


async def test_timer_subscribers_hear_of_armed_and_changed_timers_only(store: Store) -> None:
    """The worker's timers pass asks for due timers when this wake-up says so (or a second
    later): an event that arms or disarms one wakes it; one with only jobs, or that changes
    no timer (a disarm of nothing), does not. (A PostgreSQL store ignores its own NOTIFY.)"""
    await listening(store)
    jobs: list[int] = []
    timers: list[int] = []
    store.subscribe(lambda: jobs.append(1))
    store.subscribe_timers(lambda: timers.append(1))
    await send(store, 1, arm())
    assert (len(jobs), len(timers)) == (1, 1)
    await store.accept(event(delivery="d2", n=2), "k2", [job()], now=T0)
    assert (len(jobs), len(timers)) == (2, 1)
    await send(store, 3, disarm("nothing:d1"))
    assert (len(jobs), len(timers)) == (2, 1)
    await send(store, 4, disarm())
    assert (len(jobs), len(timers)) == (3, 2)


async def test_a_replica_hears_which_kind_of_work_another_one_added(backend: Backend) -> None:
    """PostgreSQL: another store on the schema hears of jobs, and of timers only when some
    changed. SQLite: no store hears another's writes (its worker's poll finds them)."""
    here, there = await backend.open(), await backend.open()
    await listening(there)
    jobs: list[int] = []
    timers: list[int] = []
    there.subscribe(lambda: jobs.append(1))
    there.subscribe_timers(lambda: timers.append(1))
    await here.accept(event(delivery="d2", n=2), "k2", [job()], now=T0)
    if backend.name == "sqlite":
        await send(here, 3, arm())
        assert (jobs, timers) == ([], [])
        return
    await wait_for(lambda: jobs, message="the other replica's NOTIFY")
    assert timers == []  # a job only: the other replica's timers pass is not woken
    await send(here, 3, arm())
    await wait_for(lambda: timers, message="the other replica's NOTIFY of a timer")
    assert len(jobs) == 2


async def test_purge_keeps_events_of_live_timers_and_removes_ended_timers(store: Store) -> None:
    live = await send(store, 1, arm("w:live", delivery="live"), delivery="live")
    await send(store, 2, arm("w:gone", delivery="gone"), delivery="gone")
    await send(store, 3, disarm("w:gone"), now=T0 + 10, delivery="gone")
    while await store.purge(T0 + 1000, batch=10):
        pass
    assert [t.key for t in (await store.timeline("live")).timers] == ["w:live"]
    assert (await store.timeline("gone")).timers == ()
    assert [e.id for e in (await store.timeline("live")).events] == [live.event_id]
    [timer] = await take(store, T0 + 100)
    inputs = await store.timer_inputs(timer)
    assert inputs.arming is not None and inputs.arming.id == live.event_id


async def test_an_older_database_gains_timers_and_keeps_its_jobs(backend: Backend,
                                                                   store: Store) -> None:
    await store.accept(event(), "k", [job()], now=T0)
    await store.close()
    await backend.downgrade_to_1()
    upgraded = await backend.open()
    await send(upgraded, 1, arm())
    assert len(await take(upgraded, T0 + 100)) == 1
    assert len((await claim(upgraded)).jobs) == 1
