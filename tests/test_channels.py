"""End to end through real Apprise: what arrives at each kind of channel.

`json://` goes to a local aiohttp sink and `mailto://` to a local aiosmtpd
server. Slack, Discord and the BulkSMS gateway are internet services: their
requests are captured at the transport boundary (`HTTPAdapter.send`) and
answered the way the real service answers, so Apprise runs unmodified.
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import json
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from aiohttp import web
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

from relay.events import event_from_dict
from relay.logs import TextFormatter
from relay.message import Message
from relay.store.records import Notification
from tests.conftest import SENDING, serve_posts, wait_for
from tests.test_live_email import smtp  # noqa: F401  (fixture)

EVENT = {"event": "delivery.updated", "delivery_id": "abc123", "status": "in_transit",
         "timestamp": "2024-09-14T14:30:00Z"}
DEFAULT_TITLE = "Delivery abc123: In transit"
DEFAULT_BODY = "Status: In transit\nTime: 2024-09-14 14:30 UTC\nEvent: delivery.updated"
APPRISE_IMG = "https://github.com/caronc/apprise/raw/master/apprise/assets/themes/default"

SLACK_URL = "slack://T0SECRETA/B0SECRETB/SECRETtokenC123456789012"
SLACK_HOOK = "https://hooks.slack.com/services/T0SECRETA/B0SECRETB/SECRETtokenC123456789012"
DISCORD_URL = "discord://987654321/SECRETdiscordTOKENvalue"
DISCORD_HOOK = "https://discord.com/api/webhooks/987654321/SECRETdiscordTOKENvalue"
SMS_URL = "bulksms://relayuser:SECRETsmspass@15551234567"
SECRETS = ("SECRETA", "SECRETB", "SECRETtoken", "SECRETdiscord", "SECRETsmspass")


def event(**changes: Any) -> dict[str, Any]:
    return {**EVENT, **changes}


# ------------------------------------------------------------------ the internet, faked


def _response(request: requests.PreparedRequest, status: int, body: bytes,
              headers: dict[str, str]) -> requests.Response:
    r = requests.Response()
    r.status_code, r._content, r.url, r.request = status, body, request.url or "", request
    r.reason = HTTPStatus(status).phrase
    r.headers = CaseInsensitiveDict(headers)
    r.encoding = "utf-8"
    return r


# What each service answers to a good request (Slack's incoming webhooks say `ok`).
SERVICE_ANSWERS: dict[str, tuple[int, bytes, dict[str, str]]] = {
    "hooks.slack.com": (200, b"ok", {"Content-Type": "text/html"}),
    "discord.com": (204, b"", {}),
    "api.bulksms.com": (201, json.dumps([{"id": "4711", "type": "SENT", "to": "+15551234567",
                                          "encoding": "UNICODE", "numberOfParts": 1}]).encode(),
                        {"Content-Type": "application/json"}),
}


@dataclass
class Internet:
    """Requests that left for a public host, and the answers they get."""

    sent: list[requests.PreparedRequest] = field(default_factory=list)
    # host -> answers consumed in order: (status, body) or an exception to raise
    script: dict[str, list[Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def to(self, host: str) -> list[requests.PreparedRequest]:
        return [r for r in self.sent if urlsplit(r.url or "").hostname == host]

    def answer(self, request: requests.PreparedRequest) -> requests.Response:
        host = urlsplit(request.url or "").hostname or ""
        with self.lock:
            self.sent.append(request)
            planned = self.script.get(host)
            action = planned.pop(0) if planned else None
        if isinstance(action, Exception):
            raise action
        if action is not None:
            return _response(request, action[0], action[1], {"Content-Type": "text/plain"})
        status, body, headers = SERVICE_ANSWERS[host]
        return _response(request, status, body, headers)


@pytest.fixture
def internet(monkeypatch: pytest.MonkeyPatch) -> Internet:
    net = Internet()
    real_send = HTTPAdapter.send

    def send(adapter: HTTPAdapter, request: requests.PreparedRequest, *args: Any,
             **kwargs: Any) -> requests.Response:
        if urlsplit(request.url or "").hostname == "127.0.0.1":
            return real_send(adapter, request, *args, **kwargs)  # local sinks are real
        return net.answer(request)

    monkeypatch.setattr(HTTPAdapter, "send", send)
    return net


def body_of(request: requests.PreparedRequest) -> Any:
    raw = request.body
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw or "null")


# ------------------------------------------------------------------ SMTP


def text_of(msg: email.message.EmailMessage) -> str:
    part = msg.get_body(("plain",))
    assert part is not None
    return part.get_content().replace("\r\n", "\n").strip()


# ------------------------------------------------------------------ helpers


def db_rows(tmp_path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(tmp_path / "relay.db")) as conn:
        return conn.execute(sql, args).fetchall()


def finished(tmp_path: Path, expected: int) -> Callable[[], bool]:
    def check() -> bool:
        states = db_rows(tmp_path, "SELECT state FROM jobs")
        return len(states) == expected and all(s in ("sent", "dead") for s, in states)
    return check


def receiver(name: str, url: str, route_extra: str = "", match: str = "{}") -> str:
    """One receiver and a route sending every known event to it."""
    return f"""
    receivers:
      - name: {name}
        urls: ["{url}"]
    routes:
      - name: to-{name}
        match: {match}
        receivers: [{name}]
{route_extra}
    """


async def send_one(running: Any, tmp_path: Path, extra: str, payload: dict[str, Any],
                   **values: Any) -> Any:
    r = await running(extra, **values)
    status, _, _ = await r.post(payload)
    assert status == 202
    await wait_for(finished(tmp_path, 1), message="the job to finish")
    assert db_rows(tmp_path, "SELECT state FROM jobs") == [("sent",)]
    return r


# ------------------------------------------------------------------ json:// and mailto://


async def test_json_sink_gets_exact_title_body_and_type(running, sink, tmp_path):
    await send_one(running, tmp_path, receiver("hook", sink.url("hook")),
                   event(status="delivered"))

    [msg] = sink.messages("hook")
    assert msg["title"] == "Delivery abc123: Delivered"
    assert msg["message"] == DEFAULT_BODY.replace("In transit", "Delivered")
    assert msg["type"] == "success"


async def test_route_template_and_type_reach_the_json_sink(running, sink, tmp_path):
    route = """        type: failure
        title: "Parcel {{ delivery_id }} is {{ status | human_status | lower }}"
        body: "At {{ timestamp | localtime('Europe/Berlin') }} ({{ event }})"
