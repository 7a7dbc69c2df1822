"""Live message refs in both stores: one sender at a time per message, refs kept, no going back."""

from __future__ import annotations

import asyncio

import pytest

from relay.store import LiveSlot, Store, new_owner, rules
from tests.test_store_contract import Backend, backend, store  # noqa: F401  (fixtures)

T0 = 1_800_000_000.0
KEY = rules.live_key("D1", "lifecycle", "ops-chat", 0)
REF = '{"platform":"slack","channel":"C0OPS","message":"1700000001.000001"}'


async def test_the_first_take_is_empty_and_a_recorded_ref_is_kept(store: Store) -> None:  # noqa: F811
    assert await store.live_take(KEY, "D1", owner="a", now=T0, lease=30) == LiveSlot(None, None)
    assert await store.live_done(KEY, owner="a", ref=REF, shown=T0 - 5, now=T0)
    assert await store.live_ref(KEY) == LiveSlot(REF, T0 - 5)
    assert await store.live_take(KEY, "D1", owner="b", now=T0 + 1, lease=30) == LiveSlot(REF, T0 - 5)


async def test_a_held_message_is_not_handed_to_a_second_sender_until_its_lease_ends(
        store: Store) -> None:  # noqa: F811
    assert await store.live_take(KEY, "D1", owner="a", now=T0, lease=30) is not None
    assert await store.live_take(KEY, "D1", owner="b", now=T0 + 29, lease=30) is None
    assert await store.live_take(KEY, "D1", owner="b", now=T0 + 30, lease=30) is not None
    # the first sender lost its hold: what it reports now must not overwrite the second's
    assert not await store.live_done(KEY, owner="a", ref=REF, shown=T0, now=T0 + 31)
    assert await store.live_ref(KEY) == LiveSlot(None, None, T0 + 60)  # b's hold, and until when


async def test_a_release_lets_the_next_sender_in_at_once(store: Store) -> None:  # noqa: F811
    await store.live_take(KEY, "D1", owner="a", now=T0, lease=30)
    await store.live_release(KEY, owner="a")
    assert await store.live_take(KEY, "D1", owner="b", now=T0 + 1, lease=30) is not None


async def test_two_stores_taking_one_message_at_once_hand_it_to_one(backend: Backend) -> None:  # noqa: F811
    stores = [await backend.open() for _ in range(2)]
    try:
        owners = [new_owner() for _ in range(8)]
        taken = await asyncio.gather(*(stores[i % 2].live_take(KEY, "D1", owner=o, now=T0,
                                                                lease=30)
                                       for i, o in enumerate(owners)))
        assert sum(t is not None for t in taken) == 1
    finally:
        for s in stores:
            await s.close()


@pytest.mark.parametrize("ref,shown,ts,action", [
    (None, None, T0, "post"), (REF, T0, T0 + 1, "edit"), (REF, T0, T0, "edit"),
    (REF, T0, T0 - 1, "skip"), (REF, None, T0, "edit")])
def test_live_action_never_moves_a_message_back(ref, shown, ts, action) -> None:
    assert rules.live_action(ref, shown, ts) == action


def test_shown_after_keeps_the_newest_state() -> None:
    assert rules.shown_after(None, T0) == T0
    assert rules.shown_after(T0, T0 - 1) == T0
    assert rules.shown_after(T0, T0 + 1) == T0 + 1


@pytest.mark.parametrize("held_until,now,wait", [
    (None, T0, 1.0),  # not held (any more): look again in a moment
    (T0 + 60, T0 + 29, 1.0),  # held 29 s of a 60 s lease: the sender may still be at work
    (T0 + 60, T0 + 31, 29.0),  # held longer than a send takes: wait out its lease
    (T0 + 60, T0 + 59.5, 1.0)])
def test_a_held_message_is_waited_for_a_moment_or_until_a_gone_senders_lease_ends(
        held_until, now, wait) -> None:
    assert rules.held_wait(held_until, now, lease=60, busy=30) == wait
