"""The status page's access rules and error paths, through a real relay and a plain HTTP client."""

from __future__ import annotations

import re

import aiohttp
import pytest

from tests.conftest import wait_for
from tests.uiutil import (
    ADMIN,
    HOSTILE,
    OPENS_FAST,
    VIEWER,
    event,
    one_dead_letter,
    open_circuit,
    start_ui_relay,
)

HTML = {"Accept": "text/html"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **HTML}


async def login(r, token: str, headers: dict[str, str] | None = None) -> aiohttp.ClientResponse:
    return await r.session.post(r.url + "/ui/login", data={"token": token, "next": "/ui/dead"},
                                allow_redirects=False, headers=headers or {})


async def csrf_of(r, path: str = "/ui/dead") -> str:
    async with r.session.get(r.url + path) as resp:
        found = re.search(r'name="csrf" value="([^"]+)"', await resp.text())
    assert found, "the page carries the session's CSRF token"
    return found.group(1)


async def test_a_page_without_login_redirects_to_the_login_form_and_shows_no_data(running, sink):
    r = await start_ui_relay(running, sink)
    await one_dead_letter(r, sink)
    async with r.session.get(r.url + "/ui/dead", headers=HTML, allow_redirects=False) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/ui/login?next=/ui/dead"
    async with r.session.get(r.url + "/ui/dead", headers=HTML) as resp:
        page = await resp.text()
    assert resp.status == 200 and 'name="token"' in page
    assert "D-1042" not in page and "chat" not in page


@pytest.mark.parametrize("method,path", [("GET", "/ui/"), ("GET", "/ui/delivery?id=D-1"),
                                         ("POST", "/ui/dead/replay"), ("POST", "/ui/tester")])
async def test_api_clients_without_a_token_get_json_401(running, sink, method, path):
    r = await start_ui_relay(running, sink)
    async with r.session.request(method, r.url + path, headers={"Authorization": "Bearer nope"},
                                 allow_redirects=False) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"] == "Unauthorized"
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")


async def test_the_status_page_is_off_without_admin_and_viewer_tokens(running, sink):
    r = await running(admin='""')
    async with r.session.get(r.url + "/ui/login", headers=HTML) as resp:
        assert resp.status == 403
        assert await resp.json() == {"error": "Forbidden", "details": "the status page is off:"
                                     " set server.admin_token (or server.viewer_token)"}


async def test_bearer_tokens_open_the_pages_and_name_the_role(running, sink):
    r = await start_ui_relay(running, sink)
    for token, role in ((ADMIN, "admin"), (VIEWER, "viewer")):
        async with r.session.get(r.url + "/ui/", headers=bearer(token)) as resp:
            page = await resp.text()
        assert resp.status == 200 and f'role-{role}"' in page
        assert "Log out" not in page  # a bearer header has no session to end


async def test_login_sets_a_strict_httponly_session_cookie_and_logout_ends_it(running, sink):
    r = await start_ui_relay(running, sink)
    resp = await login(r, ADMIN)
    assert resp.status == 303 and resp.headers["Location"] == "/ui/dead"
    cookie = resp.headers["Set-Cookie"]
    for flag in ("HttpOnly", "SameSite=Strict", "Path=/ui/"):
        assert flag in cookie
    assert "Secure" not in cookie  # plain HTTP here
    value = resp.cookies["kourier_session"].value
    assert ADMIN not in value
    async with r.session.get(r.url + "/ui/dead", headers=HTML) as page:
        assert page.status == 200 and "Dead letters" in await page.text()
    token = await csrf_of(r)
    async with r.session.post(r.url + "/ui/logout", data={"csrf": token},
                              allow_redirects=False) as out:
        assert out.status == 303 and out.headers["Location"] == "/ui/login"
    # The old cookie, sent again after logout, is refused by this relay.
    async with aiohttp.ClientSession(cookies={"kourier_session": value}) as other, \
            other.get(r.url + "/ui/dead", headers=HTML, allow_redirects=False) as again:
        assert again.status == 303 and again.headers["Location"].startswith("/ui/login")


async def test_the_cookie_is_secure_behind_a_tls_proxy(running, sink):
    r = await start_ui_relay(running, sink)
    resp = await login(r, VIEWER, {"X-Forwarded-Proto": "https"})
    assert "Secure" in resp.headers["Set-Cookie"]