"""
    await send_one(running, tmp_path, receiver("hook", sink.url("hook"), route),
                   event(status="out_for_delivery"))

    [msg] = sink.messages("hook")
    assert (msg["title"], msg["message"], msg["type"]) == (
        "Parcel abc123 is out for delivery", "At 2024-09-14 16:30 CEST (delivery.updated)",
        "failure")


async def test_a_body_that_renders_empty_is_sent_as_the_title_not_retried_for_hours(
        running, sink, tmp_path):
    """Apprise refuses an empty body, so every attempt would fail until the job went dead:
    the alert goes out with its title as the body instead (on the first attempt)."""
    route = """        title: "Parcel {{ delivery_id }} needs a look"
        body: "{{ note }}"
"""
    await send_one(running, tmp_path, receiver("hook", sink.url("hook"), route), EVENT)
    [msg] = sink.messages("hook")
    assert (msg["title"], msg["message"]) == ("Parcel abc123 needs a look",
                                              "Parcel abc123 needs a look")
    assert db_rows(tmp_path, "SELECT attempts FROM jobs") == [(1,)]


async def test_a_template_that_renders_nothing_falls_back_to_the_built_in_one(
        running, sink, tmp_path, caplog):
    """Title and body both empty on this event: no channel can send that, so it is a
    template failure like any other: the built-in template renders the alert, the log says
    why, and nothing is lost."""
    route = """        title: "{{ missing }}"
        body: "{{ also_missing }}"
