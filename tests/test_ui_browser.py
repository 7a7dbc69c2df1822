"""The status page in a real headless Chromium, against a real relay with a json:// sink.

Each page loads with no console error, shows the data the test sent in through
the webhook, and loads nothing from anywhere but the relay.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.cdp import Browser, Page, chromium_process, isolated
from tests.conftest import wait_for
from tests.uiutil import (
    ADMIN,
    HOSTILE,
    OPENS_FAST,
    VIEWER,
    event,
    one_dead_letter,
    open_circuit,
    pg_relay,
    start_ui_relay,
)


@pytest.fixture(scope="module")
def chromium_endpoint() -> Iterator[str]:
    """One Chromium process for the file (~0.6 s of CPU to start one)."""
    with chromium_process() as endpoint:
        yield endpoint


@pytest.fixture
async def browser(chromium_endpoint: str) -> AsyncIterator[Browser]:
    """A browser context of the test's own: no cookie or storage of another test."""
    async with isolated(chromium_endpoint) as b:
        yield b


async def log_in(page: Page, base: str, token: str, start: str = "/ui/") -> None:
    await page.goto(base + start)
    assert await page.js("location.pathname") == "/ui/login"
    await page.fill("#token", token)
    await page.submit("button[type=submit].primary")


def only_from(page: Page, base: str) -> None:
    strangers = [u for u in page.requests if not u.startswith(base + "/")]
    assert strangers == [], "every resource comes from the relay"


async def test_every_page_shows_its_data_with_no_console_error(running, sink, browser):
    r = await start_ui_relay(running, sink)
    await one_dead_letter(r, sink)
    assert (await r.post(event("D-2001", "in_transit", 5)))[0] == 202
    page = await browser.new_page()
    await log_in(page, r.url, ADMIN)
    assert await page.js("location.pathname") == "/ui/"
    overview = await page.text("main")
    assert "chat" in overview and "log" in overview and "Traffic per minute" in overview
    assert await page.text("#dead-count") == "1"
    assert await page.js("document.querySelectorAll('svg rect').length") >= 2

    await page.goto(r.url + "/ui/deliveries")
    listed = await page.text("main")
    assert "D-1042" in listed and "D-2001" in listed
    await page.fill("#delivery_id", "D-1042")
    await page.submit(".search button")
    assert await page.js("location.search") == "?id=D-1042"
    timeline = await page.text("main")
    assert "Delivery D-1042 failed" in timeline and f"Reason: {HOSTILE}" in timeline
    assert "HTTP 404" in timeline and "failures" in timeline
    assert await page.js("document.querySelectorAll('main img').length") == 0  # escaped

    await page.goto(r.url + "/ui/dead")
    assert "D-1042" in await page.text("table.dead")

    await page.goto(r.url + "/ui/tester")
    await page.fill("#event", json.dumps(event("D-3", "in_transit")))
    await page.submit("form.stack button")
    report = await page.text("#report")
    assert "MATCH  quiet -> log" in report and "no     failures: status == 'failed'" in report
    assert page.errors == []
    only_from(page, r.url)
    assert "SINK-SECRET-42" not in await page.js("document.documentElement.outerHTML")


async def test_replay_through_the_form_sends_the_message_again(running, sink, browser):
    r = await start_ui_relay(running, sink)
    await one_dead_letter(r, sink)
    page = await browser.new_page()
    await log_in(page, r.url, ADMIN, "/ui/dead")
    assert await page.js("location.pathname") == "/ui/dead"
    [job] = await r.relay.store.dead()
    await page.js(f"document.querySelector('#pick-{job.id}').checked = true")
    await page.submit("#replay-selected")
    assert "1 dead letter queued again." in await page.text("#replayed")
    [sent] = await wait_for(lambda: sink.messages("chat"), message="the replayed message")
    assert sent["title"] == "Delivery D-1042 failed"
    assert await r.relay.store.dead() == []
    assert page.errors == []
    only_from(page, r.url)


