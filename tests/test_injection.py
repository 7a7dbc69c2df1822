"""Payload values are inert in every format and channel: no live HTML, disguised links,
mentions or terminal sequences, while the operator's template text keeps its formatting.

Email goes to a real SMTP server (aiosmtpd), Slack is faked at the HTTP transport,
and the `route` dry run is the real CLI.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from relay.cli import main
from relay.escaping import ZWSP
from tests.conftest import write_config
from tests.test_channels import (  # noqa: F401 (fixtures)
    EVENT,
    SLACK_URL,
    body_of,
    event,
    internet,
    receiver,
    send_one,
)
from tests.test_live_email import smtp  # noqa: F401  (fixture)

EVIL = "<img src=http://evil.example/p.png> [Track parcel](http://evil.example) **loud**"
MARKDOWN_ROUTE = """        format: markdown
        title: "Delivery {{ delivery_id }}"
        body: "**Note** from ops: {{ note }}"
"""


def html_part(msg) -> str:
    part = msg.get_body(("html",))
    assert part is not None, "markdown is sent to email as HTML"
    return part.get_content()


async def test_markdown_values_arrive_in_email_html_as_text_not_markup(running, smtp, tmp_path):  # noqa: F811 (fixture)
    await send_one(running, tmp_path, receiver("mail", smtp.url(), MARKDOWN_ROUTE),
                   event(note=EVIL))

    [msg] = smtp.messages()
    body = html_part(msg)
    assert "<strong>Note</strong>" in body  # the operator's markdown still renders
    assert "<img" not in body
    assert not re.search(r"<a\s", body)
    assert "<strong>loud</strong>" not in body
    shown = html.unescape(re.sub(r"<[^>]+>", "", body))
    assert "[Track parcel](http://evil.example)" in shown
    assert "<img src=http://evil.example/p.png>" in shown


async def test_markdown_values_are_no_disguised_link_in_slack(running, internet, tmp_path):  # noqa: F811 (fixture)
    await send_one(running, tmp_path, receiver("slack", SLACK_URL, MARKDOWN_ROUTE),
                   event(note=EVIL))

    [req] = internet.to("hooks.slack.com")
    text = body_of(req)["attachments"][0]["text"]
    assert "*Note* from ops" in text  # Slack's own bold, from the operator's **Note**
    assert "<http://evil.example|" not in text
    assert "<img" not in text
    assert "[Track parcel](http://evil.example)" in text
    assert "&lt;img src=http://evil.example/p.png&gt;" in text


async def test_html_template_values_are_escaped_for_email_but_the_subject_is_plain(
        running, smtp, tmp_path):  # noqa: F811 (fixture)
    route = """        format: html
        title: "Delivery {{ delivery_id }}"
        body: "<b>Note</b>: {{ note }}"
