"""Property: whatever arrives at the webhook, the answer is 200/202 or a JSON 4xx, never a
5xx, and the relay keeps serving. A real relay (served as `serve` serves it) on a free
port in a thread; every example is a real request over a real socket."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay import server
from relay.app import Relay
from tests.conftest import BASE_CONFIG, DEFAULTS, free_port, write_config
from tests.guarded import request, response

# Deterministic in CI (the same examples every run) and quick, well under a second per
# property. KOURIER_FUZZ_EXAMPLES=5000 hunts with fresh random examples instead.
HUNT = int(os.environ.get("KOURIER_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=HUNT or 60, deadline=None, derandomize=not HUNT, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
SEEN: list[int] = []
# The last test reads SEEN, which the others fill: `make test` runs `--dist loadfile`,
# so under xdist too the whole file runs in one worker.
ROUTES = """
receivers:
  - name: sink
    urls: ["json://127.0.0.1:9/"]
routes:
  - match: {event: "delivery.*"}
    receivers: [sink]
    title: "{{ delivery_id }}: {{ status | human_status }}"
    body: "{{ timestamp | localtime('Europe/Berlin') }} {{ payload.note }} {{ customer.name }}"
    continue: true
  - receivers: [sink]
default_receiver: sink
"""
SENDING = "retry: {schedule: [0], jitter: 0}"
SPECIAL = ["\ud800", "\udfff", "\x00", "\u202e", "\ufeff", "\n", "\\", '"', "{{", "}}",
           "@everyone", "<!channel>", "\u00e9", "\U0001f600"]

texts = st.lists(st.one_of(st.characters(), st.characters(), st.characters(),
                           st.sampled_from(SPECIAL)), max_size=12).map("".join)
# Python cannot even print an int past 4,300 digits: a placeholder becomes one in `dumps`.
huge_numbers = st.integers(4290, 4400).map(lambda n: f"\x01BIG{n}\x01")
numbers = st.one_of(st.integers(), st.floats(), huge_numbers)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, texts),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(texts, inner, max_size=4)),
    max_leaves=12)
timestamps = st.one_of(st.sampled_from(["2024-09-14T14:30:00Z", "2024-09-14T14:30:00+02:00",
                                        "2024-09-14", "9999-12-31T23:59:59-23:59",
                                        "0001-01-01T00:00:00+00:01"]),
                       st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
                       texts)
known_types = st.sampled_from(["delivery.created", "delivery.updated", "delivery.cancelled"])
# Mostly well-formed events with arbitrary strings everywhere (so the accepting path, the
# routes and the templates run), and sometimes one field replaced by any JSON value.
events = st.builds(
    lambda fields, broken, junk: {**fields, **({broken: junk} if broken else {})},
    st.fixed_dictionaries(
        {"event": st.one_of(known_types, known_types, texts),
         "delivery_id": texts.filter(str.strip), "timestamp": timestamps},
        optional={"status": texts, "note": json_values, "customer": json_values,
                  "extra": json_values}),
    st.one_of(st.none(), st.none(), st.sampled_from(["event", "delivery_id", "timestamp",
                                                     "status"])),
    json_values)
_BIG = re.compile(r'"\\u0001BIG(\d+)\\u0001"')


def dumps(value: Any) -> bytes:
    return _BIG.sub(lambda m: "9" * int(m.group(1)), json.dumps(value)).encode()


header_values = st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b)


class LiveRelay:
    def __init__(self, port: int) -> None:
        self.port = port

    def send(self, raw: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(raw)
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)

    def check(self, raw: bytes) -> None:
        answer = self.send(raw)
        status, _, body = response(answer)
        SEEN.append(status)
        if status in (200, 202):
            return
        assert 400 <= status < 500, (status, body, raw[:200])
        assert isinstance(body, dict) and set(body) == {"error", "details"}, (status, body)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRelay]:
    tmp = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    cfg = write_config(tmp / "config.yaml", BASE_CONFIG + ROUTES,
                       **{**DEFAULTS, "port": port, "db": tmp / "relay.db", "sending": SENDING})
    ready = threading.Event()
    loop_box: list[Any] = []

    async def main() -> None:
        relay = Relay(str(cfg), env={})
        runner = web.AppRunner(relay.web_app(), handle_signals=False, access_log=None)
        await runner.setup()
        await server.listen(runner, "127.0.0.1", port, lambda: relay.config)
        stop = asyncio.Event()
        loop_box.append((asyncio.get_running_loop(), stop))
        ready.set()
        await stop.wait()
        await runner.cleanup()

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    assert ready.wait(20), "relay did not start"
    yield LiveRelay(port)
    loop, stop = loop_box[0]
    loop.call_soon_threadsafe(stop.set)
    thread.join(20)


@FUZZ
@given(body=st.binary(max_size=3000))
def test_arbitrary_bytes_never_get_a_5xx(live, body):
    live.check(request(body=body))


@FUZZ
@given(value=json_values)
def test_arbitrary_json_never_gets_a_5xx(live, value):
    live.check(request(body=dumps(value)))


@FUZZ
@given(payload=events)
def test_arbitrary_values_in_every_field_never_get_a_5xx(live, payload):
    live.check(request(body=dumps(payload)))


@FUZZ
@given(ctype=header_values, encoding=header_values, rid=header_values, auth=header_values)
def test_arbitrary_header_values_never_get_a_5xx(live, ctype, encoding, rid, auth):
    body = json.dumps({"event": "delivery.created", "delivery_id": "d", "timestamp":
                       "2024-09-14T14:30:00Z"}).encode()
    raw = request(body=body, token=None)
    extra = (b"Content-Type: " + ctype + b"\r\nContent-Encoding: " + encoding
             + b"\r\nX-Request-Id: " + rid + b"\r\nAuthorization: " + auth + b"\r\n")
    head, _, rest = raw.partition(b"\r\n")
    raw = head + b"\r\n" + extra + rest.replace(b"Content-Type: application/json\r\n", b"")
    live.check(raw)


def test_the_relay_still_serves_after_the_fuzzing(live):
    status, _, body = response(live.send(request("GET", "/healthz", token=None)))
    assert status == 200 and body == {"status": "ok"}
    assert 202 in SEEN or not SEEN, "no example reached the accepting path"

