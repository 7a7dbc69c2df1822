"""`send` against a real relay subprocess, end to end to a json:// sink."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from relay.cli import main
from tests.conftest import (
    free_port,
    wait_for,
)
from tests.forkserver import run_relay
from tests.test_reload import TO_HOOK, serving

ROUTES = TO_HOOK + """\
    title: "{{ event }} {{ delivery_id }} {{ status }}"
    body: "tier={{ customer.tier }} items={{ items }}"
"""


async def run_send(*args: str) -> tuple[int, str, str]:
    done = await asyncio.to_thread(run_relay, ["send", *args], capture_output=True, text=True,
                                   timeout=30)
    return done.returncode, done.stdout, done.stderr


@pytest.fixture
async def relay_with_sink(tmp_path: Path, sink) -> AsyncIterator[tuple[Path, int]]:
    """`kourier-relay serve` in a subprocess, routing every delivery event to the sink."""
    async with serving(tmp_path, ROUTES, sink.url("hook")) as (cfg, port, _):
        yield cfg, port


async def test_send_takes_url_and_token_from_config_and_reaches_the_sink(relay_with_sink, sink):
    cfg, port = relay_with_sink
    code, out, err = await run_send("-c", str(cfg), "delivery.updated", "--delivery-id", "D-42",
                                    "--status", "delivered", "--field", "customer.tier=gold",
                                    "--field", "items=3")
    post, body, answer = out.splitlines()
    assert post == f"POST http://127.0.0.1:{port}/webhook"
    sent = json.loads(body)
    assert sent.pop("timestamp").endswith("Z")
    assert sent == {"event": "delivery.updated", "delivery_id": "D-42", "status": "delivered",
                    "customer": {"tier": "gold"}, "items": 3}
    assert re.fullmatch(r'202 Accepted \{"id": \d+, "status": "accepted", "notifications": 1\}',
                        answer)
    assert (code, err) == (0, "")
    [msg] = await wait_for(lambda: sink.messages("hook"), message="the notification")
    assert (msg["title"], msg["message"]) == ("delivery.updated D-42 delivered",
                                             "tier=gold items=3")


async def test_non_2xx_answer_is_printed_and_exits_1(relay_with_sink, sink):
    cfg, _ = relay_with_sink
    code, out, _ = await run_send("-c", str(cfg), "--token", "wrong")
    assert out.splitlines()[-1] == ('401 Unauthorized {"error": "Unauthorized", "details":'
                                    ' "missing or invalid bearer token"}')
    assert code == 1
    code, out, _ = await run_send("-c", str(cfg), "--field", "timestamp=yesterday")
    assert out.splitlines()[-1] == (
        '400 Bad Request {"error": "Invalid request data", "details": "timestamp must be'
        ' ISO 8601, e.g. 2024-09-14T14:30:00Z"}')
    assert code == 1
    assert sink.received == []


async def test_unreachable_relay_is_one_line_and_exits_1():
    url = f"http://127.0.0.1:{free_port()}/webhook"
    code, _, err = await run_send("--url", url, "--token", "t", "--timeout", "0.2")
    assert err == f"error: cannot reach {url}: [Errno 111] Connection refused (waited 0.2s)\n"
    assert code == 1


def test_password_in_the_url_is_not_printed():
    url = f"http://kourier:s3cret@127.0.0.1:{free_port()}/webhook"
    result = CliRunner().invoke(main, ["send", "--url", url, "--token", "t"])
    assert "s3cret" not in result.output
    assert result.stdout.startswith("POST http://kourier:***@127.0.0.1:")
    assert result.exit_code == 1


@pytest.mark.parametrize("fields, expected", [
    (["a.b=1"], {"a": {"b": 1}}),
    (["a.b.c=x", "a.d=true"], {"a": {"b": {"c": "x"}, "d": True}}),
    (['tags=["x", "y"]', "note=two words"], {"tags": ["x", "y"], "note": "two words"}),
])
def test_field_values_nest_and_parse_as_json(fields, expected):
    args = [a for f in fields for a in ("--field", f)]
    result = CliRunner().invoke(main, ["send", "--url", f"http://127.0.0.1:{free_port()}/",
                                       "--token", "t", "--timeout", "0", "delivery.created",
                                       *args])
    body = json.loads(result.stdout.splitlines()[1])
    assert {k: body[k] for k in expected} == expected


def test_field_that_is_already_a_value_cannot_nest():
    result = CliRunner().invoke(main, ["send", "--url", "http://127.0.0.1:9/", "--token", "t",
                                       "--field", "a=1", "--field", "a.b=2"])
    assert "a.b: a is already a value, not an object" in result.stderr
    assert result.exit_code == 2



@pytest.mark.parametrize("status", [200, 502])
async def test_an_answer_that_is_not_a_relays_is_printed_cut_and_read_no_further(status):
    # `--url` may name anything (a proxy's error page, a file server): `send` read the whole
    # answer into memory to print it. It reads and prints the first 4096 bytes now.
    import aiohttp
    from aiohttp import web

    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=status)
        await response.prepare(request)
        try:
            for _ in range(1000):  # 64 MB if it were all read; the client stops long before
                await response.write(b"y" * 65536)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass
        return response

    app = web.Application()
    app.router.add_post("/webhook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        code, out, err = await run_send("--url", f"http://127.0.0.1:{port}/webhook", "--token", "t")
    finally:
        await runner.cleanup()
    answer = out.splitlines()[-1]
    reason = "OK" if status == 200 else "Bad Gateway"
    assert answer == f"{status} {reason} {'y' * 4096} … (cut at 4096 bytes)"
    assert (code, err) == (0 if status == 200 else 1, "")