"""
    await send_one(running, tmp_path, receiver("hook", sink.url("hook"), route), EVENT)
    [msg] = sink.messages("hook")
    assert (msg["title"], msg["message"]) == (DEFAULT_TITLE, DEFAULT_BODY)
    assert db_rows(tmp_path, "SELECT attempts FROM jobs") == [(1,)]
    assert "template for route to-hook failed (the title and the body both rendered empty);" \
        " using the built-in one" in caplog.text


@pytest.mark.parametrize("processes", [1, 2], ids=["in the relay process", "send processes"])
async def test_a_job_stored_empty_goes_dead_at_once_and_spares_the_circuit(
        running, sink, tmp_path, processes):
    """A job whose title and body are both empty (stored by a relay before 0.2.0, whose
    templates could render nothing): Apprise refuses it, so every retry would fail alike.
    One attempt, a dead letter that says why, and the receiver's circuit (one failure opens
    it here) stays closed: the message is at fault, not the receiver."""
    r = await running(receiver("hook", sink.url("hook")),
                      sending=f"processes: {processes}\n  retry: {{schedule: [0, 0.1, 0.2],"
                              " jitter: 0}\n  circuit: {failures: 1, cooldown: 1h}")
    if processes > 1:  # not the relay process's own fallback: the send process sends it
        await wait_for(lambda: r.relay.senders.ready_count() == 1,
                       message="the send process to load its config")
    empty = Notification(receiver="hook", url_index=0, route="to-hook",
                         message=Message("", "", "info", "text"))
    await r.relay.store.accept(event_from_dict(EVENT), "stored-empty", [empty],
                               now=time.time())
    await wait_for(finished(tmp_path, 1), message="the job to finish")
    assert db_rows(tmp_path, "SELECT state, attempts, last_error FROM jobs") == [
        ("dead", 1, "the message rendered empty (title and body): nothing to send")]
    assert db_rows(tmp_path, "SELECT outcome FROM attempts") == [("failed",)]
    assert sink.hits == []
    [state] = [s for s in await r.relay.store.receivers() if s.name == "hook"]
    assert (state.failures, state.open_until) == (0, 0)
    # a closed circuit: the next notification to the receiver goes out at once
    assert (await r.post(event(delivery_id="xyz789")))[0] == 202
    [msg] = await wait_for(lambda: sink.messages("hook"), message="the next notification")
    assert msg["title"] == "Delivery xyz789: In transit"


async def test_mailto_delivers_subject_and_body_to_smtp_server(running, smtp, tmp_path):  # noqa: F811
    await send_one(running, tmp_path, receiver("mail", smtp.url()), EVENT)

    [envelope] = smtp.envelopes
    assert envelope.mail_from == "relay@example.com"
    assert envelope.rcpt_tos == ["ops@example.com"]
    [msg] = smtp.messages()
    assert msg["Subject"] == DEFAULT_TITLE
    assert msg["To"] == "ops@example.com"
    assert text_of(msg) == DEFAULT_BODY


async def test_second_email_is_not_held_by_apprises_throttle(running, smtp, tmp_path):  # noqa: F811
    r = await running(receiver("mail", smtp.url()))
    assert (await r.post(event(delivery_id="first")))[0] == 202
    await wait_for(lambda: len(smtp.envelopes) == 1, message="the first email")

    assert (await r.post(event(delivery_id="second")))[0] == 202

    # Apprise's own throttle would hold this one ~5.5 s on the cached plugin object.
    await wait_for(lambda: len(smtp.envelopes) == 2, timeout=2.0, message="the second email")
    assert [m["Subject"] for m in smtp.messages()] == [
        "Delivery first: In transit", "Delivery second: In transit"]


# ------------------------------------------------------------------ Slack, Discord, SMS


def slack_payload(title: str, text: str, color: str = "#3AA3E3", kind: str = "info",
                  mrkdwn: bool = False) -> dict[str, Any]:
    icon = f"{APPRISE_IMG}/apprise-{kind}-72x72.png"
    return {"mrkdwn": mrkdwn, "icon_url": icon,
            "attachments": [{"title": title, "text": text, "color": color,
                             "footer_icon": icon, "footer": "Apprise"}]}


async def test_slack_webhook_gets_exact_url_and_json(running, internet, tmp_path):
    await send_one(running, tmp_path, receiver("slack", SLACK_URL), EVENT)

    [req] = internet.to("hooks.slack.com")
    assert (req.method, req.url) == ("POST", SLACK_HOOK)
    assert req.headers["Content-Type"].startswith("application/json")
    sent = body_of(req)
    assert isinstance(sent["attachments"][0].pop("ts"), float)
    assert sent == slack_payload(DEFAULT_TITLE, DEFAULT_BODY)


@pytest.mark.parametrize("fmt", ["text", "markdown"])
async def test_channel_mention_in_payload_is_not_live_in_slack(running, internet, tmp_path, fmt):
    route = f"""        format: {fmt}
        title: "Delivery {{{{ delivery_id }}}}"
        body: "Note: {{{{ note }}}}"
