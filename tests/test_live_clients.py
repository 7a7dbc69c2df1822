"""The live clients against Slack, Discord and Telegram faked at the HTTP transport."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import ClientSession

from relay.live import LiveClient, MessageRef, live_client, why_not_live
from relay.live.http import Answer
from relay.message import Message
from relay.notify import RECEIVER_FAULT_STATUS
from tests.conftest import free_port
from tests.livefakes import DISCORD_ID, DISCORD_TOKEN, SLACK_TOKEN, TELEGRAM_TOKEN

CREATED = Message("Delivery D1: created", "Parcel registered", "info", "text")
TRANSIT = Message("Delivery D1: in transit", "Left the depot", "info", "text")
SLACK_URL = f"slack://{SLACK_TOKEN}/#ops"
DISCORD_URL = f"discord://{DISCORD_ID}/{DISCORD_TOKEN}"
TELEGRAM_URL = f"tgram://{TELEGRAM_TOKEN}/-1001234"
SECRETS = (SLACK_TOKEN, DISCORD_TOKEN, TELEGRAM_TOKEN, "AAsecretTELEGRAMtoken")


@pytest.fixture
async def session() -> AsyncIterator[ClientSession]:
    async with ClientSession() as s:
        yield s


def client(url: str, session: ClientSession, platform: str, base: str) -> LiveClient:
    c = live_client(url, session, timeout=5, api_base={platform: base})
    assert c is not None and c.platform == platform
    return c


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


# ------------------------------------------------------------------ Slack


async def test_slack_post_answers_channel_id_and_ts_and_edit_uses_them(slack, session) -> None:
    c = client(SLACK_URL, session, "slack", slack.base)
    posted = await c.post(CREATED)
    assert posted.sent and posted.ref == MessageRef("slack", "C0OPS", posted.ref.message)
    edited = await c.edit(posted.ref, TRANSIT)
    assert edited.sent and edited.ref == posted.ref
    (root,) = slack.roots()
    assert root.text == "*Delivery D1: in transit*\nLeft the depot" and root.edits == 1
    assert slack.requests[1][2]["channel"] == "C0OPS"  # the id, never the #name


async def test_slack_reply_goes_into_the_live_messages_thread(slack, session) -> None:
    c = client(SLACK_URL, session, "slack", slack.base)
    posted = await c.post(CREATED)
    reply = await c.reply(posted.ref, TRANSIT)
    assert reply.sent and c.threads
    assert [m.text for m in slack.replies(posted.ref.message)] == [
        "*Delivery D1: in transit*\nLeft the depot"]
    assert len(slack.roots()) == 1


async def test_slack_thread_url_posts_the_live_message_in_that_thread(slack, session) -> None:
    c = client(f"slack://{SLACK_TOKEN}/#ops:1699999999.000100", session, "slack", slack.base)
    posted = await c.post(CREATED)
    await c.reply(posted.ref, TRANSIT)
    assert [m.thread for m in slack.messages.values()] == ["1699999999.000100"] * 2


async def test_slack_escapes_control_characters_so_values_cannot_make_links(slack, session) -> None:
    c = client(SLACK_URL, session, "slack", slack.base)
    await c.post(Message("a <http://evil|bank> & b", "", "info", "text"))
    assert slack.roots()[0].text == "a &lt;http://evil|bank&gt; &amp; b"


@pytest.mark.parametrize("code", ["message_not_found", "cant_update_message", "edit_window_closed"])
async def test_slack_message_that_cannot_be_edited_is_reported_gone(slack, session, code) -> None:
    c = client(SLACK_URL, session, "slack", slack.base)
    posted = await c.post(CREATED)
    slack.fail_next(200, {"ok": False, "error": code})
    result = await c.edit(posted.ref, TRANSIT)
    assert result.gone and result.outcome.kind == "failed" and code in result.outcome.error


async def test_slack_deleted_message_is_gone(slack, session) -> None:
    c = client(SLACK_URL, session, "slack", slack.base)
    posted = await c.post(CREATED)
    slack.delete(posted.ref.message)
    result = await c.edit(posted.ref, TRANSIT)
    assert result.gone and "message_not_found" in result.outcome.error


async def test_slack_an_edit_of_a_message_in_a_channel_out_of_reach_is_gone(slack,
                                                                         session) -> None:
    # a reload pointed the URL at another workspace: the old message cannot be reached
    c = client(SLACK_URL, session, "slack", slack.base)
    result = await c.edit(MessageRef("slack", "C0ELSEWHERE", "1700000001.000001"), TRANSIT)
    assert result.gone and "channel_not_found" in result.outcome.error
    slack.fail_next(200, {"ok": False, "error": "not_in_channel"})  # the bot was removed
    assert (await c.edit(MessageRef("slack", "C0OPS", "1700000001.000001"), TRANSIT)).gone


async def test_slack_429_is_a_retry_after_the_header(slack, session) -> None:
    c = client(SLACK_URL, session, "slack", slack.base)
    slack.fail_next(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "90"})
    result = await c.post(CREATED)
    assert (result.outcome.kind, result.outcome.min_delay, result.outcome.status) == ("retry", 90, 429)
    assert not result.gone and result.ref is None


async def test_a_429_waits_at_least_a_minute_as_every_send_does(slack, session) -> None:
    c = client(SLACK_URL, session, "slack", slack.base)
    slack.fail_next(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "2"})
    assert (await c.post(CREATED)).outcome.min_delay == 60  # notify.wait_after's rule
    slack.fail_next(200, {"ok": False, "error": "ratelimited"})  # said in a 200 answer
    assert (await c.post(CREATED)).outcome.min_delay == 60
    slack.fail_next(503, {"ok": False, "error": "service_unavailable"}, {"Retry-After": "7"})
    assert (await c.post(CREATED)).outcome.min_delay == 7


@pytest.mark.parametrize("code,kind", [("invalid_auth", "failed"), ("channel_not_found", "failed"),
                                       ("not_in_channel", "failed"), ("internal_error", "retry"),
                                       ("service_unavailable", "retry")])
async def test_slack_error_codes_are_classified(slack, session, code, kind) -> None:
    c = client(SLACK_URL, session, "slack", slack.base)
    slack.fail_next(200, {"ok": False, "error": code})
    result = await c.post(CREATED)
    assert result.outcome.kind == kind and not result.gone


async def test_slack_wrong_token_fails_without_showing_it(slack, session) -> None:
    c = client("slack://xoxb-9999-8888-WRONGtoken/#ops", session, "slack", slack.base)
    result = await c.post(CREATED)
    assert result.outcome.kind == "failed" and "invalid_auth" in result.outcome.error
    assert "WRONGtoken" not in result.outcome.error


@pytest.mark.parametrize("code,status", [("invalid_auth", 401), ("token_revoked", 401),
                                         ("channel_not_found", 404), ("is_archived", 410),
                                         ("msg_too_long", 200)])
async def test_slack_refusals_of_the_bot_itself_count_as_the_status_they_mean(
        slack, session, code, status) -> None:
    """HTTP 200 with `ok: false`: a revoked token or a lost channel is the receiver's own
    fault (it opens the circuit, as a 401 or 404 would); a message Slack refuses is not."""
    c = client(SLACK_URL, session, "slack", slack.base)
    slack.fail_next(200, {"ok": False, "error": code})
    outcome = (await c.post(CREATED)).outcome
    assert (outcome.kind, outcome.status) == ("failed", status)
    assert (status in RECEIVER_FAULT_STATUS) is (code != "msg_too_long")


async def test_slack_unknown_channel_fails(slack, session) -> None:
    c = client(f"slack://{SLACK_TOKEN}/#nowhere", session, "slack", slack.base)
    result = await c.post(CREATED)
    assert result.outcome.kind == "failed" and "channel_not_found" in result.outcome.error


# ------------------------------------------------------------------ Discord


async def test_discord_post_waits_for_the_message_and_edit_patches_it(discord, session) -> None:
    c = client(DISCORD_URL, session, "discord", discord.base)
    posted = await c.post(CREATED)
    assert posted.sent and posted.ref.channel == "998877"
    assert "wait=true" in discord.requests[0][1]
    edited = await c.edit(posted.ref, TRANSIT)
    assert edited.sent
    (m,) = discord.messages.values()
    assert m.text == "**Delivery D1: in transit**\nLeft the depot" and m.edits == 1
    assert discord.requests[1][0] == "PATCH"
    assert all(r[2]["allowed_mentions"] == {"parse": []} for r in discord.requests)


async def test_discord_thread_url_posts_and_edits_in_that_thread(discord, session) -> None:
    c = client(DISCORD_URL + "?thread=555", session, "discord", discord.base)
    posted = await c.post(CREATED)
    await c.edit(posted.ref, TRANSIT)
    assert posted.ref.channel == "555"
    assert all("thread_id=555" in r[1] for r in discord.requests)


async def test_discord_cannot_reply_in_a_thread(discord, session) -> None:
    c = client(DISCORD_URL, session, "discord", discord.base)
    posted = await c.post(CREATED)
    result = await c.reply(posted.ref, TRANSIT)
    assert not c.threads and result.outcome.kind == "failed" and len(discord.requests) == 1


async def test_discord_unknown_message_10008_is_gone(discord, session) -> None:
    c = client(DISCORD_URL, session, "discord", discord.base)
    posted = await c.post(CREATED)
    discord.delete(posted.ref.message)
    result = await c.edit(posted.ref, TRANSIT)
    assert result.gone and result.outcome.status == 404 and "Unknown Message" in result.outcome.error


async def test_discord_unknown_webhook_fails_and_is_not_gone(discord, session) -> None:
    c = client(f"discord://1/{DISCORD_TOKEN}", session, "discord", discord.base)
    result = await c.post(CREATED)
    assert result.outcome.kind == "failed" and not result.gone and "10015" in result.outcome.error
    assert_no_secret(result.outcome.error)


async def test_discord_429_honours_retry_after_from_the_body(discord, session) -> None:
    c = client(DISCORD_URL, session, "discord", discord.base)
    discord.fail_next(429, {"message": "You are being rate limited.", "retry_after": 72.5,
                            "global": False}, {"Retry-After": "73"})
    result = await c.post(CREATED)
    assert (result.outcome.kind, result.outcome.min_delay) == ("retry", 72.5)


async def test_discord_5xx_is_a_retry(discord, session) -> None:
    c = client(DISCORD_URL, session, "discord", discord.base)
    discord.fail_next(502, {"message": "Bad Gateway"})
    assert (await c.post(CREATED)).outcome.kind == "retry"


# ------------------------------------------------------------------ Telegram


async def test_telegram_send_edit_and_reply(telegram, session) -> None:
    c = client(TELEGRAM_URL, session, "telegram", telegram.base)
    posted = await c.post(CREATED)
    assert posted.sent and posted.ref == MessageRef("telegram", "-1001234", "1")
    assert (await c.edit(posted.ref, TRANSIT)).sent
    assert (await c.reply(posted.ref, Message("in transit", "", "info", "text"))).sent
    root, reply = telegram.messages.values()
    assert root.text == "Delivery D1: in transit\nLeft the depot" and root.edits == 1
    assert reply.thread == "1" and reply.text == "in transit"


async def test_telegram_edit_to_the_same_text_counts_as_sent(telegram, session) -> None:
    c = client(TELEGRAM_URL, session, "telegram", telegram.base)
    posted = await c.post(CREATED)
    result = await c.edit(posted.ref, CREATED)
    assert result.sent and result.ref == posted.ref


async def test_telegram_message_to_edit_not_found_is_gone(telegram, session) -> None:
    c = client(TELEGRAM_URL, session, "telegram", telegram.base)
    posted = await c.post(CREATED)
    telegram.delete(posted.ref.message)
    result = await c.edit(posted.ref, TRANSIT)
    assert result.gone and result.outcome.kind == "failed"


async def test_telegram_429_waits_parameters_retry_after(telegram, session) -> None:
    c = client(TELEGRAM_URL, session, "telegram", telegram.base)
    telegram.fail_next(429, {"ok": False, "error_code": 429,
                             "description": "Too Many Requests: retry after 70",
                             "parameters": {"retry_after": 70}})
    result = await c.post(CREATED)
    assert (result.outcome.kind, result.outcome.min_delay) == ("retry", 70)


async def test_telegram_an_edit_in_a_chat_out_of_reach_is_gone(telegram, session) -> None:
    c = client(TELEGRAM_URL, session, "telegram", telegram.base)
    result = await c.edit(MessageRef("telegram", "-1009999", "7"), TRANSIT)
    assert result.gone and "chat not found" in result.outcome.error


async def test_telegram_unknown_chat_and_bad_token_fail_without_the_token(telegram, session) -> None:
    unknown = await client(f"tgram://{TELEGRAM_TOKEN}/-42", session, "telegram",
                           telegram.base).post(CREATED)
    assert unknown.outcome.kind == "failed" and "chat not found" in unknown.outcome.error
    bad = await client("tgram://987654321:AAwrongSECRETtoken/-1001234", session, "telegram",
                       telegram.base).post(CREATED)
    assert bad.outcome.kind == "failed" and bad.outcome.status == 401
    assert "AAwrongSECRETtoken" not in bad.outcome.error


# ------------------------------------------------------------------ all platforms


@pytest.mark.parametrize("url,platform", [(SLACK_URL, "slack"), (DISCORD_URL, "discord"),
                                          (TELEGRAM_URL, "telegram")])
async def test_unreachable_platform_is_a_retry_and_the_error_holds_no_token(session, url,
                                                                         platform) -> None:
    base = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    result = await client(url, session, platform, base).post(CREATED)
    assert result.outcome.kind == "retry" and result.outcome.error
    assert_no_secret(result.outcome.error)


@pytest.mark.parametrize("url,reason", [
    ("slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#ops", "incoming webhooks"),
    (f"slack://{SLACK_TOKEN}/#ops/#general", "exactly one channel"),
    (f"tgram://{TELEGRAM_TOKEN}/-1/-2", "exactly one chat"),
    ("matrix://u:p@example.org/!a:example.org/!b:example.org", "exactly one room"),
    ("matrix://u:p@example.org/!a:example.org?mode=slack", "webhook modes"),
    ("json://127.0.0.1:9/x", "cannot be edited"),
    ("mailto://127.0.0.1:25?from=a@example.com&to=b@example.com", "cannot be edited"),
])
def test_urls_that_cannot_edit_say_why_without_secrets(url, reason) -> None:
    why = why_not_live(url)
    assert why is not None and reason in why
    assert_no_secret(why)
    assert "TIiajkdnlazkcOXrIdevi7FQ" not in why
    assert live_client(url, ClientSession.__new__(ClientSession)) is None


@pytest.mark.parametrize("url", [SLACK_URL, DISCORD_URL, TELEGRAM_URL,
                                 "matrix://bot:pw@127.0.0.1:8008/!room:localhost",
                                 "https://discord.com/api/webhooks/1/tok"])
def test_urls_that_can_edit(url) -> None:
    assert why_not_live(url) is None


@pytest.mark.parametrize(("answer", "fields"), [
    (Answer(200, {"ok": True, "ts": "1.2"}), {"ok": True, "ts": "1.2"}),
    (Answer(200, [{"id": "1"}]), {}),  # JSON, but not an object
    (Answer(502, None), {}),  # not JSON (an HTML error page)
    (Answer(None, error="timed out after 10s", timed_out=True), {}),
])
def test_every_client_reads_an_answer_as_a_json_object_or_nothing(answer, fields) -> None:
    assert answer.fields == fields


def test_message_ref_round_trips_through_json() -> None:
    ref = MessageRef("slack", "C0OPS", "1700000001.000001")
    assert MessageRef.from_json(ref.to_json()) == ref
