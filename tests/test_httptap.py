"""What `requests` takes from the environment still applies to our sends, read once per
config load (relay/httptap.py): proxies and NO_PROXY, the CA bundle, netrc credentials.

Real Apprise json:// / jsons:// sends through `Notifier`, to real local servers: a sink, a
plain HTTP proxy (it gets the absolute-form request), an HTTPS sink with its own CA.
"""

from __future__ import annotations

import base64
import ssl
import subprocess
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from relay.config import ReceiverConfig
from relay.notify import Notifier, Outcome
from tests.conftest import Sink, free_port, serve_posts, wait_for

ENV = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy",
       "NO_PROXY", "no_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NETRC")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def pool() -> Any:
    with ThreadPoolExecutor(2) as executor:
        yield executor


async def send(pool: Any, url: str) -> Outcome:
    """One send, by a Notifier made now (as a config load makes one)."""
    notifier = Notifier({"r": ReceiverConfig("r", (url,))}, pool, attempt_timeout=5.0)
    return await notifier.send("r", 0, "title", "body", "info", "text")


class Proxy:
    """A forward proxy for plain HTTP: it answers in the target's place and says what it got."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(f"{request.method} {request.url}")
        return web.Response(text="ok")


@pytest.fixture
async def proxy() -> AsyncIterator[tuple[Proxy, TestServer]]:
    p = Proxy()
    server = await serve_posts(p.handle)
    yield p, server
    await server.close()


async def test_a_proxy_from_the_environment_carries_our_sends_and_a_reload_reads_it_again(
        pool, proxy, monkeypatch) -> None:
    p, server = proxy
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.port}")
    # a name nothing resolves: only the proxy can have answered
    assert (await send(pool, "json://receiver.invalid:8080/hook")).kind == "sent"
    assert p.seen == ["POST http://receiver.invalid:8080/hook"]
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens: a new config load
    outcome = await send(pool, "json://receiver.invalid:8080/hook")
    assert outcome.kind == "retry" and len(p.seen) == 1


async def test_no_proxy_sends_straight_to_the_receiver(pool, proxy, sink: Sink,
                                                       monkeypatch) -> None:
    p, server = proxy
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.port}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert (await send(pool, sink.url("direct"))).kind == "sent"
    assert [m["title"] for m in sink.messages("direct")] == ["title"] and p.seen == []


async def test_a_redirect_to_another_host_takes_that_hosts_proxy(pool, proxy,
                                                                 monkeypatch) -> None:
    p, server = proxy

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("http://receiver.invalid:8080/moved")

    origin = await serve_posts(moved)
    try:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.port}")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # the first host is reached directly
        assert (await send(pool, f"json://127.0.0.1:{origin.port}/hook")).kind == "sent"
    finally:
        await origin.close()
    # as requests does: the host it is sent on to is looked up again (only a proxy reaches it)
    assert p.seen == ["POST http://receiver.invalid:8080/moved"]


async def test_netrc_credentials_reach_a_receiver_whose_url_has_none(pool, tmp_path: Path,
                                                                    monkeypatch) -> None:
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.Response(text="ok")

    server = await serve_posts(handle)
    try:
        netrc = tmp_path / "netrc"
        netrc.write_text("machine 127.0.0.1 login ops password s3cret\n")
        netrc.chmod(0o600)
        monkeypatch.setenv("NETRC", str(netrc))
        assert (await send(pool, f"json://127.0.0.1:{server.port}/a")).kind == "sent"
        # credentials in the URL win, as in requests
        assert (await send(pool, f"json://me:mine@127.0.0.1:{server.port}/b")).kind == "sent"
    finally:
        await server.close()
    basic = [base64.b64decode(h.removeprefix("Basic ")).decode() for h in seen]
    assert basic == ["ops:s3cret", "me:mine"]


@pytest.fixture
async def https_sink(tmp_path: Path) -> AsyncIterator[tuple[int, Path, list[str]]]:
    """An HTTPS server with a certificate of its own (not in any system store)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=30)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    arrived: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        arrived.append(request.path)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=context)
    await site.start()
    yield port, cert, arrived
    await runner.cleanup()


async def test_the_ca_bundle_of_the_environment_verifies_the_receiver(pool, https_sink,
                                                                      monkeypatch) -> None:
    port, cert, arrived = https_sink
    refused = await send(pool, f"jsons://localhost:{port}/plain")
    assert refused.kind != "sent" and arrived == []  # its certificate is nobody's
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    assert (await send(pool, f"jsons://localhost:{port}/trusted")).kind == "sent"
    assert arrived == ["/trusted"]


async def test_live_message_calls_take_the_proxy_of_the_environment_too(
        running, slack, monkeypatch) -> None:
    from tests.test_live_routes import SLACK_URL, config, event

    # The fake Slack answers as the proxy: a platform host nothing resolves reaches it only so.
    monkeypatch.setenv("HTTP_PROXY", slack.base.removesuffix("/api"))
    r = await running(config(SLACK_URL), live_api={"slack": "http://slack.invalid/api"})
    await r.post(event(0))
    await r.post(event(1))
    await wait_for(lambda: any(m.edits == 1 for m in slack.roots()), message="the edit")
    (root,) = slack.roots()
    assert root.text == "*Delivery D1*\nin_transit"


async def test_a_ca_bundle_that_cannot_be_read_fails_each_live_call_with_a_clear_error(
        tmp_path: Path, monkeypatch) -> None:
    import aiohttp

    from relay.httptap import reread_environment
    from relay.live.http import Api

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "gone.pem"))
    reread_environment()
    async with aiohttp.ClientSession() as session:
        answer = await Api(session, "https://slack.invalid/api", 5.0).call("POST", "/x")
    assert answer.status is None and answer.error.startswith(
        f"the CA bundle {tmp_path / 'gone.pem'} cannot be used: ")
