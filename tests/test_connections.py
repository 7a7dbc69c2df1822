"""No connection is held forever: header, body and keep-alive timeouts; a connection cap
from the open-files limit; accept errors logged once per interval. Real sockets only."""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from relay.config import ServerConfig, loads
from relay.errors import ConfigError
from tests import guarded as guarded_module
from tests.conftest import (
    BASE_CONFIG,
    DEFAULTS,
    TOKEN,
    free_port,
    wait_for_sync,
    wait_healthy,
    write_config,
)
from tests.forkserver import RelayProcess
from tests.guarded import event, request, response, until_eof

guarded = guarded_module.guarded  # the fixture

SHORT = ("header_timeout: 0.3s", "body_timeout: 0.3s", "keepalive_timeout: 0.3s")


def test_timeouts_have_bounded_defaults():
    s = ServerConfig()
    assert (s.header_timeout, s.body_timeout, s.keepalive_timeout) == (10.0, 30.0, 75.0)
    assert s.max_connections == 0  # derived from the open-files limit


def test_a_timeout_of_zero_is_refused_with_its_place():
    text = BASE_CONFIG.replace("{server}", "header_timeout: 0")
    for key, value in {**DEFAULTS, "port": 8080, "db": "x.db"}.items():
        text = text.replace("{" + key + "}", str(value))
    with pytest.raises(ConfigError) as e:
        loads(text, "config.yaml", {})
    assert str(e.value) == "config.yaml:5: server.header_timeout: must be more than 0"


async def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(guarded):
    g = await guarded(*SHORT[:1], "keepalive_timeout: 60s")
    reader, writer = await g.connect()
    assert await until_eof(reader) == b""  # closed, silently: nothing was asked
    writer.close()


async def test_a_client_still_sending_after_its_408_reads_the_408_not_a_reset(guarded):
    """A lingering close: the 408 goes out with a half-close, and bytes the client sends
    after it are read and dropped. Closing at once made the kernel answer them with a
    reset, which threw the unread 408 away: the client saw 'connection reset' instead."""
    g = await guarded(*SHORT[:1], "keepalive_timeout: 60s")

    def client() -> bytes:
        with socket.create_connection(("127.0.0.1", g.port), timeout=10) as sock:
            sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: relay\r\nX-Slow: ")
            assert sock.recv(1, socket.MSG_PEEK)  # the 408 has arrived, unread
            for _ in range(3):  # the client has not noticed yet: it keeps sending
                sock.sendall(b"more header text ")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            return answer

    status, headers, body = response(await asyncio.to_thread(client))
    assert status == 408 and headers["connection"] == "close"
    assert body["error"] == "Request timeout"


async def test_headers_that_trickle_in_get_408_and_the_connection_is_closed(guarded):
    """Slowloris: one byte every 20 ms never finishes the headers; the deadline holds."""
    g = await guarded(*SHORT[:1], "keepalive_timeout: 60s")
    reader, writer = await g.connect()
    slow = request(headers={"X-Padding": "p" * 5000})
    answer = bytearray()

    async def drip() -> None:
        for i in range(len(slow)):
            if answer or writer.is_closing() or reader.at_eof():
                return
            writer.write(slow[i:i + 1])
            await asyncio.sleep(0.02)  # the attacker's pace, not synchronisation

    async def read_answer() -> bytes:
        """Chunk by chunk: a byte dripped after the relay closed makes its kernel reset the
        connection, and a reset read loses what was buffered (but not what was read)."""
        try:
            while chunk := await reader.read(65536):
                answer.extend(chunk)
        except ConnectionResetError:
            if not answer:
                raise
        return bytes(answer)

    dripping = asyncio.create_task(drip())
    raw = await asyncio.wait_for(read_answer(), guarded_module.EOF_WITHIN)
    dripping.cancel()
    writer.close()
    status, headers, body = response(raw)
    assert status == 408 and headers["content-type"] == "application/json"
    assert set(body) == {"error", "details"}


