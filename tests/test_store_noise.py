"""Digest windows and held jobs in the store (schema step 7), against SQLite and PostgreSQL.

A second store instance on the same database stands in for another replica.
"""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from relay.errors import StaleClaim
from relay.store import (
    JOB_STATES,
    SCHEMA_VERSION,
    DeliverySummary,
    Store,
    Timer,
    TimerChange,
    TimerOp,
    open_store,
    sql_pages,
)
from relay.store.rules import summary_key
from relay.store.schema import migrations
from tests import test_store_contract as contract
from tests.test_store_contract import T0, Backend, claim, event, job

backend = contract.backend  # the same fixtures: every test runs on SQLite and PostgreSQL
store = contract.store
KEY = "failures:hub3:ops:0"


def collect(full_at: int | None = None, window: float = 600.0) -> TimerOp:
    return TimerOp("open", "digest", KEY, delay=window, collect=True, full_at=full_at,
                   context={"route": "failures", "receiver": "ops", "url_index": 0,
                            "window": window, "full_at": full_at})


async def join(store: Store, n: int, op: TimerOp, now: float = T0) -> Any:
    return await store.accept(event(delivery=f"d{n}", n=n), f"k{n}", [], now=now, timers=[op])


async def take(store: Store, now: float, owner: str = "a") -> list[Timer]:
    return await store.claim_timers(limit=10, now=now, lease=30.0, owner=owner)


def held(receiver: str = "ops", until: float = T0 + 3600) -> Any:
    return replace(job(receiver), held_until=until)


# ---------------------------------------------------------------- digests


async def test_a_window_collects_its_events_in_arrival_order_and_fires_them_once(
        store: Store) -> None:
    first = await join(store, 1, collect())
    assert first.timers == (TimerChange("open", "digest", KEY),)
    for n in (2, 3):
        assert (await join(store, n, collect(), now=T0 + n)).timers == ()  # joins, no new timer
    assert (await store.stats()).open_windows == 1
    assert await take(store, T0 + 599) == []
    [timer] = await take(store, T0 + 600)  # the first event's window: later ones do not move it
    inputs = await store.timer_inputs(timer)
    assert [i.event.payload["delivery_id"] for i in inputs.items] == ["d1", "d2", "d3"]
    await store.fire(timer, [job("ops")], now=T0 + 600, consumed=inputs)
    assert await take(store, T0 + 10_000) == []
    assert (await store.stats()).open_windows == 0
    assert len((await claim(store, "ops", now=T0 + 600)).jobs) == 1


async def test_a_duplicate_event_does_not_join_twice(store: Store) -> None:
    await join(store, 1, collect())
    assert (await join(store, 1, collect())).duplicate
    [timer] = await take(store, T0 + 600)
    assert len((await store.timer_inputs(timer)).items) == 1


async def test_max_events_makes_the_window_due_at_once(store: Store) -> None:
    await join(store, 1, collect(full_at=2))
    assert await take(store, T0 + 5) == []
    await join(store, 2, collect(full_at=2), now=T0 + 5)
    [timer] = await take(store, T0 + 5)
    assert timer.due_at == T0 + 5


async def test_an_event_joining_while_the_window_fires_reopens_it_and_is_sent_next(
        store: Store) -> None:
    await join(store, 1, collect())
    [timer] = await take(store, T0 + 600)
    inputs = await store.timer_inputs(timer)
    await join(store, 2, collect(), now=T0 + 601)  # arrives after the digest was rendered
    await store.fire(timer, [job("ops")], now=T0 + 602, consumed=inputs)
    assert await take(store, T0 + 601 + 599) == []
    [again] = await take(store, T0 + 601 + 600)  # a window of its own, from its arrival
    assert again.id == timer.id
    assert [i.event.payload["delivery_id"] for i in
            (await store.timer_inputs(again)).items] == ["d2"]


async def test_only_one_replica_fires_a_window(backend: Backend) -> None:
    a, b = await backend.open(), await backend.open()
    for n in range(5):
        await join(a if n % 2 else b, n, collect(), now=T0 + n)
    taken = await asyncio.gather(take(a, T0 + 600, "a"), take(b, T0 + 600, "b"))
    assert sorted(len(t) for t in taken) == [0, 1]
    [timer] = taken[0] or taken[1]
    mine, other = (a, b) if taken[0] else (b, a)
    inputs = await mine.timer_inputs(timer)
    assert len(inputs.items) == 5
    stolen = await take(other, T0 + 700, "b")  # the lease ran out: claimed again elsewhere
    await other.fire(stolen[0], [job("ops")], now=T0 + 700,
                     consumed=await other.timer_inputs(stolen[0]))
    with pytest.raises(StaleClaim):
        await mine.fire(timer, [job("ops")], now=T0 + 701, consumed=inputs)
    assert len((await claim(mine, "ops", now=T0 + 701)).jobs) == 1


