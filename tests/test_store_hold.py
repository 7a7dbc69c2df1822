"""Holds and live jobs in both stores: coalescing at ingest, postponing, purge, the timeline."""

from __future__ import annotations

import asyncio
import subprocess
from dataclasses import replace

import pytest

from relay.message import Message
from relay.pipeline import Notification
from relay.store import Store, open_store, rules
from relay.store.rules import Coalesced, Waiting, coalesce
from tests.test_store_contract import (  # noqa: F401  (fixtures)
    T0,
    Backend,
    attempt,
    backend,
    claim,
    event,
    store,
)

REPLACED = "replaced during its hold by the notification of event {}"
T0_EVENT = 1726322400.0  # at(0), 2024-09-14T14:00:00Z


def held(hold: float = 10.0, receiver: str = "hook", live: bool = False) -> Notification:
    return Notification(receiver, 0, "route-1", Message("title", "body", "info", "text"),
                        live=live, hold=hold)


def at(minute: int) -> str:
    return f"2024-09-14T14:{minute:02d}:00Z"


async def states(store: Store, delivery: str = "d1") -> list[tuple[str, str]]:  # noqa: F811
    return [(j.state, j.last_error) for j in (await store.timeline(delivery)).jobs]


async def test_a_held_notification_replaces_the_waiting_one_and_keeps_its_due_time(
        store: Store) -> None:  # noqa: F811
    first = await store.accept(event(ts=at(0)), "k1", [held()], now=T0)
    second = await store.accept(event(ts=at(1)), "k2", [held()], now=T0 + 4)
    assert (first.jobs, second.jobs, second.suppressed) == (1, 1, "")
    assert await states(store) == [("suppressed", REPLACED.format(second.event_id)),
                                   ("pending", "")]
    assert (await store.stats()).backlog == 1
    assert (await claim(store, now=T0 + 9.9)).jobs == []
    (job,) = (await claim(store, now=T0 + 10)).jobs  # ten seconds after the first
    assert (job.event_id, job.event_at, job.live) == (second.event_id, T0_EVENT + 60, False)


async def test_an_update_older_than_the_waiting_one_is_not_queued(store: Store) -> None:  # noqa: F811
    await store.accept(event(ts=at(5)), "new", [held()], now=T0)
    late = await store.accept(event(ts=at(1)), "old", [held()], now=T0 + 1)
    assert (late.jobs, late.suppressed) == (0, "a notification of a newer event (job 1) was"
                                               " already waiting")
    assert [s for s, _ in await states(store)] == ["pending", "suppressed"]
    assert (await store.stats()).backlog == 1


async def test_what_is_being_sent_is_not_replaced(store: Store) -> None:  # noqa: F811
    await store.accept(event(ts=at(0)), "k1", [held()], now=T0)
    (sending,) = (await claim(store, now=T0 + 10)).jobs
    await store.accept(event(ts=at(1)), "k2", [held()], now=T0 + 11)
    assert [s for s, _ in await states(store)] == ["claimed", "pending"]
    assert (await claim(store, now=T0 + 20.9)).jobs == []  # its own hold, from its arrival
    assert len((await claim(store, now=T0 + 21)).jobs) == 1
    await store.complete(sending, attempt(T0 + 12, "sent", ""))


async def test_holds_are_per_receiver_url_and_delivery_and_only_where_asked(
        store: Store) -> None:  # noqa: F811
    await store.accept(event(ts=at(0)), "a", [held(), held(receiver="mail"), held(0, "chat")],
                       now=T0)
    await store.accept(event(delivery="d2", ts=at(1)), "b", [held()], now=T0)
    await store.accept(event(ts=at(2)), "c", [held(receiver="mail"), held(0, "chat")], now=T0)
    assert [(j.receiver, j.state) for j in (await store.timeline("d1")).jobs] == [
        ("hook", "pending"), ("mail", "suppressed"), ("chat", "pending"), ("mail", "pending"),
        ("chat", "pending")]
    assert [j.state for j in (await store.timeline("d2")).jobs] == ["pending"]


