"""`hold:` coalescing end to end on the fake clock: a real relay, a real `json://` sink."""

from __future__ import annotations

import asyncio

from tests.conftest import FakeClock
from tests.forkserver import run_relay
from tests.livefakes import SLACK_TOKEN
from tests.test_live_routes import config, event, rows, settle

REPLACED = "replaced during its hold by the notification of event {}"


def said(sink, path: str = "ops") -> list[str]:
    return [m["message"] for m in sink.messages(path)]


async def test_a_newer_notification_within_the_hold_replaces_the_waiting_one(
        running, sink, tmp_path) -> None:
    clock = FakeClock()
    r = await running(config(sink.url("ops"), route="hold: 10s"), clock=clock)
    await r.post(event(0))
    clock.advance(3)
    await r.post(event(1))
    await settle(r)
    clock.advance(6.9)
    await settle(r)
    assert said(sink) == []
    clock.advance(0.1)  # ten seconds after the first: what waits now goes out
    await settle(r)
    assert said(sink) == ["in_transit"]
    assert rows(tmp_path / "relay.db", "SELECT id, state, last_error FROM jobs") == [
        (1, "suppressed", REPLACED.format(2)), (2, "sent", "")]


async def test_dead_show_of_a_replaced_job_says_why_it_was_not_sent(
        running, sink, tmp_path) -> None:
    # A suppressed job has no attempts: `dead show` printed its text and an empty attempts
    # list, and the reason was only in the admin API's last_error.
    clock = FakeClock()
    r = await running(config(sink.url("ops"), route="hold: 10s"), clock=clock)
    await r.post(event(0))
    await r.post(event(1))
    await settle(r)
    show = await asyncio.to_thread(
        run_relay, ["dead", "show", "1", "-c", str(tmp_path / "config.yaml")],
        capture_output=True, text=True, timeout=30)
    assert show.returncode == 0
    assert "state=suppressed" in show.stdout
    assert f"why: {REPLACED.format(2)}" in show.stdout.splitlines()


async def test_a_delivery_that_keeps_moving_gets_a_message_every_hold(running, sink) -> None:
    clock = FakeClock()
    r = await running(config(sink.url("ops"), route="hold: 10s"), clock=clock)
    for n, at in ((0, 0), (1, 5), (2, 9)):
        clock.advance(at - (clock.now - 1_800_000_000.0))
        await r.post(event(n))
        await settle(r)
    clock.advance(1)  # 10 s: the hold is not extended by the newer ones
    await settle(r)
    assert said(sink) == ["out_for_delivery"]
    clock.advance(2)  # 12 s: the next update starts a new hold
    await r.post(event(3))
    await settle(r)
    assert said(sink) == ["out_for_delivery"]
    clock.advance(9.9)  # 21.9 s
    await settle(r)
    assert said(sink) == ["out_for_delivery"]
    clock.advance(0.1)
    await settle(r)
    assert said(sink) == ["out_for_delivery", "delivered"]


async def test_an_update_older_than_the_waiting_one_steps_aside(running, sink, tmp_path) -> None:
    clock = FakeClock()
    # With stale updates let through (suppress_stale, on by default, drops them at ingest),
    # the hold itself keeps the newer one.
    r = await running(config(sink.url("ops"), route="hold: 10s\n    suppress_stale: false"),
                      clock=clock)
    await r.post(event(2))
    await r.post(event(1))  # older by its own timestamp, later to arrive
    clock.advance(10)
    await settle(r)
    assert said(sink) == ["out_for_delivery"]
    assert rows(tmp_path / "relay.db", "SELECT id, state, last_error FROM jobs") == [
        (1, "sent", ""), (2, "suppressed", "a notification of a newer event (job 1) was already"
                                           " waiting")]


async def test_each_receiver_url_and_delivery_is_held_on_its_own(running, sink) -> None:
    clock = FakeClock()
    r = await running(config(sink.url("a"), sink.url("b"), route="hold: 10s"), clock=clock)
    for body in (event(0), event(0, "D2"), event(1)):
        await r.post(body)
    clock.advance(10)
    await settle(r)
    assert sorted(said(sink, "a")) == sorted(said(sink, "b")) == ["created", "in_transit"]


async def test_a_held_live_route_posts_once_with_the_newest_state(running, slack) -> None:
    clock = FakeClock()
    r = await running(config(f"slack://{SLACK_TOKEN}/#ops", route="live: true\n    hold: 10s"),
                      clock=clock, live_api={"slack": slack.base})
    await r.post(event(0))
    await r.post(event(1))
    clock.advance(10)
    await settle(r)
    (root,) = slack.roots()
    assert root.history == ["*Delivery D1*\nin_transit"] and slack.replies(root.id) == []


async def test_without_hold_nothing_waits_or_is_replaced(running, sink, tmp_path) -> None:
    clock = FakeClock()
    r = await running(config(sink.url("ops"), route=""), clock=clock)
    await r.post(event(0))
    await r.post(event(1))
    await settle(r)
    assert said(sink) == ["created", "in_transit"]
