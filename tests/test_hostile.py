"""Hostile requests get a JSON 4xx, never a 500, never an echo of what they sent.

Each class found by probing the relay from outside (HAZARDS.md, issue 11) has a test
here, against the relay served the way `serve` serves it.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import re
import zlib
from urllib.parse import urlencode

import pytest

from relay.server import GuardedHandler
from tests import guarded as guarded_module
from tests import pgutil
from tests.conftest import TOKEN, wait_for
from tests.guarded import event, request, response, until_eof

guarded = guarded_module.guarded  # the fixture

SECRET_HEADER = f"Bearer {TOKEN}"


def _assert_json_error(raw: bytes, status: int = 400) -> dict[str, str]:
    code, headers, body = response(raw)
    assert code == status, raw[:300]
    assert headers["content-type"].startswith("application/json")
    assert isinstance(body, dict) and set(body) == {"error", "details"}
    return body


def _relay_log(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith(("aiohttp", "relay", "asyncio"))]


# ---------------------------------------------------------------- below the handler

PARSER_REFUSALS = {
    "header over 8 KB": request(body=event(), headers={"X-Big": "A" * 9000}),
    "NUL in a header": request(body=event(), headers={"X-Note": "a\x00b"}),
    "control byte in a header": request(body=event(), headers={"X-Note": "a\x01b"}),
    "bad request line": b"POST /webhook HTTP/1.1 trailing\r\nAuthorization: "
                        + SECRET_HEADER.encode() + b"\r\n\r\n",
    "bad header name": request(body=event(), headers={"Bad Name": "x"}),
    "unknown HTTP version": request(body=event()).replace(b"HTTP/1.1", b"HTTP/7.3", 1),
}


@pytest.mark.parametrize("raw", PARSER_REFUSALS.values(), ids=PARSER_REFUSALS.keys())
async def test_a_request_the_http_parser_refuses_gets_json_400_and_one_quiet_log_line(
        guarded, caplog, raw):
    g = await guarded()
    caplog.set_level(logging.DEBUG)
    answer = await g.exchange(raw)
    _assert_json_error(answer)
    assert TOKEN.encode() not in answer and b"AAAA" not in answer and b"\x00" not in answer
    records = _relay_log(caplog)
    assert len(records) <= 1, [r.getMessage() for r in records]
    for r in records:
        assert r.exc_info is None and TOKEN not in r.getMessage()
        assert "AAAA" not in r.getMessage() and "X-" not in r.getMessage()


async def test_a_flood_of_refused_requests_is_logged_once_per_interval(guarded, caplog):
    g = await guarded()
    caplog.set_level(logging.INFO)
    for _ in range(5):
        _assert_json_error(await g.exchange(PARSER_REFUSALS["NUL in a header"]))
    assert len([r for r in _relay_log(caplog) if "malformed" in r.getMessage()]) == 1


async def test_bad_chunked_framing_gets_json_400(guarded, caplog):
    g = await guarded()
    caplog.set_level(logging.INFO)
    raw = request(headers={"Transfer-Encoding": "chunked"}) + b"zz\r\n{}\r\n0\r\n\r\n"
    answer = await g.exchange(raw)
    _assert_json_error(answer)
    assert all(r.exc_info is None for r in _relay_log(caplog))


async def test_chunked_framing_broken_after_the_first_chunk_gets_json_400_at_once(
        guarded, caplog):
    # body_timeout far away: only the broken framing itself can end the wait
    g = await guarded("body_timeout: 600")
    caplog.set_level(logging.INFO)
    reader, writer = await g.connect()
    writer.write(request(headers={"Transfer-Encoding": "chunked"}) + b"2\r\n{}\r\n")
    await wait_for(lambda: g.server.requests_count == 1, message="the headers parsed")
    writer.write(b"zz\r\n")  # the next chunk's size is not hex
    try:
        answer = await until_eof(reader)
    finally:
        writer.close()
    assert _assert_json_error(answer) == {"error": "Invalid body",
                                          "details": "malformed chunked body"}
    assert answer.count(b"HTTP/1.1") == 1  # one answer, then the connection is closed
    assert all(r.exc_info is None for r in _relay_log(caplog))


@pytest.mark.parametrize("encoding,body", [
    ("gzip", b"\x1f\x8b\x08\x00garbage that is not deflate data"),
    ("gzip", gzip.compress(event())[:-12]),  # cut short
    ("deflate", b"not zlib at all"),
    ("deflate", zlib.compress(event())[:10]),
], ids=["gzip garbage", "gzip truncated", "deflate garbage", "deflate truncated"])
async def test_a_corrupt_compressed_body_is_the_clients_fault(guarded, caplog, encoding, body):
    g = await guarded()
    caplog.set_level(logging.INFO)
    answer = await g.exchange(request(body=body, headers={"Content-Encoding": encoding}))
    _assert_json_error(answer)
    assert all(r.exc_info is None for r in _relay_log(caplog))


async def test_a_compressed_event_is_still_accepted(guarded):
    g = await guarded()
    raw = request(body=gzip.compress(event()), headers={"Content-Encoding": "gzip"})
    assert response(await g.exchange(raw))[0] == 202


def test_the_aiohttp_internals_the_guards_rely_on_are_still_there():
    """relay/server.py reads RequestHandler._waiter and _request_count: an upgrade that
    renames them must fail here, not silently switch the header timeout off."""
    import inspect

    source = inspect.getsource(GuardedHandler.__mro__[1])
    assert "self._waiter = loop.create_future()" in source
    assert "self._request_count += 1" in source


# ---------------------------------------------------------------- bodies

CRASHING_BODIES = {
    "3000-deep array": event().replace(b"}", b', "extra": ' + b"[" * 3000 + b"]" * 3000 + b"}"),
    "65-deep objects": event().replace(b"}", b', "x": ' + b'{"a": ' * 65 + b"1" + b"}" * 65 + b"}"),
    "5000-digit integer": event().replace(b"}", b', "n": ' + b"9" * 5000 + b"}"),
    "NaN": event().replace(b"}", b', "n": NaN}'),
    "Infinity": event().replace(b"}", b', "n": -Infinity}'),
    "float overflow": event().replace(b"}", b', "n": 1e999}'),
    "lone high surrogate": event().replace(b"}", b', "s": "\\ud800"}'),
    "lone low surrogate in a key": event().replace(b"}", b', "\\udc00": 1}'),
    "lone surrogate in delivery_id": event(delivery_id="x").replace(b'"x"', b'"\\udbff"'),
    "NUL in a string": event().replace(b"}", b', "s": "a\\u0000b"}'),
    "raw UTF-8 surrogate bytes": event().replace(b"}", b', "s": "\xed\xa0\x80"}'),
    "UTF-16 body": event().decode().encode("utf-16"),
    "timestamp out of range": event(timestamp="0001-01-01T00:00:00+23:59"),
}


@pytest.mark.parametrize("body", CRASHING_BODIES.values(), ids=CRASHING_BODIES.keys())
async def test_a_body_that_would_crash_or_could_not_be_stored_gets_json_400(guarded, body):
    g = await guarded()
    _assert_json_error(await g.exchange(request(body=body)))


async def test_a_paired_surrogate_escape_and_shallow_nesting_are_fine(guarded):
    g = await guarded()
    body = event().replace(b"}", b', "emoji": "\\ud83d\\ude00", "deep": ' + b"[" * 60
                           + b"]" * 60 + b', "text": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}')
    code, _, answer = response(await g.exchange(request(body=body)))
    assert code == 202, answer


@pytest.mark.parametrize("ctype", ["application/json; charset=iso-8859-1",
                                   "application/json; charset=utf-16"])
async def test_a_json_body_in_another_charset_gets_415(guarded, ctype):
    g = await guarded()
    body = _assert_json_error(await g.exchange(
        request(body=event(), headers={"Content-Type": ctype})), 415)
    assert "UTF-8" in body["details"]


async def test_a_request_id_that_cannot_go_back_into_a_header_is_percent_encoded(guarded):
    g = await guarded()
    raw = request(body=event(), headers={"X-Request-Id": "caf\xe9 au lait"})
    code, headers, _ = response(await g.exchange(raw))
    assert code == 202 and headers["x-request-id"] == "caf%E9%20au%20lait"


# ---------------------------------------------------------------- admin API

ADMIN = "Bearer admin-secret"
DEEP = b"[" * 3000 + b"]" * 3000
MALFORMED_ADMIN = {
    "limit not a number": ("GET", "/-/dead?limit=abc", b""),
    "limit negative": ("GET", "/-/dead?limit=-1", b""),
    "limit zero": ("GET", "/-/dead?limit=0", b""),
    "limit superscript digit": ("GET", "/-/dead?limit=%C2%B2", b""),
    "limit past 64 bits": ("GET", "/-/dead?limit=" + "9" * 30, b""),
    "limit 5000 digits": ("GET", "/-/dead?limit=" + "9" * 5000, b""),
    "unknown receiver": ("GET", "/-/dead?receiver=nope", b""),
    "id not a number": ("GET", "/-/dead/abc", b""),
    "id superscript digit": ("GET", "/-/dead/%C2%B2", b""),
    "id past 64 bits": ("GET", "/-/dead/" + "9" * 30, b""),
    "replay body not JSON": ("POST", "/-/dead/replay", b"{nope"),
    "replay body not UTF-8": ("POST", "/-/dead/replay", b'{"all": true, "x": "\xff"}'),
    "replay body too deep": ("POST", "/-/dead/replay", b'{"ids": ' + DEEP + b"}"),
    "replay body NaN": ("POST", "/-/dead/replay", b'{"ids": [NaN]}'),
    "replay body a list": ("POST", "/-/dead/replay", b"[1, 2]"),
    "replay nothing chosen": ("POST", "/-/dead/replay", b"{}"),
    "replay ids a string": ("POST", "/-/dead/replay", b'{"ids": "1"}'),
    "replay ids booleans": ("POST", "/-/dead/replay", b'{"ids": [true]}'),
    "replay ids past 64 bits": ("POST", "/-/dead/replay", b'{"ids": [' + b"9" * 30 + b"]}"),
    "replay ids negative": ("POST", "/-/dead/replay", b'{"ids": [-1]}'),
    "replay receiver a number": ("POST", "/-/dead/replay", b'{"receiver": 5}'),
    "replay receiver a list": ("POST", "/-/dead/replay", b'{"receiver": ["a"]}'),
    "replay unknown receiver": ("POST", "/-/dead/replay", b'{"receiver": "nope"}'),
}


@pytest.mark.parametrize("method,path,body", MALFORMED_ADMIN.values(), ids=MALFORMED_ADMIN.keys())
async def test_a_malformed_admin_request_gets_json_400(guarded, method, path, body):
    g = await guarded()
    raw = request(method, path, body=body, token=None, headers={"Authorization": ADMIN})
    _assert_json_error(await g.exchange(raw))


async def test_well_formed_admin_requests_still_work(guarded):
    g = await guarded()
    for method, path, body in [("GET", "/-/dead?limit=5", b""), ("GET", "/-/dead", b""),
                               ("POST", "/-/dead/replay", b'{"all": true}'),
                               ("POST", "/-/dead/replay", b'{"ids": [1, 2]}')]:
        raw = request(method, path, body=body, token=None, headers={"Authorization": ADMIN})
        code, _, answer = response(await g.exchange(raw))
        assert code == 200, (path, answer)
    code, _, answer = response(await g.exchange(
        request("GET", "/-/dead/7", token=None, headers={"Authorization": ADMIN})))
    assert code == 404 and answer["details"] == "no job 7"
    code, _, answer = response(await g.exchange(request(  # a list, yet no job can have id 0
        "POST", "/-/dead/replay", body=b'{"ids": [0]}', token=None,
        headers={"Authorization": ADMIN})))
    assert code == 400 and answer["details"] == \
        '"ids" must be a list of job ids (whole numbers from 1)'


@pytest.mark.parametrize("path,details", [
    ("/-/dead?limit=-1", "limit must be a whole number from 1 (at most 18 digits)"),
    ("/-/dead?limit=1.5", "limit must be a whole number from 1 (at most 18 digits)"),
    ("/-/dead/abc", "id must be a whole number from 1 (at most 18 digits)"),
    ("/-/dead/" + "9" * 19, "id must be a whole number from 1 (at most 18 digits)"),
    ("/-/dead?limit=0", "limit must be between 1 and 10000"),
])
async def test_an_admin_number_that_is_not_one_says_what_one_is(guarded, path, details):
    # "-1" and "1.5" are numbers: the answer said "must be a number" to them.
    g = await guarded()
    answer = _assert_json_error(await g.exchange(
        request("GET", path, token=None, headers={"Authorization": ADMIN})))
    assert answer["details"] == details


# ---------------------------------------------------------------- Expect: 100-continue


async def _expecting(g: guarded_module.Guarded, head: bytes) -> bytes:
    """Send only the headers of a request that asks to be told to go on: the first answer
    that comes back before any body is sent (a client waits for it, as curl does)."""
    reader, writer = await g.connect()
    writer.write(head)
    try:
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = response(first)[1].get("content-length", "0")
        return first + await asyncio.wait_for(reader.readexactly(int(length)), 5)
    finally:
        writer.close()


def _expect_head(body: bytes = b"", **headers: str) -> bytes:
    raw = request(body=body, headers={"Expect": "100-continue", **headers}, close=False)
    return raw[: len(raw) - len(body)]  # the headers alone: the client waits for 100


@pytest.mark.parametrize("head,status", [
    (_expect_head(event()).replace(TOKEN.encode(), b"wrong-token"), 401),
    (_expect_head(event(), **{"Content-Type": "text/plain"}), 415),
    (_expect_head(event()).replace(b"Content-Length: %d" % len(event()),
                                   b"Content-Length: 999999"), 413),
], ids=["wrong token", "not JSON", "declared over the limit"])
async def test_a_webhook_the_headers_refuse_is_refused_before_the_body_is_asked_for(
        guarded, head, status):
    g = await guarded()
    answer = await _expecting(g, head)
    assert b"100 Continue" not in answer, answer[:200]
    _assert_json_error(answer, status)
    assert response(answer)[1]["connection"] == "close"  # whether a body follows or not


async def test_a_webhook_that_expects_100_continue_is_told_to_go_on_and_stored(guarded):
    g = await guarded()
    body = event(delivery_id="expects-100")
    reader, writer = await g.connect()
    writer.write(_expect_head(body))
    go_on = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert go_on == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(body)
    code, headers, answer = response(await asyncio.wait_for(reader.readuntil(b"}"), 5))
    writer.close()
    assert code == 202 and answer["status"] == "accepted" and headers["x-request-id"]
    assert [d.delivery_id for d in await g.relay.store.recent_deliveries()] == ["expects-100"]


async def test_an_unknown_expectation_gets_json_417_without_its_value(guarded):
    g = await guarded()
    answer = await g.exchange(request(body=event(), headers={"Expect": "secret-ish-value"}))
    body = _assert_json_error(answer, 417)
    assert b"secret-ish-value" not in answer and body["error"] == "Expectation failed"
    assert await g.relay.store.recent_deliveries() == []


FORM = {"Content-Type": "application/x-www-form-urlencoded"}
EXPECTING = {  # a request of each kind no webhook handler sees: (method, path, its headers)
    "health": ("GET", "/healthz", {}),
    "readiness": ("GET", "/readyz", {}),
    "admin API": ("POST", "/-/reload", {"Authorization": ADMIN}),
    "admin API, no token": ("GET", "/-/dead/7", {}),
    "status page": ("POST", "/ui/login", FORM),
    "static file": ("GET", "/ui/static/ui.css", {}),
    "unknown path": ("GET", "/nope", {}),
    "unknown status page path": ("GET", "/ui/nope", {}),
    "wrong method": ("DELETE", "/healthz", {}),
    "wrong method on the webhook": ("GET", "/webhook", {}),
}


def _assert_json_417(answer: bytes, value: bytes) -> None:
    body = _assert_json_error(answer, 417)
    _, headers, _ = response(answer)
    assert body == {"error": "Expectation failed",
                    "details": "only Expect: 100-continue is supported"}
    assert value not in answer and headers["x-request-id"] and headers["connection"] == "close"


@pytest.mark.parametrize("method,path,headers", EXPECTING.values(), ids=EXPECTING.keys())
async def test_every_route_answers_an_unknown_expectation_as_the_webhook_does(
        guarded, method, path, headers):
    g = await guarded()
    raw = request(method, path, body=b"x=1", token=None,
                  headers={"Expect": "secret-ish-value", **headers}, close=False)
    _assert_json_417(await g.exchange(raw), b"secret-ish-value")


async def test_no_route_is_left_with_aiohttps_own_expect_handler(guarded):
    """Every route the app has, the ones added after this test too: a route added some
    way `relay.dispatcher.Router` does not see would answer aiohttp's text/plain 417."""
    g = await guarded()
    routes = [(r.method, re.sub(r"\{[^}]*\}", "1", r.resource.canonical))
              for r in g.relay.web_app().router.routes() if r.resource is not None]
    assert len(routes) > 10 and ("GET", "/ui/static/1") in routes
    for method, path in routes:
        answer = await g.exchange(request(method, path, token=None,
                                          headers={"Expect": "x-nope"}))
        code, headers, _ = response(answer)
        assert code == 417 and b"x-nope" not in answer, (method, path, answer[:200])
        if method == "HEAD":  # the same answer without its body
            assert headers["content-type"].startswith("application/json") and \
                headers["x-request-id"] and headers["connection"] == "close"
        else:
            _assert_json_417(answer, b"x-nope")