async def test_a_wrong_token_shows_the_form_again_and_sets_no_cookie(running, sink):
    r = await start_ui_relay(running, sink)
    resp = await login(r, "admin-secreT")
    page = await resp.text()
    assert resp.status == 401 and "That token is not valid." in page and 'name="token"' in page
    assert "Set-Cookie" not in resp.headers and "admin-secreT" not in page


async def test_ten_wrong_tokens_lock_the_form_for_that_address_until_the_window_passes(
        running, sink):
    """On the fake clock: the eleventh try within five minutes is refused unchecked (429
    with Retry-After), even with the right token; after the window the right token logs in."""
    from tests.conftest import FakeClock

    clock = FakeClock()
    r = await start_ui_relay(running, sink, clock=clock)
    for n in range(10):
        clock.advance(1)
        assert (await login(r, f"guess-{n}")).status == 401
    clock.advance(100)  # 109 s after the first failure
    resp = await login(r, ADMIN)
    page = await resp.text()
    assert resp.status == 429 and resp.headers["Retry-After"] == "191"
    assert "Too many wrong tokens" in page and "Set-Cookie" not in resp.headers
    clock.advance(191)  # the window that began with the first failure has passed
    resp = await login(r, ADMIN)
    assert resp.status == 303 and "kourier_session" in resp.cookies


def test_the_login_throttle_forgets_on_success_and_stays_bounded() -> None:
    from relay.ui.access import LoginThrottle

    throttle = LoginThrottle(limit=2, window=60, addresses=3)
    throttle.failed("a", 0)
    throttle.succeeded("a")
    throttle.failed("a", 1)
    assert throttle.wait("a", 2) == 0  # one failure since the success: below the limit
    throttle.failed("a", 2)
    assert throttle.wait("a", 3) == 58  # the window began at the failure at 1
    for address in ("b", "c", "d"):  # a fourth address pushes out the quietest, "a"
        throttle.failed(address, 4)
    assert throttle.wait("a", 5) == 0 and len(throttle._failures) == 3


async def test_a_forged_or_altered_session_cookie_is_refused(running, sink):
    r = await start_ui_relay(running, sink)
    value = (await login(r, VIEWER)).cookies["kourier_session"].value
    role, expires, nonce, mac = value.split(".")
    for forged in (f"admin.{expires}.{nonce}.{mac}", f"viewer.{int(expires) + 9}.{nonce}.{mac}",
                   f"viewer.{expires}.{nonce}.{'0' * 64}", "admin.9999999999.x.y", "é.1.2.3"):
        async with aiohttp.ClientSession(cookies={"kourier_session": forged}) as other, \
                other.get(r.url + "/ui/", allow_redirects=False) as resp:
            assert resp.status == 401, forged


async def test_login_only_redirects_to_pages_of_the_status_page(running, sink):
    r = await start_ui_relay(running, sink)
    for target in ("//evil.example/", "https://evil.example/ui/", "/\\evil.example", "/other"):
        resp = await r.session.post(r.url + "/ui/login", data={"token": ADMIN, "next": target},
                                    allow_redirects=False)
        assert resp.headers["Location"] == "/ui/", target


async def test_a_replay_post_without_or_with_a_wrong_csrf_token_is_refused(running, sink):
    r = await start_ui_relay(running, sink)
    await one_dead_letter(r, sink)
    [job] = await r.relay.store.dead()
    await login(r, ADMIN)
    for data in ({"one": str(job.id)}, {"one": str(job.id), "csrf": "0" * 32}):
        async with r.session.post(r.url + "/ui/dead/replay", data=data,
                                  allow_redirects=False) as resp:
            assert resp.status == 403
            assert "CSRF" in (await resp.json())["details"]
    assert [j.id for j in await r.relay.store.dead()] == [job.id]  # still dead
    token = await csrf_of(r)
    async with r.session.post(r.url + "/ui/dead/replay", data={"one": str(job.id), "csrf": token},
                              allow_redirects=False) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/ui/dead?replayed=1"
    await wait_for(lambda: sink.messages("chat"), message="the replayed message at the sink")


