"""The delivery page's live messages (issue 13, Part B), through a real relay and the Slack fake."""

from __future__ import annotations

import html
import re

from relay.store import rules
from tests.conftest import wait_for
from tests.test_live_routes import SLACK_URL, config, done, event

PAGE = {"Authorization": "Bearer admin-secret", "Accept": "text/html"}


async def delivery_page(r, delivery_id: str) -> str:
    async with r.session.get(f"{r.url}/ui/delivery?id={delivery_id}", headers=PAGE) as resp:
        assert resp.status == 200
        return " ".join(html.unescape(await resp.text()).split())


def section(page: str, name: str) -> str:
    found = re.search(rf'<section class="card" id="{name}".*?</section>', page)
    assert found, f"no {name} section"
    return found.group(0)


async def test_the_delivery_page_shows_its_live_message_and_which_notifications_edited_it(
        running, slack, tmp_path) -> None:
    r = await running(config(SLACK_URL), live_api={"slack": slack.base})
    for n in range(3):
        assert (await r.post(event(n)))[0] == 202
    await wait_for(lambda: len(slack.roots()) == 1 and slack.roots()[0].edits == 2,
                   message="posted and edited twice")
    await done(tmp_path / "relay.db")
    (message,) = slack.roots()
    (ref,) = (await r.relay.store.timeline("D1")).live
    assert ref.key == rules.live_key("D1", "lifecycle", "ops-chat", 0)

    live = section(await delivery_page(r, "D1"), "live")
    assert "<strong>lifecycle</strong> to ops-chat[0]:" in live
    assert re.search(rf"posted</span> message <code>slack \w+/{re.escape(message.id)}</code>",
                     live), live
    assert "showing the state of <time>2026-12-01 10:02:00 UTC</time>" in live  # the newest
    assert "from 3 live notifications" in live
    page = await delivery_page(r, "D1")
    assert page.count("live message slack") == 3  # each live job names its message
    assert page.count(f"/{message.id} (<a href=\"#live\">its state</a>)") == 3