"""
    await send_one(running, tmp_path, receiver("slack", SLACK_URL, route),
                   event(note="<!channel> <!here> <!subteam^S1> call me"))

    [req] = internet.to("hooks.slack.com")
    text = body_of(req)["attachments"][0]["text"]
    for mention in ("<!channel>", "<!here>", "<!subteam"):
        assert mention not in text
    assert "call me" in text


async def test_discord_webhook_gets_exact_url_and_json(running, internet, tmp_path):
    await send_one(running, tmp_path, receiver("discord", DISCORD_URL), EVENT)

    [req] = internet.to("discord.com")
    assert (req.method, req.url) == ("POST", DISCORD_HOOK)
    assert body_of(req) == {
        "tts": False, "wait": True,
        "avatar_url": f"{APPRISE_IMG}/apprise-info-256x256.png",
        "content": f"{DEFAULT_TITLE}\r\n{DEFAULT_BODY}"}


async def test_everyone_mention_in_payload_is_not_live_in_discord(running, internet, tmp_path):
    route = """        title: "Delivery {{ delivery_id }}"
        body: "Note: {{ note }}"
"""
    await send_one(running, tmp_path, receiver("discord", DISCORD_URL, route),
                   event(note="@everyone @here <@&1234> look"))

    [req] = internet.to("discord.com")
    content = body_of(req)["content"]
    assert content == "Delivery abc123\r\nNote: @\u200beveryone @\u200bhere <@\u200b&1234> look"
    assert "allowed_mentions" not in body_of(req)  # the escaping is what protects us


async def test_long_body_is_cut_to_discords_2000_chars_with_an_ellipsis(
        running, internet, tmp_path):
    route = """        title: "Delivery {{ delivery_id }}"
        body: "{{ note }}"
"""
    await send_one(running, tmp_path, receiver("discord", DISCORD_URL, route),
                   event(note="x" * 5000))

    [req] = internet.to("discord.com")
    content = body_of(req)["content"]
    assert len(content) <= 2000
    assert content.startswith("Delivery abc123\r\nxxx")
    assert content.endswith("x…")


async def test_sms_gateway_gets_exact_url_auth_and_json(running, internet, tmp_path):
    await send_one(running, tmp_path, receiver("sms", SMS_URL), EVENT)

    [req] = internet.to("api.bulksms.com")
    assert (req.method, req.url) == ("POST", "https://api.bulksms.com/v1/messages")
    assert req.headers["Authorization"] == "Basic " + base64.b64encode(
        b"relayuser:SECRETsmspass").decode()
    assert body_of(req) == {"to": "+15551234567", "body": f"{DEFAULT_TITLE}\r\n{DEFAULT_BODY}",
                            "routingGroup": "STANDARD", "encoding": "UNICODE",
                            "deliveryReports": "ERRORS"}


async def test_long_sms_is_cut_to_one_160_char_message(running, internet, tmp_path):
    route = """        title: "Delivery {{ delivery_id }}"
        body: "{{ note }}"
"""
    await send_one(running, tmp_path, receiver("sms", SMS_URL, route), event(note="y" * 500))

    [req] = internet.to("api.bulksms.com")
    text = body_of(req)["body"]
    assert len(text) <= 160
    assert text.startswith("Delivery abc123\r\nyyy") and text.endswith("y…")


# ------------------------------------------------------------------ concurrency


@dataclass
class GatedSink:
    """Holds every request until the gate opens; counts how many are in flight at once."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    inflight: int = 0
    peak: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.inflight += 1
        self.peak = max(self.peak, self.inflight)
        try:
            await self.gate.wait()
        finally:
            self.inflight -= 1
        self.received.append(body)
        return web.Response(text="ok")


@pytest.fixture
async def gated_sink() -> AsyncIterator[GatedSink]:
    s = GatedSink()
    server = await serve_posts(s.handle)
    s.port = server.port or 0
    yield s
    s.gate.set()
    await server.close()