async def test_the_viewer_token_can_look_but_not_replay(running, sink):
    r = await start_ui_relay(running, sink)
    await one_dead_letter(r, sink)
    [job] = await r.relay.store.dead()
    await login(r, VIEWER)
    async with r.session.get(r.url + "/ui/dead") as resp:
        page = await resp.text()
    assert "D-1042" in page and "Replay" not in page.replace("log in with the admin token to replay", "")
    token = await csrf_of(r, "/ui/tester")
    async with r.session.post(r.url + "/ui/dead/replay", data={"one": str(job.id), "csrf": token},
                              allow_redirects=False) as resp:
        assert resp.status == 403
        assert await resp.json() == {"error": "Forbidden",
                                     "details": "the viewer token can look but not replay"}
    async with r.session.post(r.url + "/ui/dead/replay", headers={"Authorization": f"Bearer {VIEWER}"},
                              data={"all": "1", "receiver": "chat"}) as resp:
        assert resp.status == 403
    assert len(await r.relay.store.dead()) == 1


async def test_the_viewer_sees_no_retry_button_and_its_retry_post_is_refused(running, sink):
    r = await start_ui_relay(running, sink, sending=OPENS_FAST)
    await open_circuit(r, sink)
    async with r.session.get(r.url + "/ui/", headers=bearer(VIEWER)) as resp:
        page = await resp.text()
    assert "circuit open" in page and "Retry now" not in page
    async with r.session.get(r.url + "/ui/", headers=bearer(ADMIN)) as resp:
        page = await resp.text()
    assert 'id="retry-chat-0"' in page
    assert "relays serve from this store" not in page  # one relay: no replicas to list
    async with r.session.post(r.url + "/ui/receivers/retry-now", headers=bearer(VIEWER),
                              data={"receiver": "chat", "url": "0"}) as resp:
        assert (resp.status, await resp.json()) == (403, {
            "error": "Forbidden", "details": "the viewer token can look but not retry"})
    [state] = [s for s in await r.relay.store.receivers() if s.name == "chat"]
    assert state.open_until > 0  # still open


@pytest.mark.parametrize("data", [{}, {"receiver": "chat"}, {"receiver": "chat", "url": "1"},
                                  {"receiver": "chat", "url": "-1"}, {"receiver": "nobody",
                                                                      "url": "0"},
                                  {"receiver": "chat", "url": "٠"}])