async def test_an_http_1_0_request_with_an_expectation_is_answered_as_without_one(guarded):
    """HTTP/1.0 has no 100 Continue: the header is ignored, as on the webhook."""
    g = await guarded()
    for path in ("/healthz", "/webhook"):
        raw = request("POST" if path == "/webhook" else "GET", path, body=event(),
                      headers={"Expect": "secret-ish-value"}).replace(b"HTTP/1.1", b"HTTP/1.0", 1)
        code, _, _ = response(await g.exchange(raw))
        assert code == (202 if path == "/webhook" else 200)


@pytest.mark.parametrize("path,headers,form,status", [
    ("/ui/login", FORM, {"token": "admin-secret", "next": "/ui/"}, 303),
    ("/-/reload", {"Authorization": ADMIN}, {}, 200),
], ids=["status page login", "admin reload"])
async def test_a_route_besides_the_webhook_still_tells_a_100_continue_client_to_go_on(
        guarded, path, headers, form, status):
    g = await guarded()
    body = urlencode(form).encode()
    raw = request("POST", path, body=body, token=None, close=False,
                  headers={"Expect": "100-continue", **headers})
    reader, writer = await g.connect()
    writer.write(raw[: len(raw) - len(body)])
    try:
        go_on = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert go_on == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        writer.close()
    assert response(head)[0] == status, head


