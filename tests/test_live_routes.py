"""Live routes end to end: a real relay on a free port, Slack, Discord and Telegram faked at HTTP."""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

import pytest

from relay.live.email import thread_id
from relay.store import rules
from tests.conftest import FakeClock, wait_for
from tests.livefakes import DISCORD_ID, DISCORD_TOKEN, SLACK_TOKEN, TELEGRAM_TOKEN
from tests.test_live_email import smtp  # noqa: F401  (fixture)
from tests.test_live_matrix import room  # noqa: F401  (fixture)

SLACK_URL = f"slack://{SLACK_TOKEN}/#ops"
DISCORD_URL = f"discord://{DISCORD_ID}/{DISCORD_TOKEN}"
TELEGRAM_URL = f"tgram://{TELEGRAM_TOKEN}/-1001234"
STATES = [("delivery.created", None), ("delivery.updated", "in_transit"),
          ("delivery.updated", "out_for_delivery"), ("delivery.updated", "delivered")]


def event(n: int, delivery: str = "D1") -> dict[str, Any]:
    """The n-th state of a delivery's life, a minute apart."""
    kind, status = STATES[n]
    body = {"event": kind, "delivery_id": delivery, "timestamp": f"2026-12-01T10:0{n}:00Z"}
    return body | ({"status": status} if status else {})


def config(*urls: str, route: str = "live: true") -> str:
    quoted = ", ".join(f'"{u}"' for u in urls)
    return f"""
receivers:
  - name: ops-chat
    urls: [{quoted}]
routes:
  - name: lifecycle
    match: {{event: "delivery.*"}}
    receivers: [ops-chat]
    title: "Delivery {{{{ delivery_id }}}}"
    body: "{{{{ status or 'created' }}}}"
    {route}
"""


def rows(path: Any, query: str, *args: Any) -> list[Any]:
    with sqlite3.connect(path) as conn:
        return conn.execute(query, args).fetchall()


async def test_slack_one_message_per_delivery_edited_in_order_with_its_history_in_the_thread(
        running, slack, tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, "relay.worker")
    r = await running(config(SLACK_URL), live_api={"slack": slack.base})
    for n in range(4):
        assert (await r.post(event(n)))[0] == 202
    await r.post(event(0, "D2"))
    await wait_for(lambda: len(slack.roots()) == 2 and any(
        m.text.endswith("delivered") for m in slack.roots()), message="D1 delivered")
    d1, d2 = slack.roots()
    assert d1.text == "*Delivery D1*\ndelivered" and d1.edits == 3
    assert [m.text.split("\n")[1] for m in slack.replies(d1.id)] == [
        "in_transit", "out_for_delivery", "delivered"]
    assert d2.text == "*Delivery D2*\ncreated" and slack.replies(d2.id) == []
    await done(tmp_path / "relay.db")
    assert rows(tmp_path / "relay.db", "SELECT state, count(*) FROM jobs GROUP BY state") == [
        ("sent", 5)]
    timeline = await r.relay.store.timeline("D1")
    (live,) = timeline.live
    assert live.key == rules.live_key("D1", "lifecycle", "ops-chat", 0)
    assert d1.id in (live.ref or "") and all(j.live for j in timeline.jobs)
    sent = [r.fields.get("live") for r in caplog.records if r.getMessage() == "sent"]
    assert sent == ["post", "edit", "edit", "edit", "post"]  # the log line says which
    assert live_metric(r, "post") == 2 and live_metric(r, "edit") == 3  # and the metrics


def live_metric(r: Any, action: str) -> float | None:
    return r.relay.metrics.registry.get_sample_value(
        "kourier_relay_live_messages_total", {"receiver": "ops-chat", "action": action})


async def done(db: Any) -> None:
    """Until every job is recorded as finished (a fake may answer before the store commits)."""
    await wait_for(lambda: not rows(db, "SELECT 1 FROM jobs WHERE state IN ('pending', 'claimed')"),
                   message="every job finished")


async def settle(r: Any) -> None:
    """Worker passes until no job is due (SQLite), every send under way (the loop's too) recorded."""
    db = r.relay.config.store.url.removeprefix("sqlite:")
    for _ in range(50):
        await r.relay.worker.run_once()
        await wait_for(lambda: not r.relay.worker.inflight, message="sends recorded")
        if not rows(db, "SELECT 1 FROM jobs WHERE state IN ('pending', 'claimed')"
                        " AND next_attempt_at <= ?", r.relay.clock()):
            return
    raise AssertionError("jobs are still due after 50 passes")