async def test_purge_keeps_the_events_a_window_waits_for(store: Store) -> None:
    await join(store, 1, collect(window=10 * 86400.0))
    await store.accept(event(delivery="d9"), "k9", [], now=T0)  # nothing waits for this one
    assert await store.purge(T0 + 1) >= 1
    [timer] = await take(store, T0 + 10 * 86400)
    assert [i.event.payload["delivery_id"] for i in
            (await store.timer_inputs(timer)).items] == ["d1"]


async def test_the_timeline_of_a_delivery_lists_the_digest_its_event_joined(
        store: Store) -> None:
    await join(store, 1, collect())
    await join(store, 2, collect())
    timeline = await store.timeline("d2")
    assert [(t.kind, t.key, t.state) for t in timeline.timers] == [("digest", KEY, "armed")]


# ---------------------------------------------------------------- held jobs


async def test_a_held_job_waits_in_the_backlog_and_opens_its_summary_timer(store: Store) -> None:
    accepted = await store.accept(event(), "k1", [held(until=T0 + 3600), job("other")], now=T0)
    assert accepted.timers == (TimerChange("open", "quiet", summary_key("ops", 0)),)
    assert store.backlog_estimate() == 2
    assert ((await store.stats()).backlog, (await store.stats()).held) == (2, 1)
    assert (await claim(store, "ops", now=T0 + 4000)).jobs == []  # never claimed: no attempts
    [timer] = await take(store, T0 + 3600)
    assert (timer.kind, timer.due_at, dict(timer.context)) == \
        ("quiet", T0 + 3600, {"receiver": "ops", "url_index": 0})
    inputs = await store.timer_inputs(timer)
    assert [(j.receiver, j.state, j.attempts) for j in inputs.held] == [("ops", "held", 0)]
    await store.fire(timer, [job("ops")], now=T0 + 3600, consumed=inputs)
    assert (await store.stats()).held == 0
    # The summary is about no one delivery: the delivery's timeline shows its job summarised.
    assert [(j.receiver, j.state) for j in (await store.timeline("d1")).jobs] == \
        [("ops", "summarised"), ("other", "pending")]
    assert store.backlog_estimate() == 2  # the summary in, the held job out


async def test_recent_deliveries_count_a_held_job_as_waiting(store: Store) -> None:
    # The deliveries page said "1 sent" for a delivery whose other notification waited for
    # the morning's summary (and "none" for one with only held notifications).
    await store.accept(event(), "k1", [held(), job("other")], now=T0)
    await store.accept(event(delivery="d2"), "k2", [held()], now=T0 + 1)
    [other] = (await claim(store, "other", now=T0 + 2)).jobs
    await store.complete(other, contract.attempt(T0 + 3, "sent", ""))
    recent = await store.recent_deliveries(10)
    assert [(d.delivery_id, d.sent, d.waiting, d.dead) for d in recent] == \
        [("d2", 0, 1, 0), ("d1", 1, 1, 0)]


async def test_recent_deliveries_count_summarised_and_suppressed_jobs_and_digest_events(
        store: Store) -> None:
    # The deliveries page said "none" for a delivery whose notifications went out inside
    # quiet hours' summary (its own page: "summarised"), or were suppressed by a
    # cancellation, or whose events waited for or went out in a digest.
    await store.accept(event(), "k1", [held(), job("other", suppress=True)], now=T0)
    await store.accept(event("delivery.cancelled"), "k1c", [], now=T0 + 1)  # suppresses other
    await join(store, 2, collect(), now=T0 + 2)
    timers = await take(store, T0 + 3600)
    assert sorted(t.kind for t in timers) == ["digest", "quiet"]
    for timer in timers:
        await store.fire(timer, [job("ops")], now=T0 + 3600,
                         consumed=await store.timer_inputs(timer))
    await join(store, 3, collect(), now=T0 + 3601)
    recent = await store.recent_deliveries(10)
    assert [(d.delivery_id, d.sent, d.waiting, d.dead, d.summarised, d.suppressed,
             d.collecting, d.digested) for d in recent] == \
        [("d3", 0, 0, 0, 0, 0, 1, 0), ("d2", 0, 0, 0, 0, 0, 0, 1), ("d1", 0, 0, 0, 1, 1, 0, 0)]