# ---------------------------------------------------------------- the status page


async def test_a_static_file_that_does_not_exist_is_a_json_404(guarded):
    g = await guarded()
    for path in ("/ui/static/nope.css", "/ui/static/a%5Cb", "/ui/static/..%5Cui.css"):
        _assert_json_error(await g.exchange(request("GET", path, token=None)), 404)
    code, headers, css = response(await g.exchange(request("GET", "/ui/static/ui.css", token=None)))
    assert code == 200 and headers["content-type"].startswith("text/css") and "system-ui" in css


def _latin1(text: str) -> str:
    """`text`'s UTF-8 bytes as the str `request` writes out byte for byte."""
    return text.encode("utf-8").decode("latin-1")


FORGED_COOKIES = {
    "a superscript digit as its expiry": _latin1("admin.\u00b2.nonce.mac"),
    "an expiry of 5000 digits": "admin." + "9" * 5000 + ".nonce.mac",
    "bytes that are not UTF-8": "admin.9999999999.\xff\xfe.\xed\xa0\x80",
    "an Arabic-Indic digit as its expiry": _latin1("viewer.\u0661\u0662.nonce.mac"),
}


@pytest.mark.parametrize("cookie", FORGED_COOKIES.values(), ids=FORGED_COOKIES.keys())
async def test_a_forged_session_cookie_is_no_session_and_no_500(guarded, caplog, cookie):
    g = await guarded()
    caplog.set_level(logging.INFO)
    session = {"Cookie": f"kourier_session={cookie}"}
    _assert_json_error(await g.exchange(request("GET", "/ui/", token=None, headers=session)), 401)
    code, headers, _ = response(await g.exchange(request(
        "GET", "/ui/dead", token=None, headers={**session, "Accept": "text/html"})))
    assert code == 303 and headers["location"].startswith("/ui/login")
    # An admin with a bearer header logging out a forged cookie: nothing to end.
    code, _, _ = response(await g.exchange(request(
        "POST", "/ui/logout", token=None, headers={**session, "Authorization": ADMIN})))
    assert code == 303
    assert all(r.exc_info is None and r.levelno < logging.ERROR for r in _relay_log(caplog))