def texts(fake: Any) -> list[str]:
    return [m.text for m in fake.messages.values()]


async def test_discord_edits_in_place_and_a_deleted_message_is_posted_afresh(
        running, discord, tmp_path) -> None:
    r = await running(config(DISCORD_URL), live_api={"discord": discord.base})
    await r.post(event(0))
    (first,) = await wait_for(lambda: discord.roots(), message="the first post")
    discord.delete(first.id)  # someone removed it from the channel
    await r.post(event(1))
    await wait_for(lambda: texts(discord) == ["**Delivery D1**\nin_transit"], message="reposted")
    await r.post(event(2))
    await wait_for(lambda: texts(discord) == ["**Delivery D1**\nout_for_delivery"],
                   message="the new message edited")
    (now,) = discord.roots()
    assert now.id != first.id and now.history == ["**Delivery D1**\nin_transit",
                                                  "**Delivery D1**\nout_for_delivery"]
    methods = [(m, path.split("?")[0].rsplit("/", 2)[-2:]) for m, path, _ in discord.requests]
    assert methods == [("POST", [DISCORD_ID, DISCORD_TOKEN]),
                       ("PATCH", ["messages", first.id]), ("POST", [DISCORD_ID, DISCORD_TOKEN]),
                       ("PATCH", ["messages", now.id])]
    await done(tmp_path / "relay.db")
    assert rows(tmp_path / "relay.db", "SELECT state FROM jobs") == [("sent",)] * 3


async def test_telegram_edits_and_replies_and_a_message_it_cannot_find_is_posted_afresh(
        running, telegram) -> None:
    r = await running(config(TELEGRAM_URL), live_api={"telegram": telegram.base})
    await r.post(event(0))
    (root,) = await wait_for(lambda: telegram.roots(), message="the first post")
    await r.post(event(1))
    await wait_for(lambda: telegram.replies(root.id), message="the reply")
    assert root.history == ["Delivery D1\ncreated", "Delivery D1\nin_transit"]
    telegram.delete(root.id)
    await r.post(event(2))
    await wait_for(lambda: len(telegram.roots()) == 1 and telegram.roots()[0].id != root.id,
                   message="a new root")
    assert telegram.roots()[0].text == "Delivery D1\nout_for_delivery"
    methods = [path.rsplit("/", 1)[1] for _, path, _ in telegram.requests]
    assert methods == ["sendMessage", "editMessageText", "sendMessage",  # the reply
                       "editMessageText", "sendMessage"]  # not found: posted afresh


async def test_slack_429_on_an_edit_waits_its_retry_after_and_then_edits_the_same_message(
        running, slack, tmp_path) -> None:
    clock = FakeClock()
    r = await running(config(SLACK_URL), live_api={"slack": slack.base}, clock=clock)
    await r.post(event(0))
    (root,) = await wait_for(lambda: slack.roots(), message="the first post")
    slack.fail_next(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "90"})
    await r.post(event(1))
    await settle(r)
    retry = rows(tmp_path / "relay.db", "SELECT state, attempts, next_attempt_at, last_error"
                                        " FROM jobs WHERE id = 2")
    assert retry == [("pending", 1, clock.now + 90, "HTTP 429: chat.update: ratelimited")]
    assert rows(tmp_path / "relay.db", "SELECT failures FROM receivers") == [(1,)]  # counted
    clock.advance(89)
    await settle(r)
    assert root.edits == 0
    clock.advance(1)
    await settle(r)
    assert (root.text, len(slack.roots())) == ("*Delivery D1*\nin_transit", 1)


@pytest.mark.parametrize("error", ["edit_window_closed", "cant_update_message",
                                   "message_not_found"])