def test_the_deliveries_list_counts_every_job_state_in_a_field_of_its_own() -> None:
    fields = set(vars(DeliverySummary("d1", "delivery.updated", None, T0, 1, 0, 0, 0)))
    assert {s: sql_pages.counted_as(s) in fields for s in JOB_STATES} == \
        dict.fromkeys(JOB_STATES, True)


async def test_a_job_held_while_the_summary_fires_gets_the_next_summary(store: Store) -> None:
    await store.accept(event(), "k1", [held(until=T0 + 3600)], now=T0)
    [timer] = await take(store, T0 + 3600)
    inputs = await store.timer_inputs(timer)
    await store.accept(event(delivery="d2"), "k2", [held(until=T0 + 90_000)], now=T0 + 3600)
    await store.fire(timer, [job("ops")], now=T0 + 3601, consumed=inputs)
    assert await take(store, T0 + 89_999) == []
    [again] = await take(store, T0 + 90_000)
    assert [j.delivery_id for j in (await store.timer_inputs(again)).held] == ["d2"]


async def test_a_summary_released_to_a_later_time_consumes_nothing_and_then_takes_both(
        store: Store) -> None:
    await store.accept(event(), "k1", [held(until=T0 + 3600)], now=T0)
    [timer] = await take(store, T0 + 5400)  # found due late, inside the next quiet time
    await store.release_timer(timer, due_at=T0 + 9000)
    await store.accept(event(delivery="d2"), "k2", [held(until=T0 + 9000)], now=T0 + 5400)
    assert await take(store, T0 + 8999) == []
    assert (await store.stats()).held == 2
    [again] = await take(store, T0 + 9000)
    assert (again.id, again.due_at) == (timer.id, T0 + 9000)
    inputs = await store.timer_inputs(again)
    assert [j.delivery_id for j in inputs.held] == ["d1", "d2"]
    await store.fire(again, [job("ops")], now=T0 + 9000, consumed=inputs)
    assert (await store.stats()).held == 0
    assert await take(store, T0 + 100_000) == []


async def test_a_cancellation_suppresses_held_updates_too(store: Store) -> None:
    await store.accept(event(), "k1", [replace(held(), suppress_stale=True)], now=T0)
    await store.accept(event("delivery.cancelled"), "k2", [], now=T0 + 1)
    [timer] = await take(store, T0 + 3600)
    assert (await store.timer_inputs(timer)).held == ()
    assert (await store.stats()).held == 0


async def test_purge_keeps_held_jobs_and_their_events(store: Store) -> None:
    await store.accept(event(), "k1", [held(until=T0 + 90_000)], now=T0)
    await store.purge(T0 + 80_000)
    assert [j.state for j in (await store.timeline("d1")).jobs] == ["held"]


# ---------------------------------------------------------------- migration


def test_a_version_5_sqlite_file_keeps_its_jobs_attempts_and_indexes_through_the_rebuild(
        tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    steps = migrations("sqlite")
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA foreign_keys=ON")
        for step in range(1, 6):
            conn.executescript(f"BEGIN;{steps[step]}PRAGMA user_version={step};COMMIT;")
        conn.execute("INSERT INTO events (dedup_key, type, delivery_id, received_at, payload)"
                     " VALUES ('k', 'delivery.updated', 'd1', 1, '{}')")
        conn.execute("INSERT INTO jobs (event_id, receiver, url_index, route, title, body, type,"
                     " format, delivery_id, event_type, created_at, next_attempt_at, state)"
                     " VALUES (1, 'ops', 0, 'r', 't', 'b', 'info', 'text', 'd1',"
                     " 'delivery.updated', 1, 1, 'dead')")
        conn.execute("INSERT INTO attempts (job_id, at, outcome, error, duration)"
                     " VALUES (1, 1, 'failed', 'HTTP 400', 0.1)")
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("UPDATE jobs SET state = 'held'")

    async def upgrade() -> None:
        s = open_store(f"sqlite:{path}")
        await s.open()
        try:
            detail = await s.detail(1)
            assert detail is not None and [a.error for a in detail.history] == ["HTTP 400"]
            await s.accept(event(delivery="d2"), "k2", [held()], now=T0)
            assert (await s.stats()).held == 1
        finally:
            await s.close()

    asyncio.run(upgrade())
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("SELECT count(*) FROM attempts").fetchone()[0] == 1
        indexes = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'jobs'")}
        assert {"jobs_due", "jobs_event", "jobs_delivery", "jobs_sent", "jobs_held"} <= indexes