"""
    await send_one(running, tmp_path, receiver("mail", smtp.url(), route),
                   event(delivery_id="A&B<1>", note=EVIL))

    [msg] = smtp.messages()
    body = html_part(msg)
    assert "<b>Note</b>" in body and "<img" not in body and not re.search(r"<a\s", body)
    assert msg["Subject"] == "Delivery A&B<1>"  # a subject is not HTML: no &amp; shown


async def test_control_characters_never_reach_an_email_subject(running, smtp, tmp_path):  # noqa: F811 (fixture)
    await send_one(running, tmp_path, receiver("mail", smtp.url()),
                   event(delivery_id="abc\x1b[2J\x1b]0;owned\x07\r\nBcc: x@evil.example"))
    # (NUL is refused at ingest: PostgreSQL text cannot hold it; tests/test_hostile.py)

    [msg] = smtp.messages()
    assert msg["Subject"] == "Delivery abc Bcc: x@evil.example: In transit"
    assert msg["Bcc"] is None


async def test_control_characters_never_reach_the_console(running, tmp_path, capfd):
    r = await running(receiver("log", "console://"))
    status, _, _ = await r.post(event(delivery_id="abc\x1b[31mRED\x1b[0m\x07\x9b2J"))
    assert status == 202

    def printed() -> str:
        out, _ = capfd.readouterr()
        printed.seen += out  # type: ignore[attr-defined]
        return printed.seen  # type: ignore[attr-defined]
    printed.seen = ""  # type: ignore[attr-defined]
    from tests.conftest import wait_for
    out = await wait_for(lambda: "Delivery abcRED" in printed() and printed(),
                         message="the console receiver to print")
    assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out


# ------------------------------------------------------------------ mentions, via `route`

MENTIONS = {
    # scheme URL: (payload value, text that must not survive, what it must show)
    "matrix": ("matrixs://relay:secretpw@matrix.example.com/#ops", "@room", f"@{ZWSP}room"),
    "telegram": ("tgram://123456789:AAbbccddeeffgghhiijjkkllmmnnoopp/-100123", "@alice",
                 f"@{ZWSP}alice"),
    "mattermost": ("mmosts://chat.example.com/abcdefghijklmnopqrstuvwxyz", "@channel",
                   f"@{ZWSP}channel"),
    "rocketchat": ("rockets://user:pw@chat.example.com/#ops", "@all", f"@{ZWSP}all"),
    "zulip": ("zulip://relay-bot@example/abcdefghijklmnopqrstuvwxyz012345/ops", "@**all**",
              f"@{ZWSP}**all**"),
    "googlechat": ("gchat://workspace/key/token", "<users/all>", f"<{ZWSP}users/all>"),
    "teams": ("workflows://prod-01.westus.logic.azure.com:443/abcdef0123456789/"
              "?signature=abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", "<at>Ops</at>",
              f"<{ZWSP}at>Ops"),
    "kook": ("kook://abcdef0123456789abcdef/", "(met)all(met)", f"({ZWSP}met)all"),
    "discord": ("discord://987654321/SECRETdiscordTOKENvalue", "@everyone", f"@{ZWSP}everyone"),
}


def dry_run(tmp_path: Path, url: str, payload: dict, fmt: str = "text") -> str:
    cfg = write_config(tmp_path / "c.yaml", f"""\
        server: {{tokens: [t]}}
        receivers:
          - {{name: chat, urls: ["{url}"]}}
        routes:
          - match: {{event: "delivery.*"}}
            receivers: [chat]
            format: {fmt}
            title: "Delivery {{{{ delivery_id }}}}"
            body: "Note: {{{{ note }}}}"
        """)
    result = CliRunner().invoke(main, ["route", "-c", str(cfg), "-"], input=json.dumps(payload))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("name", sorted(MENTIONS))
def test_mention_syntax_in_a_value_does_not_ping(tmp_path, name):
    url, mention, shown = MENTIONS[name]
    out = dry_run(tmp_path, url, event(note=f"{mention} please look"))
    body = out.split("body (", 1)[1]
    assert shown in body
    assert mention not in body
    assert "secretpw" not in out and "SECRET" not in out


def test_route_dry_run_shows_the_html_an_email_gets_for_markdown(tmp_path):
    out = dry_run(tmp_path, "mailto://127.0.0.1:25?from=a@example.com&to=b@example.com",
                  event(note=EVIL), fmt="markdown")
    assert "as html (Apprise converts markdown for this channel):" in out
    sent = out.split("as html", 1)[1]
    assert "<img" not in sent and "<a " not in sent
    assert "[Track parcel](http://evil.example)" in sent


def test_route_dry_run_prints_no_terminal_sequences(tmp_path):
    out = dry_run(tmp_path, "console://", event(delivery_id="D\x1b]0;owned\x07\x1b[2J-1",
                                                note="x\x1b[31m"))
    assert "\x1b" not in out and "\x07" not in out
    assert "delivery_id: D-1" in out


def test_values_are_escaped_but_operator_markdown_is_not(tmp_path):
    out = dry_run(tmp_path, SLACK_URL, {**EVENT, "note": "*not bold* `x`"}, fmt="markdown")
    assert "Note: \\*not bold\\* \\`x\\`" in out