async def test_a_bad_retry_now_form_is_a_json_400(running, sink, data):
    r = await start_ui_relay(running, sink)
    async with r.session.post(r.url + "/ui/receivers/retry-now", data=data,
                              headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
        assert (resp.status, await resp.json()) == (400, {
            "error": "Invalid request data",
            "details": "name a receiver of the config and the place of one of its URLs"})


@pytest.mark.parametrize("data,details", [({"one": "x1"}, "job ids must be numbers"),
                                          ({}, "select dead letters, or replay all of a receiver's"),
                                          ({"receiver": "chat"}, "select dead letters, or replay all"
                                           " of a receiver's")])
async def test_a_bad_replay_form_is_a_json_400(running, sink, data, details):
    r = await start_ui_relay(running, sink)
    async with r.session.post(r.url + "/ui/dead/replay", data=data,
                              headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
        assert resp.status == 400 and await resp.json() == {"error": "Invalid request data",
                                                            "details": details}


async def test_an_unknown_delivery_is_a_404_page_with_the_search_form(running, sink):
    r = await start_ui_relay(running, sink)
    async with r.session.get(r.url + "/ui/delivery?id=D-none", headers=bearer(ADMIN)) as resp:
        page = await resp.text()
    assert resp.status == 404 and "No events for delivery <code>D-none</code>" in page
    async with r.session.get(r.url + "/ui/deliveries?delivery_id=D-none",
                             headers=bearer(ADMIN)) as resp:
        assert resp.status == 200 and "No events for delivery" in await resp.text()


async def test_pages_escape_payload_values_and_never_show_secrets(running, sink):
    r = await start_ui_relay(running, sink)
    await one_dead_letter(r, sink, delivery="D-<b>1</b>")
    pages = ["/ui/", "/ui/deliveries", "/ui/delivery?id=D-%3Cb%3E1%3C%2Fb%3E", "/ui/dead"]
    for path in pages:
        async with r.session.get(r.url + path, headers=bearer(ADMIN)) as resp:
            page = await resp.text()
        assert resp.status == 200, path
        assert "<b>1</b>" not in page and HOSTILE not in page, path
        for secret in ("SINK-SECRET-42", ADMIN, VIEWER, "test-token"):
            assert secret not in page, (path, secret)
    assert "D-&lt;b&gt;1&lt;/b&gt;" in page
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp


async def test_the_rule_tester_shows_the_dry_run_and_sends_nothing(running, sink):
    r = await start_ui_relay(running, sink)
    token = (await login(r, VIEWER)) and await csrf_of(r, "/ui/tester")
    body = '{"event": "delivery.updated", "delivery_id": "D-7", "timestamp": "2026-01-02T10:00:00Z", "status": "failed", "reason": "flat tyre"}'
    async with r.session.post(r.url + "/ui/tester", data={"csrf": token, "event": body}) as resp:
        page = await resp.text()
    assert "MATCH  failures -&gt; chat" in page and "skip   quiet: not evaluated" in page
    assert "Reason: flat tyre" in page and "chat[0] json://***" in page
    assert "SINK-SECRET-42" not in page
    async with r.session.post(r.url + "/ui/tester", data={"csrf": token, "event": "[1"}) as resp:
        assert "Invalid JSON:" in await resp.text()
    assert sink.received == [] and await r.relay.store.recent_deliveries() == []


async def test_static_files_need_no_login_and_are_cached(running, sink):
    r = await start_ui_relay(running, sink)
    async with r.session.get(r.url + "/ui/static/ui.css") as resp:
        assert resp.status == 200 and "Cache-Control" not in resp.headers
        assert "system-ui" in await resp.text()
    async with r.session.get(r.url + "/ui/", headers=bearer(ADMIN)) as resp:
        assert resp.headers["Cache-Control"] == "no-store"
    assert (await r.post(event("D-9", "in_transit")))[0] == 202  # the webhook is unaffected


async def test_the_overview_shows_a_receiver_in_its_quiet_hours_and_when_they_end(running, sink):
    from tests.conftest import FakeClock
    from tests.test_less_noise import QUIET, at, ops

    clock = FakeClock(at("2026-12-02T23:00"))  # a Wednesday night in Berlin
    r = await running(ops(sink, QUIET) + "default_receiver: ops\n", clock=clock)
    async with r.session.get(r.url + "/ui/", headers=bearer(ADMIN)) as resp:
        page = await resp.text()
    assert resp.status == 200
    assert "st-quiet-hours" in page
    assert ("until Thu 07:00 Europe/Berlin: notifications wait for one summary"
            " (failure notifications still go out)") in page
    clock.advance(9 * 3600)  # Thursday 08:00: the quiet time is over
    async with r.session.get(r.url + "/ui/", headers=bearer(ADMIN)) as resp:
        assert "st-quiet-hours" not in await resp.text()


@pytest.mark.parametrize("path", ["/ui/login", "/ui/tester"])
async def test_a_malformed_form_is_a_json_400_not_a_traceback(running, sink, path, caplog):
    """Broken multipart (no starting boundary) on the login form and on a logged-in form."""
    r = await start_ui_relay(running, sink)
    headers = {"Content-Type": "multipart/form-data; boundary=x", "Authorization":
               f"Bearer {ADMIN}"}
    async with r.session.post(r.url + path, data=b"garbage", headers=headers) as resp:
        assert resp.status == 400
        assert await resp.json() == {"error": "Invalid body",
                                     "details": "the form cannot be read"}
    assert "Traceback" not in caplog.text and ADMIN not in caplog.text


async def test_a_delivery_with_many_events_shows_the_newest_and_says_how_many_are_left_out(
        running, sink):
    from relay.store.sql import TIMELINE_SHOWN

    r = await start_ui_relay(running, sink)
    total = TIMELINE_SHOWN + 3
    for n in range(total):
        body = {**event("D-long", "in_transit"), "timestamp": f"2026-01-02T10:{n // 60:02d}:"
                f"{n % 60:02d}Z", "note": f"event-{n:03d}"}
        assert (await r.post(body))[0] == 202
    async with r.session.get(r.url + "/ui/delivery?id=D-long", headers=bearer(ADMIN)) as resp:
        page = await resp.text()
    assert resp.status == 200 and f"{total} events" in page
    assert page.count('class="event card"') == TIMELINE_SHOWN
    assert "event-002" not in page and "event-003" in page and f"event-{total - 1}" in page
    assert re.search(r'id="earlier">\(the newest 100 shown with their notifications; 3 earlier'
                     r' not shown\)', page)


async def test_the_dead_letters_page_says_when_it_shows_only_the_oldest(running, sink):
    from relay.ui.pages import DEAD_PAGE

    r = await start_ui_relay(running, sink, sending="circuit: {failures: 1000}")
    sink.script["/chat"] = [404] * (DEAD_PAGE + 1)  # refused for good: each goes dead
    for n in range(DEAD_PAGE):
        assert (await r.post(event(f"D-{n}", "failed", reason="lost")))[0] == 202
    await wait_for(lambda: _dead_count(r, DEAD_PAGE), message="every job dead")

    async def heading() -> str:
        async with r.session.get(r.url + "/ui/dead", headers=bearer(ADMIN)) as resp:
            page = await resp.text()
        found = re.search(r'<h2 id="dead-h">(.*?)</h2>', page)
        assert resp.status == 200 and found and page.count('class="pick"><input') <= DEAD_PAGE
        return found.group(1)

    assert await heading() == f"{DEAD_PAGE} dead letters"  # all of them: nothing more
    assert (await r.post(event("D-last", "failed", reason="lost")))[0] == 202
    await wait_for(lambda: _dead_count(r, DEAD_PAGE + 1), message="one more dead")
    assert await heading() == (f"{DEAD_PAGE} dead letters: the oldest {DEAD_PAGE} are shown, and"
                               " there are more (replay these to see the next)")


async def _dead_count(r, count: int) -> bool:
    return len(await r.relay.store.dead(None, count + 1)) == count


def _notifications(page: str, delivery: str) -> list[str]:
    """The Notifications cell of a delivery's row in the deliveries list, pill by pill."""
    row = re.search(rf'\?id={delivery}">{delivery}</a></th>(.*?)</tr>', page, re.S)
    assert row, f"{delivery} is listed"
    return re.findall(r'<span class="(?:pill st-[\w-]+|muted)">([^<]+)</span>', row.group(1))


async def test_the_deliveries_list_counts_what_went_out_in_a_summary_or_a_digest(running, sink):
    # The list said "none" for a delivery whose notifications all went out inside quiet
    # hours' summary (its own page said "summarised"), and for one whose event joined a digest.
    from tests.conftest import FakeClock
    from tests.test_less_noise import DIGEST_ROUTE, QUIET, at, failed, moving, ops, passes, sent

    clock = FakeClock(at("2026-12-02T23:00"))  # a Wednesday night in Berlin: quiet until 07:00
    r = await running(ops(sink, QUIET) + DIGEST_ROUTE % "{window: 10m}" + "default_receiver: ops\n"
                      "deliveries: {suppress_stale: true}\n", clock=clock)
    for body in (moving(1), moving(2), {**moving(2), "event": "delivery.cancelled"}):
        assert (await r.post(body))[0] == 202
    async with r.session.get(r.url + "/ui/", headers=bearer(ADMIN)) as resp:
        overview = await resp.text()
    assert re.search(r'id="backlog">2</span><span class="muted small" id="held">2 of them held'
                     r" for quiet hours' summary</span>", overview)
    clock.now = at("2026-12-03T07:00")  # the summary goes out
    await passes(r.relay, 2)
    await wait_for(lambda: len(sent(sink)) == 1, message="the summary")
    assert (await r.post(failed(3)))[0] == 202  # joins a 10 min digest window
    clock.advance(600)
    await passes(r.relay)
    await wait_for(lambda: len(sent(sink)) == 2, message="the digest")
    assert (await r.post(failed(4)))[0] == 202  # a window of its own, still open
    assert (await r.post({**moving(5), "status": "at_hub"}))[0] == 202  # sent on its own
    await passes(r.relay)
    await wait_for(lambda: len(sent(sink)) == 3, message="d5's notification")

    async def recorded() -> str | None:  # the sink has it before the worker records the outcome
        async with r.session.get(r.url + "/ui/deliveries", headers=bearer(ADMIN)) as resp:
            page = await resp.text()
        return page if _notifications(page, "d5") == ["1 sent"] else None

    page = await wait_for(recorded, message="d5 recorded as sent")
    assert {d: _notifications(page, d) for d in ("d1", "d2", "d3", "d4", "d5")} == {
        "d1": ["1 in a summary"], "d2": ["1 in a summary", "1 suppressed"],
        "d3": ["1 in a digest"], "d4": ["1 waiting"], "d5": ["1 sent"]}
    async with r.session.get(r.url + "/ui/delivery?id=d2", headers=bearer(ADMIN)) as resp:
        assert re.search(r'st-summarised">1 summarised</span><span class="pill st-suppressed">1'
                         r" suppressed</span>", await resp.text())