@pytest.mark.parametrize("ids", ["one=%C2%B2", "id=99999999999999999999", "one=" + "9" * 5000,
                                 "id=1&id=%D9%A1"],
                         ids=["superscript digit", "past 64 bits", "5000 digits",
                              "an Arabic-Indic digit"])
async def test_a_replay_form_with_ids_that_are_no_numbers_is_a_json_400(guarded, caplog, ids):
    g = await guarded()
    caplog.set_level(logging.INFO)
    answer = await g.exchange(request("POST", "/ui/dead/replay", body=ids.encode(), token=None,
                                      headers={"Authorization": ADMIN, "Content-Type":
                                               "application/x-www-form-urlencoded"}))
    assert _assert_json_error(answer)["details"] == "job ids must be numbers"
    assert all(r.exc_info is None for r in _relay_log(caplog))


@pytest.mark.parametrize("target,location", [
    ("/ui/dead\x01x", "/ui/dead%01x"), ("/ui/\x1b[31m", "/ui/%1B%5B31m"),
    ("/ui/dead?receiver=\x7f", "/ui/dead?receiver=%7F"), ("/ui/d\u00e9j\u00e0", "/ui/d%C3%A9j%C3%A0"),
    ("/ui/dead?receiver=a%20b", "/ui/dead?receiver=a%20b"),
], ids=["control byte", "escape sequence", "DEL in the query", "not ASCII", "already encoded"])
async def test_login_redirects_to_a_page_whose_address_has_control_characters(
        guarded, caplog, target, location):
    """The page to go back to comes from the form: it goes into the Location header
    percent-encoded (a raw control character there made aiohttp drop the answer)."""
    g = await guarded()
    caplog.set_level(logging.INFO)
    form = urlencode({"token": "admin-secret", "next": target}).encode()
    code, headers, _ = response(await g.exchange(request(
        "POST", "/ui/login", body=form, token=None,
        headers={"Content-Type": "application/x-www-form-urlencoded"})))
    assert code == 303 and headers["location"] == location
    assert headers["set-cookie"].startswith("kourier_session=admin.")
    assert all(r.exc_info is None for r in _relay_log(caplog))


