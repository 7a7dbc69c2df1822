"""`live:` and `hold:` in the config, `check`'s list of live URLs that cannot edit, and the
`route` dry run's post / edit / hold lines (the store read-only, never created)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from relay import config
from relay.cli import main
from relay.errors import ConfigError
from relay.events import event_from_dict
from relay.explain import explain
from relay.message import Message
from relay.pipeline import Notification
from relay.store import open_store, rules
from tests import pgutil

SECRET = "SECRETxyz"
URLS = [f"slack://xoxb-1111-2222-{SECRET}/#ops",
        f"slack://T1{SECRET}/B1{SECRET}/{SECRET}{SECRET}{SECRET}/#ops", "console://",
        f"mailto://user:{SECRET}@example.com?to=ops@example.com"]
CONFIG = """\
server: {{tokens: [t]}}
store: {{url: "{store}"}}
receivers:
  - name: chat
    urls: {urls}
routes:
  - name: lifecycle
    match: {{event: "delivery.*"}}
    receivers: [chat]
    live: true
    hold: 10s
"""
REF = '{"platform":"slack","channel":"C0OPS","message":"1700000001.000001"}'
SHOWN = 1796119500.0  # 2026-12-01T10:05:00Z


def write(tmp_path: Path, store: str, urls: list[str] = URLS) -> str:
    path = tmp_path / "relay.yaml"
    path.write_text(CONFIG.format(store=store, urls=json.dumps(urls)))
    return str(path)


def event(minute: int = 6, status: str = "in_transit") -> dict:
    return {"event": "delivery.updated", "delivery_id": "D1", "status": status,
            "timestamp": f"2026-12-01T10:{minute:02d}:00Z"}


def route(path: str, body: dict) -> list[str]:
    result = CliRunner().invoke(main, ["route", "-c", path, "-"], input=json.dumps(body))
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    return [line for line in result.output.splitlines()
            if line.startswith(("  chat[", "    live:", "    hold"))]


@pytest.mark.parametrize("value,message", [
    ("hold: 2h", "routes[0].hold: must be at most 1h, got '2h'"),
    ("hold: soon", "routes[0].hold: expected a duration like 30s, 5m, 2h, got 'soon'"),
    ('live: "yes"', "routes[0].live: expected true or false, got a string (write true or"
                   " false, without quotes)"),
])
def test_a_bad_live_or_hold_value_names_its_line_and_key(value: str, message: str) -> None:
    text = ("server: {tokens: [t]}\nreceivers: [{name: chat, urls: ['console://']}]\n"
            f"routes:\n  - receivers: [chat]\n    {value}\n")
    with pytest.raises(ConfigError) as e:
        config.loads(text, "relay.yaml", {})
    assert str(e.value) == f"relay.yaml:5: {message}"


def test_live_and_hold_reach_the_route_and_its_notifications() -> None:
    text = ("server: {tokens: [t]}\nreceivers: [{name: chat, urls: ['console://']}]\n"
            "routes:\n  - {receivers: [chat], live: true, hold: 1m}\n  - {receivers: [chat]}\n")
    cfg = config.loads(text, "relay.yaml", {})
    assert [(r.live, r.hold) for r in cfg.routes] == [(True, 60.0), (False, 0.0)]


def test_check_lists_the_live_urls_that_cannot_edit_without_their_secrets(tmp_path) -> None:
    result = CliRunner().invoke(main, ["check", "-c", write(tmp_path, "sqlite:relay.db")])
    assert result.exit_code == 0 and SECRET not in result.output
    where = f"{tmp_path / 'relay.yaml'}:10: routes[0].live: warning: receiver \"chat\""
    assert result.output.splitlines()[:2] == [
        f"{where} URL #1 (slack://***) cannot edit, so it gets a new message per notification:"
        " Slack incoming webhooks cannot edit messages: use a bot token (slack://xoxb-…/#channel)",
        f"{where} URL #2 (console://***) cannot edit, so it gets a new message per notification:"
        " Console messages cannot be edited: each notification is a new message"]
    assert "OK (2 warning(s))" in result.output  # the bot token and the email are fine


def test_route_says_post_and_hold_and_creates_no_store(tmp_path) -> None:
    path = write(tmp_path, f"sqlite:{tmp_path / 'relay.db'}")
    lines = route(path, event())
    thread = "<live.2e3eea2e03d1c243610c8fe28b26066a@kourier-relay.invalid>"
    hold = "    hold 10s: a newer notification of this delivery in that time replaces it"
    assert lines == [
        "  chat[0] slack://***  route=lifecycle  type=info  format=text",
        "    live: would post a new message (none for this delivery yet) and keep its ref", hold,
        "  chat[1] slack://***  route=lifecycle  type=info  format=text",
        "    live: a new message (Slack incoming webhooks cannot edit messages: use a bot token"
        " (slack://xoxb-…/#channel))", hold,
        "  chat[2] console://***  route=lifecycle  type=info  format=text",
        "    live: a new message (Console messages cannot be edited: each notification is a new"
        " message)", hold,
        "  chat[3] mailto://***  route=lifecycle  type=info  format=text",
        f"    live: a mail in the delivery's thread (In-Reply-To {thread})", hold]
    assert thread == f"<live.{thread[6:38]}@kourier-relay.invalid>"
    assert list(tmp_path.iterdir()) == [tmp_path / "relay.yaml"]  # no store was made


async def stored(url: str) -> None:
    """A store where D1's live message shows 10:05 and an update of 10:04 waits in its hold."""
    store = open_store(url)
    await store.open()
    key = rules.live_key("D1", "lifecycle", "chat", 0)
    await store.live_take(key, "D1", owner="a", now=SHOWN, lease=30)
    await store.live_done(key, owner="a", ref=REF, shown=SHOWN, now=SHOWN)
    waiting = Notification("chat", 0, "lifecycle", Message("t", "b", "info", "text"), live=True,
                           hold=10)
    await store.accept(event_from_dict(event(4)), "k", [waiting], now=SHOWN)
    await store.close()