async def test_slack_a_message_it_cannot_edit_is_posted_afresh_and_later_edits_go_there(
        running, slack, tmp_path, error) -> None:
    r = await running(config(SLACK_URL), live_api={"slack": slack.base})
    await r.post(event(0))
    (old,) = await wait_for(lambda: slack.roots(), message="the first post")
    if error == "message_not_found":
        slack.delete(old.id)  # someone deleted it: the fake answers as Slack does
    else:
        slack.fail_next(200, {"ok": False, "error": error})
    await r.post(event(1))
    await wait_for(lambda: slack.roots() and slack.roots()[-1].id != old.id, message="the repost")
    await r.post(event(2))
    await wait_for(lambda: slack.roots()[-1].edits == 1, message="the edit of the new message")
    kept = [] if error == "message_not_found" else ["*Delivery D1*\ncreated"]
    assert [m.text for m in slack.roots()] == [*kept, "*Delivery D1*\nout_for_delivery"]
    await done(tmp_path / "relay.db")
    assert rows(tmp_path / "relay.db", "SELECT count(*) FROM jobs WHERE state = 'sent'") == [(3,)]
    assert rows(tmp_path / "relay.db", "SELECT outcome FROM attempts") == [("sent",)] * 3


async def test_an_out_of_order_update_never_moves_the_message_back(running, slack,
                                                                   tmp_path) -> None:
    # With stale updates let through (suppress_stale, on by default, drops them at ingest),
    # the live message itself keeps to the newest state.
    r = await running(config(SLACK_URL, route="live: true\n    suppress_stale: false"),
                      live_api={"slack": slack.base})
    for n in (0, 3, 1):  # "in transit" arrives after "delivered"
        await r.post(event(n))
        await done(tmp_path / "relay.db")
    (root,) = slack.roots()
    assert root.history == ["*Delivery D1*\ncreated", "*Delivery D1*\ndelivered"]
    assert [m.text for m in slack.replies(root.id)] == ["*Delivery D1*\ndelivered"]
    assert rows(tmp_path / "relay.db", "SELECT state FROM jobs") == [("sent",)] * 3


async def test_a_message_another_sender_holds_postpones_the_job_without_blame(
        running, slack, tmp_path) -> None:
    clock = FakeClock()
    r = await running(config(SLACK_URL), live_api={"slack": slack.base}, clock=clock)
    key = rules.live_key("D1", "lifecycle", "ops-chat", 0)
    assert await r.relay.store.live_take(key, "D1", owner="replica-b:1:x/9", now=clock.now,
                                         lease=60) is not None
    await r.post(event(0))
    await settle(r)
    db = tmp_path / "relay.db"
    assert rows(db, "SELECT state, attempts, next_attempt_at FROM jobs") == [
        ("pending", 0, clock.now + 1)]
    assert rows(db, "SELECT count(*) FROM attempts") == [(0,)]
    assert rows(db, "SELECT failures FROM receivers WHERE name = 'ops-chat'") == [(0,)]
    assert slack.requests == [] and live_metric(r, "postponed") == 1
    await r.relay.store.live_release(key, owner="replica-b:1:x/9")
    clock.advance(1)
    await settle(r)
    assert len(slack.roots()) == 1 and rows(db, "SELECT state FROM jobs") == [("sent",)]


async def test_a_url_that_cannot_edit_gets_a_new_message_beside_one_that_can(
        running, slack, sink) -> None:
    r = await running(config(SLACK_URL, sink.url("plain")), live_api={"slack": slack.base})
    for n in range(3):
        await r.post(event(n))
    await wait_for(lambda: len(sink.messages("plain")) == 3 and slack.roots()
                   and slack.roots()[0].edits == 2, message="both receivers' URLs")
    assert [m["message"] for m in sink.messages("plain")] == ["created", "in_transit",
                                                              "out_for_delivery"]
    assert len(slack.roots()) == 1


async def test_replaying_a_dead_edit_edits_the_message_or_leaves_a_newer_state(
        running, slack, tmp_path) -> None:
    r = await running(config(SLACK_URL), live_api={"slack": slack.base})
    await r.post(event(0))
    (root,) = await wait_for(lambda: slack.roots(), message="the first post")
    slack.fail_next(200, {"ok": False, "error": "not_authed"})  # permanent: the edit is dead
    await r.post(event(1))
    dead = await wait_for(lambda: rows(tmp_path / "relay.db", "SELECT id, last_error FROM jobs"
                                                             " WHERE state = 'dead'"))
    assert dead == [(2, "chat.update: not_authed")]
    replay = await r.session.post(r.url + "/-/dead/replay", json={"ids": [2]},
                                  headers={"Authorization": "Bearer admin-secret"})
    assert (await replay.json()) == {"replayed": 1}
    await wait_for(lambda: root.edits == 1, message="the replayed edit")
    # and its thread reply, which comes after the edit: the next injected failure is not its
    await done(tmp_path / "relay.db")
    assert root.text == "*Delivery D1*\nin_transit" and len(slack.roots()) == 1
    # dead again, then a newer state goes out: replaying the old one leaves the message be
    slack.fail_next(200, {"ok": False, "error": "not_authed"})
    await r.post(event(2))
    await wait_for(lambda: rows(tmp_path / "relay.db", "SELECT 1 FROM jobs WHERE id = 3"
                                                      " AND state = 'dead'"))
    await r.post(event(3))
    await wait_for(lambda: root.text.endswith("delivered"), message="delivered")
    await r.session.post(r.url + "/-/dead/replay", json={"ids": [3]},
                         headers={"Authorization": "Bearer admin-secret"})
    await wait_for(lambda: rows(tmp_path / "relay.db", "SELECT state FROM jobs WHERE id = 3")
                   == [("sent",)], message="the replayed job done")
    assert root.text.endswith("delivered") and root.edits == 2


