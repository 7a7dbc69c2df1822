"""A live job's send against the real SQLite store, Slack faked at HTTP and a real Synapse."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import pytest
from aiohttp import ClientSession

from relay.live import LiveClient, live_client
from relay.live.sender import LiveJob, LiveSender
from relay.message import Message
from relay.store import Store, open_store, rules
from tests.conftest import FakeClock
from tests.livefakes import SLACK_TOKEN, FakeSlack
from tests.synapse import Homeserver

T0 = 1_800_000_000.0
KEY = rules.live_key("D1", "lifecycle", "ops-chat", 0)


def job(n: int, status: str, ts: float) -> LiveJob:
    return LiveJob(KEY, "D1", ts, f"job{n}", Message(f"Delivery D1: {status}", "", "info", "text"))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store(f"sqlite:{tmp_path / 'relay.db'}")
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def session() -> AsyncIterator[ClientSession]:
    async with ClientSession() as s:
        yield s


def slack_client(slack: FakeSlack, session: ClientSession) -> LiveClient:
    c = live_client(f"slack://{SLACK_TOKEN}/#ops", session, api_base={"slack": slack.base})
    assert c is not None
    return c


async def test_a_deliverys_life_is_one_message_edited_with_its_history_in_the_thread(
        store, slack, session) -> None:
    sender, c = LiveSender(store, "a", FakeClock()), slack_client(slack, session)
    actions = [(await sender.send(c, job(i, s, T0 + i))).action
               for i, s in enumerate(["created", "in transit", "delivered"])]
    assert actions == ["post", "edit", "edit"]
    (root,) = slack.roots()
    assert root.text == "Delivery D1: delivered" and root.edits == 2
    assert [m.text for m in slack.replies(root.id)] == ["Delivery D1: in transit",
                                                        "Delivery D1: delivered"]


async def test_an_out_of_order_update_never_moves_the_message_back(store, slack, session) -> None:
    sender, c = LiveSender(store, "a", FakeClock()), slack_client(slack, session)
    await sender.send(c, job(1, "created", T0))
    await sender.send(c, job(3, "delivered", T0 + 20))
    late = await sender.send(c, job(2, "in transit", T0 + 10))  # arrives after "delivered"
    assert late.action == "skip" and late.outcome.sent
    (root,) = slack.roots()
    assert root.text == "Delivery D1: delivered" and root.edits == 1
    assert (await store.live_ref(KEY)).shown == T0 + 20


async def test_a_deleted_message_is_posted_afresh_and_later_edits_go_to_the_new_one(
        store, slack, session) -> None:
    sender, c = LiveSender(store, "a", FakeClock()), slack_client(slack, session)
    first = await sender.send(c, job(1, "created", T0))
    slack.delete(first.ref.message)
    again = await sender.send(c, job(2, "in transit", T0 + 1))
    assert (again.action, again.outcome.kind) == ("repost", "sent") and again.ref != first.ref
    assert (await sender.send(c, job(3, "delivered", T0 + 2))).action == "edit"
    (root,) = slack.roots()
    assert root.id == again.ref.message and root.text == "Delivery D1: delivered"


async def test_a_message_being_updated_by_another_sender_is_retried_shortly(store, slack,
                                                                           session) -> None:
    c = slack_client(slack, session)
    assert await store.live_take(KEY, "D1", owner="other", now=T0, lease=60) is not None
    held = await LiveSender(store, "a", lambda: T0 + 1).send(c, job(1, "created", T0))
    assert (held.action, held.outcome.postponed, held.outcome.min_delay) == ("postponed", True, 1.0)
    assert slack.requests == []


async def test_a_message_held_longer_than_a_send_takes_is_waited_for_until_its_lease_ends(
        store, slack, session) -> None:
    c = slack_client(slack, session)
    await store.live_take(KEY, "D1", owner="gone", now=T0, lease=60)  # a replica that died
    sender = LiveSender(store, "a", lambda: T0 + 45, lease=60, timeout=15)
    held = await sender.send(c, job(1, "created", T0))
    assert (held.outcome.postponed, held.outcome.min_delay) == (True, 15.0) and slack.requests == []


async def test_a_failed_edit_keeps_the_shown_state_and_lets_the_message_go(store, slack,
                                                                          session) -> None:
    sender, c = LiveSender(store, "a", FakeClock()), slack_client(slack, session)
    await sender.send(c, job(1, "created", T0))
    slack.fail_next(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "65"})
    failed = await sender.send(c, job(2, "in transit", T0 + 1))
    assert (failed.outcome.kind, failed.outcome.min_delay) == ("retry", 65)
    assert (await store.live_ref(KEY)).shown == T0
    retried = await LiveSender(store, "b", FakeClock()).send(c, job(2, "in transit", T0 + 1))
    assert retried.outcome.sent and slack.roots()[0].text == "Delivery D1: in transit"


async def test_a_crash_between_post_and_ref_stored_posts_a_second_root_on_slack(
        store, slack, session) -> None:
    c = slack_client(slack, session)
    # the first process held the message and posted, then died before recording the ref
    await store.live_take(KEY, "D1", owner="dead", now=T0, lease=60)
    await c.post(Message("Delivery D1: created", "", "info", "text"), key="job1")
    retried = await LiveSender(store, "b", lambda: T0 + 61).send(c, job(1, "created", T0))
    assert retried.action == "post" and len(slack.roots()) == 2  # what the docs promise


async def test_on_matrix_that_retry_is_answered_with_the_first_event(store, session,
                                                                    homeserver: Homeserver) -> None:
    user, password = f"bot-{secrets.token_hex(3)}", secrets.token_urlsafe(10)
    homeserver.register(user, password)
    token = str(homeserver.request("POST", "/_matrix/client/v3/login", {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
        "password": password})["access_token"])
    room = homeserver.create_room(token)
    port = homeserver.base.rsplit(":", 1)[1]
    c = live_client(f"matrix://{token}@127.0.0.1:{port}/{quote(room, safe='!:')}", session)
    assert c is not None
    await store.live_take(KEY, "D1", owner="dead", now=T0, lease=60)
    first = await c.post(Message("Delivery D1: created", "", "info", "text"), key="job1")
    retried = await LiveSender(store, "b", lambda: T0 + 61).send(c, job(1, "created", T0))
    assert retried.ref == first.ref
    edited = await LiveSender(store, "b", lambda: T0 + 62).send(c, job(2, "in transit", T0 + 1))
    assert edited.action == "edit"
    top = [e for e in homeserver.messages(room, token) if "m.relates_to" not in e["content"]]
    assert len(top) == 1
