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
from tests.conftest import ROOT, free_port

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
