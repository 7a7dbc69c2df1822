"""The answers the README and docs/webhook.md show for the webhook are the ones a relay gives."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import AsyncIterator

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from relay.app import Relay
from relay.logs import JSONFormatter
from tests.conftest import ROOT, free_port, relay_log_lines, wait_for
from tests.test_examples import console_examples

README = (ROOT / "README.md").read_text()
WEBHOOK = (ROOT / "docs" / "webhook.md").read_text()


def quick_start_request() -> tuple[str, bytes]:
    """The token and body of the quick start's curl command."""
    curl = re.search(r"```sh\n(curl -X POST .*?)```", README, re.S)
    assert curl, "README.md lost the quick start's curl command"
    token = re.search(r"Bearer ([^']+)'", curl.group(1))
    body = re.search(r"-d '([^']+)'", curl.group(1))
    assert token and body
    return token.group(1), body.group(1).encode()


def shown_answer(sentence: str) -> tuple[int, dict[str, object]]:
    found = re.search(re.escape(sentence) + r" `(\d{3}) (\{.*?\})`", " ".join(README.split()))
    assert found, f"README.md no longer says {sentence!r} `<status> <body>`"
    return int(found.group(1)), json.loads(found.group(2))


def table_answer(situation: str) -> tuple[int, dict[str, object]]:
    row = re.search(rf"^\| {re.escape(situation)} \| (\d{{3}}) \| `(\{{.*?\}})` \|$", WEBHOOK,
                    re.M)
    assert row, f"docs/webhook.md's answers table lost the row {situation!r}"
    return int(row.group(1)), json.loads(row.group(2))


@pytest.fixture
async def example_relay(tmp_path) -> AsyncIterator[tuple[ClientSession, str]]:
    """The relay on config.example.yaml, as `make run` starts it (no variables set)."""
    shutil.copy(ROOT / "config.example.yaml", tmp_path)
    relay = Relay(str(tmp_path / "config.example.yaml"), env={})
    server = TestServer(relay.web_app(), host="127.0.0.1", port=free_port())
    await server.start_server()
    async with ClientSession() as session:
        yield session, f"http://127.0.0.1:{server.port}/webhook"
    await server.close()


async def post(session: ClientSession, url: str, token: str, body: bytes
               ) -> tuple[int, dict[str, object]]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with session.post(url, data=body, headers=headers) as answer:
        return answer.status, await answer.json()


async def test_the_quick_start_answers_are_the_real_ones(example_relay):
    session, url = example_relay
    token, body = quick_start_request()
    assert await post(session, url, token, body) == shown_answer("The relay answers")
    assert await post(session, url, token, body) == shown_answer(
        "Send the same request again and it answers")


@pytest.mark.parametrize("situation, body", [
    ("JSON, but not an object (an array, a string)", b"[1, 2]"),
    ("JSON, but not an object (an array, a string)", b'"delivery.updated"'),
])
async def test_the_webhook_table_shows_the_real_error(example_relay, situation, body):
    session, url = example_relay
    token, _ = quick_start_request()
    assert await post(session, url, token, body) == table_answer(situation)


def send_examples() -> list[tuple[str, bytes, str]]:
    """(token, body, answer line) of every `$ kourier-relay send` in docs/commands.md."""
    found = []
    for line, output in console_examples("kourier-relay send "):
        token = re.search(r"--token (\S+)", line)
        post, body, answer = output
        assert post == "POST http://127.0.0.1:8080/webhook", post
        found.append((token.group(1) if token else "change-me", body.encode(), answer))
    return found


async def test_the_send_examples_show_the_answers_a_relay_on_the_example_config_gives(
        example_relay):
    """In the order shown, on a fresh store: the ids and notification counts are real."""
    session, url = example_relay
    examples = send_examples()
    assert len(examples) >= 2
    for token, body, shown in examples:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        async with session.post(url, data=body, headers=headers) as answer:
            got = f"{answer.status} {answer.reason} {json.dumps(await answer.json())}"
        assert got == shown


async def test_the_json_log_lines_in_the_operations_page_are_the_ones_a_relay_writes(
        example_relay):
    """docs/operations.md: the keys in their order and every value shown (`…`: any)."""
    block = (ROOT / "docs" / "operations.md").read_text().split("`--log-format json` writes", 1)[1]
    shown = [json.loads(line) for line in re.search(r"```\n(.*?)```", block, re.S)
             .group(1).splitlines()]
    with relay_log_lines(JSONFormatter()) as out:
        session, url = example_relay
        token, _ = quick_start_request()
        status, _ = await post(session, url, token,
                               (ROOT / "examples" / "events" / "cancelled.json").read_bytes())
        assert status == 202

        def written() -> list[dict[str, object]]:
            lines = [json.loads(line) for line in out.getvalue().splitlines()]
            return [line for line in lines if line["message"] in ("accepted", "sent")]
        lines = await wait_for(lambda: len(written()) == 2 and written(), message="sent")
    assert [list(line) for line in lines] == [list(line) for line in shown]
    for line, want in zip(lines, shown, strict=True):
        assert {k: v for k, v in line.items() if want[k] != "…"} == \
            {k: v for k, v in want.items() if v != "…"}