async def test_email_of_a_live_route_threads_every_mail_of_a_delivery(running, smtp) -> None:  # noqa: F811
    mail = smtp.url()
    r = await running(config(mail))
    for body in (event(0), event(1), event(0, "D2")):
        await r.post(body)
    await wait_for(lambda: len(smtp.messages()) == 3, message="three mails")
    d1a, d1b, d2 = sorted(smtp.messages(), key=lambda m: (m["Subject"], m.get_content()))
    thread = thread_id("D1", "lifecycle", "ops-chat", 0)
    for m in (d1a, d1b):
        assert (m["Subject"], m["In-Reply-To"], m["References"]) == ("Delivery D1", thread, thread)
    assert d2["In-Reply-To"] == thread_id("D2", "lifecycle", "ops-chat", 0) != thread
    assert all(len(m.get_all("Message-ID")) == 1 for m in (d1a, d1b, d2))


async def test_email_of_a_route_that_is_not_live_is_not_threaded(running, smtp) -> None:  # noqa: F811
    mail = smtp.url()
    r = await running(config(mail, route=""))
    await r.post(event(0))
    (m,) = await wait_for(lambda: smtp.messages(), message="the mail")
    assert m["In-Reply-To"] is None and m["References"] is None


# ------------------------------------------------------------------ Matrix (a real Synapse)


async def test_matrix_one_top_level_message_per_delivery_with_edits_and_thread_replies(
        running, room, tmp_path) -> None:  # noqa: F811
    r = await running(config(room.url()))
    for body in (event(0), event(1), event(2), event(0, "D2")):
        await r.post(body)
    await done(tmp_path / "relay.db")
    top = room.top_level()
    assert [e["content"]["body"] for e in top] == ["Delivery D1\ncreated", "Delivery D2\ncreated"]
    root = top[0]["event_id"]
    edits = room.hs.relations(room.room_id, root, "m.replace", room.watcher)
    assert sorted(e["content"]["m.new_content"]["body"] for e in edits) == [
        "Delivery D1\nin_transit", "Delivery D1\nout_for_delivery"]
    replies = room.hs.relations(room.room_id, root, "m.thread", room.watcher)
    assert sorted(e["content"]["body"] for e in replies) == [
        "Delivery D1\nin_transit", "Delivery D1\nout_for_delivery"]
    assert room.hs.relations(room.room_id, top[1]["event_id"], "m.replace", room.watcher) == []


async def test_matrix_a_redacted_message_is_posted_afresh_and_edited_from_then_on(
        running, room, tmp_path) -> None:  # noqa: F811
    r = await running(config(room.url()))
    await r.post(event(0))
    await done(tmp_path / "relay.db")
    (old,) = room.top_level()
    room.hs.redact(room.room_id, old["event_id"], room.watcher)  # the room's owner deletes it
    await r.post(event(1))
    await r.post(event(2))
    await done(tmp_path / "relay.db")
    (new,) = [e for e in room.top_level() if e["content"]]
    assert new["event_id"] != old["event_id"] and new["content"]["body"] == "Delivery D1\nin_transit"
    (edit,) = room.hs.relations(room.room_id, new["event_id"], "m.replace", room.watcher)
    assert edit["content"]["m.new_content"]["body"] == "Delivery D1\nout_for_delivery"
    assert rows(tmp_path / "relay.db", "SELECT state FROM jobs") == [("sent",)] * 3