async def test_retry_now_on_a_receiver_whose_circuit_is_open_sends_its_retries(
        running, sink, browser):
    r = await start_ui_relay(running, sink, sending=OPENS_FAST)
    await open_circuit(r, sink)
    page = await browser.new_page()
    await log_in(page, r.url, ADMIN)
    assert "circuit open" in await page.text("#receiver-chat-0")
    assert await page.js("document.querySelector('#retry-log-0')") is None  # idle: no button
    await page.submit("#retry-chat-0")
    assert await page.text("#retried") == "chat urls[0]: circuit closed; 2 waiting retries go now."
    sent = await wait_for(lambda: len(sink.messages("chat")) == 2 and sink.messages("chat"))
    assert sorted(m["title"] for m in sent) == ["Delivery D-1 failed", "Delivery D-2 failed"]
    assert page.errors == []
    only_from(page, r.url)


async def test_login_logout_and_no_data_without_a_session(running, sink, browser):
    r = await start_ui_relay(running, sink)
    await one_dead_letter(r, sink)
    page = await browser.new_page()
    await page.goto(r.url + "/ui/delivery?id=D-1042")
    assert await page.js("location.pathname") == "/ui/login"
    assert "D-1042" not in await page.text("body")
    await page.fill("#token", ADMIN)
    await page.submit("button.primary")
    assert await page.js("location.pathname + location.search") == "/ui/delivery?id=D-1042"
    assert await page.js("document.cookie") == ""  # HttpOnly: invisible to page scripts
    await page.submit("button.link")  # log out
    assert await page.js("location.pathname") == "/ui/login"
    await page.goto(r.url + "/ui/dead")
    assert await page.js("location.pathname") == "/ui/login"
    assert "D-1042" not in await page.text("body")
    assert page.errors == []


async def test_a_viewer_sees_dead_letters_without_replay_and_a_forged_post_is_refused(
        running, sink, browser):
    r = await start_ui_relay(running, sink)
    await one_dead_letter(r, sink)
    page = await browser.new_page()
    await log_in(page, r.url, VIEWER, "/ui/dead")
    assert "D-1042" in await page.text("table.dead")
    assert await page.js("document.querySelectorAll('#replay-form, button[name=one]').length") == 0
    [job] = await r.relay.store.dead()
    # Even with the session's own CSRF token (from the logout form), the POST is refused.
    status = await page.js(
        f"fetch('/ui/dead/replay', {{method: 'POST', body: new URLSearchParams({{one: '{job.id}',"
        " csrf: document.querySelector('input[name=csrf]').value})}).then(r => r.status)")
    assert status == 403
    assert len(await r.relay.store.dead()) == 1


@pytest.mark.postgres
async def test_on_a_phone_the_relays_table_stacks_like_the_receivers_table(browser, tmp_path):
    """Its cells carry data-label as the receivers table's do; on a narrow screen they
    stack with their labels instead of a table wider than the screen. Two relays on one
    PostgreSQL schema (a replica's row written as its announce would)."""
    import time

    from tests import pgutil

    async with pg_relay(tmp_path) as (_, url, dsn, _):
        await pgutil.fetch(dsn, "INSERT INTO relays VALUES ($1, $2, $3)",
                           "a-rather-long-replica-host-name-7f9c6d5b4-x2x9q:1:ab12cd34",
                           '[["chat", 0], ["log", 0], ["new", 0], ["newer", 0]]', time.time())
        page = await browser.new_page()
        await log_in(page, url, ADMIN)
        await page.send("Emulation.setDeviceMetricsOverride", width=360, height=740,
                        deviceScaleFactor=2, mobile=True)
        await page.goto(url + "/ui/")
        assert "2 relays serve from this store" in await page.text("main")
        for table in ("receivers", "relays"):
            assert await page.js(f"getComputedStyle(document.querySelector('table.{table}"
                                 " thead')).display") == "none", table
            before = await page.js(f"getComputedStyle(document.querySelector('table.{table}"
                                   " td[data-label]'), '::before').content")
            assert before.startswith('"'), (table, before)
            assert await page.js(f"(t => t.scrollWidth <= t.parentElement.clientWidth)"
                                 f"(document.querySelector('table.{table}'))"), table
        assert page.errors == []