async def test_concurrent_held_updates_of_one_delivery_leave_one_waiting(
        backend: Backend) -> None:  # noqa: F811
    stores = [await backend.open() for _ in range(2)]
    await asyncio.gather(*(stores[i % 2].accept(event(ts=at(i)), f"k{i}", [held()], now=T0)
                           for i in range(8)))
    jobs = (await stores[0].timeline("d1")).jobs
    (waiting,) = [j for j in jobs if j.state == "pending"]
    assert waiting.event_at == T0_EVENT + 7 * 60 and len(jobs) == 8


async def test_a_postponed_job_is_due_again_without_an_attempt(store: Store) -> None:  # noqa: F811
    await store.accept(event(), "k", [held(0, live=True)], now=T0)
    (job,) = (await claim(store)).jobs
    assert job.live
    await store.release(job, at=T0 + 1)
    assert (await claim(store, now=T0 + 0.9)).jobs == []
    (again,) = (await claim(store, now=T0 + 1)).jobs
    assert (again.attempts, (await store.detail(job.id)).history) == (0, ())  # type: ignore[union-attr]


async def test_quiet_live_messages_are_purged_after_events_and_deliveries(
        store: Store) -> None:  # noqa: F811
    key, fresh = rules.live_key("d1", "route-1", "hook", 0), rules.live_key("d2", "r", "h", 0)
    await store.live_take(key, "d1", owner="a", now=T0, lease=30)
    await store.live_done(key, owner="a", ref='{"platform":"slack","channel":"C","message":"1"}',
                          shown=T0, now=T0)
    await store.live_take(fresh, "d2", owner="a", now=T0 + 900, lease=30)  # held: kept
    assert [await store.purge(T0 + 500) for _ in range(2)] == [1, 0]
    assert await store.live_ref(key) is None and await store.live_ref(fresh) is not None


async def test_the_timeline_shows_the_deliverys_live_message_refs(store: Store) -> None:  # noqa: F811
    key = rules.live_key("d1", "route-1", "hook", 0)
    ref = '{"platform":"slack","channel":"C0OPS","message":"1700000001.000001"}'
    await store.accept(event(), "k", [held(0, live=True)], now=T0)
    await store.live_take(key, "d1", owner="a", now=T0, lease=30)
    await store.live_done(key, owner="a", ref=ref, shown=T0, now=T0 + 1)
    timeline = await store.timeline("d1")
    (live,) = timeline.live
    assert (live.key, live.ref, live.shown, live.updated_at) == (key, ref, T0, T0 + 1)
    (j,) = timeline.jobs
    assert rules.live_key(j.delivery_id, j.route, j.receiver, j.url_index) == live.key


async def test_sqlite_frees_the_live_holds_of_a_dead_process_at_start(tmp_path) -> None:
    import socket

    proc = subprocess.Popen(["true"])
    proc.wait()  # a pid that no longer runs
    owner = f"{socket.gethostname()}:{proc.pid}:abcd/7"
    first = open_store(f"sqlite:{tmp_path / 'relay.db'}")
    await first.open()
    key = rules.live_key("d1", "r", "h", 0)
    await first.live_take(key, "d1", owner=owner, now=T0, lease=600)
    await first.live_take(rules.live_key("d2", "r", "h", 0), "d2", owner="elsewhere:1:x/1",
                          now=T0, lease=600)
    await first.close()
    again = open_store(f"sqlite:{tmp_path / 'relay.db'}")
    await again.open()
    try:
        assert await again.live_take(key, "d1", owner="b", now=T0 + 1, lease=30) is not None
        assert await again.live_take(rules.live_key("d2", "r", "h", 0), "d2", owner="b",
                                     now=T0 + 1, lease=30) is None  # another host's: its lease
    finally:
        await again.close()