def _multipart(charset: str, value: bytes) -> tuple[bytes, dict[str, str]]:
    body = (b'--B\r\nContent-Disposition: form-data; name="token"\r\nContent-Type: text/plain;'
            b" charset=" + charset.encode() + b"\r\n\r\n" + value + b"\r\n--B--\r\n")
    return body, {"Content-Type": "multipart/form-data; boundary=B"}


@pytest.mark.parametrize("path", ["/ui/login", "/ui/tester"])
@pytest.mark.parametrize("charset", ["nope", "rot13", "utf-7"])
async def test_a_form_in_a_charset_other_than_utf8_gets_415(guarded, caplog, path, charset):
    """A charset Python does not know, or one that is no text encoding, raised LookupError
    (a 500) on the login form, before any token; UTF-7 decodes to lone surrogates."""
    g = await guarded()
    caplog.set_level(logging.INFO)
    headers = {"Content-Type": f"application/x-www-form-urlencoded; charset={charset}",
               "Authorization": ADMIN}
    answer = await g.exchange(request("POST", path, body=b"token=x&event=%7B%7D", token=None,
                                      headers=headers))
    assert "UTF-8" in _assert_json_error(answer, 415)["details"]
    assert all(r.exc_info is None for r in _relay_log(caplog))


@pytest.mark.parametrize("path", ["/ui/login", "/ui/tester"])
@pytest.mark.parametrize("charset,value", [("nope", b"x"), ("utf-7", b"+2AA-")],
                         ids=["unknown charset", "a lone surrogate"])