EDIT = "    live: would edit message slack C0OPS/1700000001.000001 and reply in its thread"
KEEP = ("    live: would leave message slack C0OPS/1700000001.000001 as it is: it shows a newer"
        " state (of 2026-12-01 10:05:00 UTC)")
REPLACES = ("    hold 10s: a newer notification of this delivery in that time replaces it; it"
            " replaces waiting job 1")


async def test_route_reads_the_deliverys_message_ref_from_sqlite_read_only(tmp_path) -> None:
    db = tmp_path / "relay.db"
    await stored(f"sqlite:{db}")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    path = write(tmp_path, f"sqlite:{db}", URLS[:1])
    assert (await asyncio.to_thread(route, path, event(6)))[1:] == [EDIT, REPLACES]
    assert (await asyncio.to_thread(route, path, event(3)))[1:] == [KEEP, REPLACES]  # older
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "relay.yaml"}
    assert after == {k: v for k, v in before.items()}


@pytest.mark.postgres
async def test_route_reads_postgresql_in_a_read_only_transaction(tmp_path) -> None:
    import asyncpg

    async with pgutil.fresh_schema(await pgutil.base_dsn()) as dsn:
        path = write(tmp_path, dsn, URLS[:1])
        (empty,) = (await asyncio.to_thread(route, path, event(6)))[1:2]
        assert empty.startswith("    live: posts a new message, or edits the delivery's if it"
                                " has one (store: ") and "live_messages" in empty
        conn = await asyncpg.connect(dsn)
        try:  # the dry run made nothing
            assert await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname ="
                                       " current_schema()") == 0
        finally:
            await conn.close()
        await stored(dsn)
        assert (await asyncio.to_thread(route, path, event(6)))[1:] == [EDIT, REPLACES]
        # the status page's rule tester runs the dry run on the server's event loop
        report, _ = explain(config.load(path, {}), event_from_dict(event(6)))
        assert EDIT in report.splitlines()


def test_the_live_route_per_platform_in_the_docs_passes_check_and_every_url_can_edit(
        tmp_path, monkeypatch) -> None:
    from relay.lint import lint
    from tests.conftest import ROOT

    page = (ROOT / "docs" / "live-messages.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", page, re.S)
    env = {"SLACK_BOT_TOKEN": "xoxb-1-2-abcd", "DISCORD_WEBHOOK_ID": "1234",
           "DISCORD_WEBHOOK_TOKEN": "abcd", "TELEGRAM_BOT_TOKEN": "123456789:AAabcd",
           "TELEGRAM_CHAT_ID": "-1001234", "MATRIX_ACCESS_TOKEN": "syt_abcd",
           "SMTP_USER": "relay", "SMTP_PASSWORD": "pw"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for i, block in enumerate(blocks):
        path = tmp_path / f"block{i}.yaml"
        path.write_text("server: {tokens: [t]}\n" + block)
        assert [str(issue) for issue in lint(str(path))] == []
    assert len(blocks) == 2