@pytest.mark.parametrize("ts,hold,waiting,expected", [
    (5.0, 0.0, [Waiting(1, 1.0, 50.0)], Coalesced(T0)),  # no hold: nothing waits
    (5.0, 10.0, [], Coalesced(T0 + 10)),
    (5.0, 10.0, [Waiting(1, 1.0, T0 + 3)], Coalesced(T0 + 3, (1,))),  # keeps the first's time
    (5.0, 10.0, [Waiting(1, 5.0, T0 + 30)], Coalesced(T0 + 10, (1,))),  # same time: the later wins
    (5.0, 10.0, [Waiting(1, None, T0 + 30)], Coalesced(T0 + 10, (1,))),  # queued before event_at
    (5.0, 10.0, [Waiting(1, 9.0, T0 + 3), Waiting(2, 7.0, T0 + 4)], Coalesced(T0, (), 1)),
])
def test_coalesce_replaces_older_waiting_notifications_and_never_extends_the_hold(
        ts, hold, waiting, expected) -> None:
    assert coalesce(ts, T0, hold, waiting) == expected


# ---------------------------------------------------------------- holds and quiet hours


async def test_quiet_hours_win_over_a_hold_and_a_held_job_is_never_replaced(
        store: Store) -> None:  # noqa: F811
    quiet_until = T0 + 3600
    before = await store.accept(event(ts=at(0)), "k1", [held()], now=T0)  # before quiet hours
    night = [await store.accept(event(ts=at(m)), f"night{m}",
                                [replace(held(), held_until=quiet_until)], now=T0 + m)
             for m in (1, 2)]
    # Held, due when the quiet time ends: it replaced nothing and nothing replaced it.
    assert [(a.jobs, a.suppressed) for a in (before, *night)] == [(1, ""), (1, ""), (1, "")]
    assert await states(store) == [("pending", ""), ("held", ""), ("held", "")]
    assert [a.timers for a in night][0][0].kind == "quiet"
    assert (await store.stats()).backlog == 3
    # A notification after the quiet time replaces only what is pending, never a held job.
    after = await store.accept(event(ts=at(3)), "k3", [held()], now=T0 + 3)
    assert await states(store) == [("suppressed", REPLACED.format(after.event_id)),
                                   ("held", ""), ("held", ""), ("pending", "")]
    (job,) = (await claim(store, now=T0 + 10)).jobs  # the pending one's due time stays
    assert job.event_id == after.event_id
    # An older update out of order is replaced by nothing held either: it waits its own hold.
    late = await store.accept(event(ts=at(2)), "k-late", [held()], now=T0 + 11)
    assert (late.jobs, late.suppressed) == (1, "")


async def test_a_held_live_notification_is_summarised_not_sent_live(store: Store) -> None:  # noqa: F811
    live = replace(held(hold=0, live=True), held_until=T0 + 3600)
    await store.accept(event(ts=at(0)), "k1", [live], now=T0)
    assert await states(store) == [("held", "")]
    assert (await claim(store, now=T0 + 4000)).jobs == []  # the live sender never sees it
    [timer] = await store.claim_timers(limit=10, now=T0 + 3600, lease=30.0, owner="a")
    inputs = await store.timer_inputs(timer)
    assert [(j.live, j.state) for j in inputs.held] == [(True, "held")]
    summary = Notification("hook", 0, "quiet-hours", Message("1 held", "title", "info", "text"))
    await store.fire(timer, [summary], now=T0 + 3600, consumed=inputs)
    assert [(j.state, j.live) for j in (await store.timeline("d1")).jobs] == [
        ("summarised", True)]
    (sent,) = (await claim(store, now=T0 + 3600)).jobs  # the summary: a plain message
    assert (sent.route, sent.live, sent.event_at) == ("quiet-hours", False, None)
    assert (await store.timeline("d1")).live == ()  # no live message was made for it