async def test_a_multipart_field_that_cannot_be_text_is_a_json_400(guarded, caplog, path,
                                                                   charset, value):
    g = await guarded()
    caplog.set_level(logging.INFO)
    body, headers = _multipart(charset, value)
    answer = await g.exchange(request("POST", path, body=body, token=None,
                                      headers={**headers, "Authorization": ADMIN}))
    _assert_json_error(answer)
    assert all(r.exc_info is None for r in _relay_log(caplog))


async def _query_and_form_with_nul(g: guarded_module.Guarded) -> list[bytes]:
    admin = {"Authorization": ADMIN}
    return [await g.exchange(request("GET", path, token=None, headers=admin)) for path in (
        "/ui/deliveries?delivery_id=a%00b", "/ui/delivery?id=%00", "/ui/dead?receiver=%00")
    ] + [await g.exchange(request("POST", "/ui/dead/replay", body=b"receiver=%00&all=1",
                                  token=None, headers={**admin, **FORM}))]


async def test_a_nul_in_a_status_page_query_or_form_is_a_json_400(guarded):
    g = await guarded()
    for answer in await _query_and_form_with_nul(g):
        assert "NUL" in _assert_json_error(answer)["details"]


@pytest.mark.postgres
async def test_a_nul_in_a_status_page_query_is_a_400_on_postgresql_not_store_unavailable(
        guarded):
    """PostgreSQL text cannot hold NUL: such a lookup failed as 503 "Store unavailable",
    which tells a monitor the database is down."""
    async with pgutil.fresh_schema(await pgutil.base_dsn()) as dsn:
        g = await guarded(store_url=dsn)
        answers = await _query_and_form_with_nul(g)
        await g.relay.store.close()
    for answer in answers:
        assert "NUL" in _assert_json_error(answer)["details"]