async def test_a_body_that_stops_half_way_gets_408_and_the_connection_is_closed(guarded):
    g = await guarded(*SHORT)
    reader, writer = await g.connect()
    whole = event()
    writer.write(request(body=whole, close=False)[: -len(whole) // 2])
    raw = await until_eof(reader)
    writer.close()
    status, _, body = response(raw)
    assert status == 408 and body["error"] == "Request timeout"


async def test_a_chunked_body_without_its_last_chunk_gets_408(guarded):
    g = await guarded(*SHORT)
    reader, writer = await g.connect()
    body = event()
    head = request(headers={"Transfer-Encoding": "chunked"}, close=False)
    writer.write(head + b"%x\r\n%s\r\n" % (len(body), body))  # and never "0\r\n\r\n"
    raw = await until_eof(reader)
    writer.close()
    status, _, answer = response(raw)
    assert status == 408 and answer["error"] == "Request timeout"


async def test_an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout(guarded):
    g = await guarded("header_timeout: 60s", "keepalive_timeout: 0.3s")
    reader, writer = await g.connect()
    writer.write(request("GET", "/healthz", close=False))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    rest = await until_eof(reader)  # the body, then EOF once idle for 0.3 s
    assert json.loads(rest) == {"status": "ok"}
    writer.close()


async def test_the_header_timeout_applies_to_each_request_on_a_kept_alive_connection(guarded):
    g = await guarded("header_timeout: 0.3s", "keepalive_timeout: 60s")
    reader, writer = await g.connect()
    writer.write(request("GET", "/healthz", close=False))
    await asyncio.wait_for(reader.readuntil(b'"ok"}'), 5)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n")  # the second one stalls
    status, _, body = response(await until_eof(reader))
    writer.close()
    assert status == 408 and body["error"] == "Request timeout"


async def test_a_real_request_is_unaffected_by_the_guards(guarded):
    g = await guarded(*SHORT)
    status, headers, body = response(await g.exchange(request(body=event())))
    assert status == 202 and body["status"] == "accepted"


# ---------------------------------------------------------------- open files


def _limited_relay(tmp_path: Path, nofile: int, server_lines: str = "",
                   ) -> tuple[RelayProcess, int, Path]:
    port = free_port()
    values = {**DEFAULTS, "port": port, "db": tmp_path / "relay.db", "server": server_lines,
              "sending": "concurrency: 2"}
    cfg = write_config(tmp_path / "config.yaml", BASE_CONFIG, **values)
    log = tmp_path / "relay.log"
    with open(log, "ab") as out:  # the limit is set in the child, before the relay starts
        proc = RelayProcess(["serve", "-c", str(cfg)], stdout=out, stderr=subprocess.STDOUT,
                            cwd=tmp_path, limits={resource.RLIMIT_NOFILE: (nofile, nofile)})
    return proc, port, log


def _post_event(port: int) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/webhook", data=event(),
                                 headers={"Authorization": f"Bearer {TOKEN}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return int(r.status)


def _flood(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        socks.append(s)
    return socks


def test_a_flood_of_idle_connections_past_the_open_files_limit_leaves_requests_served(tmp_path):
    proc, port, log = _limited_relay(tmp_path, 256)
    socks: list[socket.socket] = []
    try:
        wait_healthy(port)
        socks = _flood(port, 400)  # more connections than the relay may have open files
        assert _post_event(port) == 202
        text = log.read_text()
        assert "Traceback" not in text and "Too many open files" not in text
        assert "connection cap" in text
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        proc.wait(10)


def test_accept_errors_are_logged_once_per_interval_not_per_attempt(tmp_path):
    """Forced past the limit (max_connections above it), accept() fails with EMFILE for
    every queued connection; the log gets one line, and serving resumes afterwards."""
    proc, port, log = _limited_relay(tmp_path, 128, "max_connections: 5000")
    socks: list[socket.socket] = []
    try:
        wait_healthy(port)
        socks = _flood(port, 300)
        wait_for_sync(lambda: "cannot accept connections" in log.read_text(),
                      message="the accept error in the log")
        for s in socks:
            s.close()
        socks = []
        assert _post_event(port) == 202
        text = log.read_text()
        assert text.count("cannot accept connections") == 1, text[-2000:]
        assert "Traceback" not in text and "socket.accept() out of system" not in text
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        proc.wait(10)


def test_the_soft_open_files_limit_is_raised_to_the_hard_one_and_the_cap_follows():
    """Containers often start with soft 1024 under a far higher hard limit."""
    script = ("import resource; from relay import server\n"
              "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 1024))\n"
              "server.raise_open_files_limit()\n"
              "print(resource.getrlimit(resource.RLIMIT_NOFILE), server.open_files_cap(16))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["(1024,", "1024)", str(1024 - 64 - 64 - 4 * 16)]


async def test_a_status_page_form_that_stops_half_way_gets_408(guarded):
    """The login form is read under the same body timeout as a webhook."""
    g = await guarded(*SHORT)
    reader, writer = await g.connect()
    form = b"token=admin-secret&next=%2Fui%2F"
    writer.write(request(path="/ui/login", body=form, token=None, close=False,
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
                 [: -len(form) // 2])
    raw = await until_eof(reader)
    writer.close()
    status, _, body = response(raw)
    assert (status, body) == (408, {"error": "Request timeout",
                                    "details": "the form did not arrive within 0.3s"})