async def test_twenty_jobs_at_concurrency_four_each_arrive_exactly_once(
        running, gated_sink, tmp_path):
    url = f"json://127.0.0.1:{gated_sink.port}/hook"
    r = await running(receiver("hook", url).replace(
        f'urls: ["{url}"]', f'urls: ["{url}"]\n        concurrency: 4'))
    ids = [f"d{i:02d}" for i in range(20)]
    answers = await asyncio.gather(*(r.post(event(delivery_id=i)) for i in ids))
    assert [a[0] for a in answers] == [202] * 20

    await wait_for(lambda: gated_sink.inflight == 4, message="four sends in flight")
    gated_sink.gate.set()
    await wait_for(finished(tmp_path, 20), message="all twenty jobs")

    titles = sorted(m["title"] for m in gated_sink.received)
    assert titles == [f"Delivery {i}: In transit" for i in ids]
    assert gated_sink.peak == 4
    assert db_rows(tmp_path, "SELECT count(*) FROM jobs WHERE state='sent' AND attempts=1") \
        == [(20,)]


# ------------------------------------------------------------------ secrets


async def test_no_apprise_url_secret_in_logs_or_dead_letters(running, internet, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    internet.script["hooks.slack.com"] = [
        RuntimeError(f"adapter broke while posting to {SLACK_HOOK}"), *[(500, b"internal_error")] * 2]
    internet.script["discord.com"] = [requests.ConnectionError(
        "HTTPSConnectionPool(host='discord.com', port=443): Max retries exceeded with url:"
        " /api/webhooks/987654321/SECRETdiscordTOKENvalue (Caused by NewConnectionError("
        "'Failed to establish a new connection: [Errno 111] Connection refused'))")] * 3
    internet.script["api.bulksms.com"] = [(401, b'{"detail": "bad credentials"}')]
    extra = f"""
    receivers:
      - name: team
        urls: ["{SLACK_URL}", "{DISCORD_URL}", "{SMS_URL}"]
    default_receiver: team
    """
    # Eight failures of one receiver (the 401 counts, it is the receiver's own fault): past
    # the default circuit of 5 the last retries would wait out its cooldown.
    r = await running(extra, sending=SENDING + "\n  circuit: {failures: 10}")
    assert (await r.post(EVENT))[0] == 202
    await wait_for(finished(tmp_path, 3), message="all three jobs to die")

    dead = db_rows(tmp_path, "SELECT url_index, state, attempts, last_error FROM jobs"
                             " ORDER BY url_index")
    assert [row[:3] for row in dead] == [(0, "dead", 3), (1, "dead", 3), (2, "dead", 1)]
    # Apprise's own retry is off: one HTTP request per attempt of ours.
    assert [len(internet.to(h)) for h in ("hooks.slack.com", "discord.com", "api.bulksms.com")] \
        == [3, 3, 1]
    async with r.session.get(r.url + "/-/dead",
                             headers={"Authorization": "Bearer admin-secret"}) as resp:
        api = await resp.text()
    errors = [row[3] for row in dead]
    errors += [e for e, in db_rows(tmp_path, "SELECT error FROM attempts")]
    assert all(errors), errors
    formatter = TextFormatter()
    output = "\n".join(formatter.format(rec) for rec in caplog.records
                       if rec.name.startswith("relay"))
    assert "dead" in output
    for secret in SECRETS:
        for where, text in (("log", output), ("dead-letter API", api),
                            ("dead-letter errors", "\n".join(errors))):
            assert secret not in text, f"{secret} leaked into the {where}"


async def test_sends_from_one_thread_reuse_their_http_connection(running, sink):
    r = await running(f"""
    receivers:
      - name: hook
        urls: ["{sink.url('keep')}"]
    default_receiver: hook
    """, sending="concurrency: 1")
    for n in range(3):
        await r.post({"event": "delivery.updated", "delivery_id": f"k{n}", "status": "x",
                      "timestamp": "2024-09-14T14:30:00Z"})
        await wait_for(lambda n=n: len(sink.messages("keep")) == n + 1)
    ports = {m["peer_port"] for m in sink.messages("keep")}
    assert len(ports) == 1  # one kept-alive connection, not a new one per send
