"""Digests and quiet hours end to end: a real relay (SQLite), a real json:// sink, a fake clock.

Time only moves when a test moves it; `worker.run_once()` is one full pass
(timers fired, then jobs claimed and sent).
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from relay.config import Config, loads
from relay.events import event_from_dict
from relay.explain import explain
from relay.logs import TextFormatter
from tests.conftest import FakeClock, Sink, relay_log_lines, wait_for
from tests.test_sending import db_rows
from tests.uiutil import delivery_page

BERLIN = ZoneInfo("Europe/Berlin")
UTC = ZoneInfo("UTC")
FAILED = {"event": "delivery.updated", "status": "failed", "timestamp": "2024-09-14T14:30:00Z"}
MOVING = {"event": "delivery.updated", "status": "in_transit",
          "timestamp": "2024-09-14T14:30:00Z"}


def at(text: str, zone: ZoneInfo = BERLIN) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=zone).timestamp()


def failed(n: int, hub: str = "Hub 3", **extra: object) -> dict[str, object]:
    return {**FAILED, "delivery_id": f"d{n}", "hub": hub, "reason": f"reason {n}", **extra}


def moving(n: int) -> dict[str, object]:
    return {**MOVING, "delivery_id": f"d{n}"}


def ops(sink: Sink, quiet: str = "") -> str:
    return f"""
receivers:
  - name: ops
    urls: ["{sink.url('ops')}"]
{quiet}"""


QUIET = """\
    quiet_hours:
      timezone: Europe/Berlin
      windows:
        - {days: [mon, tue, wed, thu, fri], from: "22:00", to: "07:00"}
        - {days: [sat, sun], from: "00:00", to: "24:00"}
      urgent: [failure]
"""
DIGEST_ROUTE = """
routes:
  - name: failures
    match: {event: delivery.updated, status: [failed, returned]}
    receivers: [ops]
    digest: %s
    title: "{{ events | length }} deliveries failed at {{ group.hub }}"
    body: |
      {%% for e in events %%}- {{ e.delivery_id }}: {{ e.reason }}
      {%% endfor %%}
"""
DEFAULT_ROUTE = "default_receiver: ops\n"
ALL_TO_OPS = """\
  - name: all
    match: {}
    receivers: [ops]
"""


def failures_digest(receiver: str, then: str = ALL_TO_OPS) -> str:
    """Routes: failed events into a digest per hub for `receiver`, and on to the routes `then`."""
    return f"""
routes:
  - name: failures
    match: {{status: failed}}
    receivers: [{receiver}]
    digest: {{window: 10m, group_by: [hub]}}
    continue: true
""" + then


def with_ops(tmp_path: Path, ops_url: str) -> str:
    """A config's head for `explain`: Berlin time and the receiver ops, quiet at night."""
    return f"""
server: {{listen: "127.0.0.1:8080", tokens: [t]}}
store: {{url: "sqlite:{tmp_path}/r.db"}}
timezone: Europe/Berlin
receivers:
  - name: ops
    urls: ["{ops_url}"]
{QUIET}"""


def dry_run_config(tmp_path: Path, ops_url: str, then: str = ALL_TO_OPS) -> Config:
    """A config for `explain`: ops (quiet at night) and chat, which gets failures' digest."""
    return loads(with_ops(tmp_path, ops_url) + """  - name: chat
    urls: ["json://127.0.0.1:9/chat"]""" + failures_digest("chat", then))


async def passes(relay, n: int = 1) -> None:
    for _ in range(n):
        await relay.worker.run_once()


def sent(sink: Sink) -> list[tuple[str, str]]:
    return [(m["title"], m["message"]) for m in sink.messages("ops")]


async def metric(r, name: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{r.url}/metrics") as resp:
        text = await resp.text()
    return next(float(line.split()[-1]) for line in text.splitlines()
                if line.startswith(name + " "))


# ---------------------------------------------------------------- digests


async def test_one_digest_per_group_when_its_window_closes_with_the_events_in_order(
        running, sink, tmp_path):
    clock = FakeClock(at("2026-12-02T14:30"))
    r = await running(ops(sink) + DIGEST_ROUTE % "{window: 10m, group_by: [hub]}", clock=clock)
    assert (await r.post(failed(1, "Hub 3")))[0] == 202
    clock.advance(60)
    assert (await r.post(failed(2, "Hub 7")))[0] == 202
    clock.advance(60)
    assert (await r.post(failed(3, "Hub 3")))[0] == 202
    status, body, _ = await r.post(failed(1, "Hub 3"))  # a duplicate joins nothing
    assert (status, body["status"]) == (200, "duplicate")
    await passes(r.relay)
    assert sent(sink) == []  # no message of their own
    assert (await r.relay.store.stats()).open_windows == 2
    assert await metric(r, "kourier_relay_digest_windows_open") == 2
    clock.advance(600 - 120 - 1)
    await passes(r.relay)
    assert sent(sink) == []
    clock.advance(1)  # Hub 3's window opened at 14:30 and closes at 14:40
    await passes(r.relay)
    await wait_for(lambda: len(sent(sink)) == 1)
    assert sent(sink) == [("2 deliveries failed at Hub 3", "- d1: reason 1\n- d3: reason 3")]
    clock.advance(60)
    await passes(r.relay)
    await wait_for(lambda: len(sent(sink)) == 2)
    assert sent(sink)[1] == ("1 deliveries failed at Hub 7", "- d2: reason 2")
    assert sink.messages("ops")[0]["type"] == "failure"
    assert (await r.relay.store.stats()).open_windows == 0
    await passes(r.relay)
    assert len(sent(sink)) == 2  # each window fired once
    for change in ("armed", "fired"):
        assert await metric(r, f'kourier_relay_timers_total{{change="{change}",kind="digest"}}') \
            == 2


async def test_max_events_closes_a_window_at_once_and_the_next_event_opens_another(
        running, sink):
    clock = FakeClock(at("2026-12-02T14:30"))
    r = await running(ops(sink) + DIGEST_ROUTE % "{window: 10m, max_events: 2}", clock=clock)
    for n in (1, 2, 3):
        await r.post(failed(n, hub=f"Hub {n}"))  # no group_by: one group
    await passes(r.relay)
    await wait_for(lambda: len(sent(sink)) == 1)
    assert sent(sink) == [("2 deliveries failed at", "- d1: reason 1\n- d2: reason 2")]
    clock.advance(599)
    await passes(r.relay)
    assert len(sent(sink)) == 1  # d3 opened a window of its own at 14:30, closing 14:40
    clock.advance(1)
    await passes(r.relay)
    await wait_for(lambda: len(sent(sink)) == 2)
    assert sent(sink)[1] == ("1 deliveries failed at", "- d3: reason 3")


async def test_the_built_in_digest_template_and_a_failing_one_falls_back_to_it(running, sink):
    clock = FakeClock(at("2026-12-02T14:30"))
    r = await running(ops(sink) + f"""
  - name: other
    urls: ["{sink.url('other')}"]
routes:
  - name: built-in
    match: {{status: failed}}
    receivers: [ops]
    digest: {{window: 1m, group_by: [hub]}}
    continue: true
  - name: broken
    match: {{status: failed}}
    receivers: [other]
    digest: {{window: 2m}}
    title: "{{{{ count // (count - count) }}}} failures"
""", clock=clock)
    await r.post(failed(1))
    await r.post(failed(2))
    clock.advance(120)
    await passes(r.relay)
    await wait_for(lambda: len(sink.messages()) == 2)
    body = "- d1: Failed at 14:30\n- d2: Failed at 14:30"
    assert sent(sink) == [("2 events hub=Hub 3 (built-in)", body)]
    assert [(m["title"], m["message"]) for m in sink.messages("other")] == \
        [("2 events (broken)", body)]


async def test_a_window_open_when_a_reload_takes_the_digest_off_its_route_sends_the_built_in(
        running, sink):
    # The route now renders single events ({{ delivery_id }}, {{ reason }}): the window
    # still open holds two events, so it goes out with the built-in digest template.
    clock = FakeClock(at("2026-12-02T14:30"))
    r = await running(ops(sink) + DIGEST_ROUTE % "{window: 10m}", clock=clock)
    await r.post(failed(1))
    await r.post(failed(2))
    cfg = Path(r.relay.config_path)
    text = cfg.read_text()
    cfg.write_text(text[:text.index("    digest:")] + "    title: \"Delivery {{ delivery_id }}"
                   " failed\"\n    body: \"{{ reason }}\"\n")
    await r.relay.reload()
    clock.advance(600)
    await passes(r.relay)
    await wait_for(lambda: len(sent(sink)) == 1)
    assert sent(sink) == [("2 events (failures)", "- d1: Failed at 14:30\n- d2: Failed at 14:30")]
    await r.post(failed(3))  # and the route's own template for an event of today's route
    await passes(r.relay)
    await wait_for(lambda: len(sent(sink)) == 2)
    assert sent(sink)[1] == ("Delivery d3 failed", "reason 3")


# ---------------------------------------------------------------- quiet hours


async def test_quiet_hours_hold_across_midnight_and_send_one_summary_urgent_goes_at_once(
        running, sink, tmp_path):
    clock = FakeClock(at("2026-12-02T23:00"))  # a Wednesday night
    r = await running(ops(sink, QUIET) + DEFAULT_ROUTE, clock=clock)
    await r.post(moving(1))
    await r.post(moving(2))
    await r.post(failed(3))  # failure is urgent
    await passes(r.relay)
    await wait_for(lambda: len(sent(sink)) == 1)
    assert sent(sink)[0][0] == "Delivery d3: Failed"
    db = tmp_path / "relay.db"
    assert db_rows(db, "SELECT delivery_id, state, attempts, next_attempt_at FROM jobs"
                       " WHERE state = 'held' ORDER BY id") == \
        [("d1", "held", 0, at("2026-12-03T07:00")), ("d2", "held", 0, at("2026-12-03T07:00"))]
    assert (await r.relay.store.stats()).held == 2
    assert await metric(r, "kourier_relay_held_notifications") == 2
    clock.now = at("2026-12-03T06:59:59")
    await passes(r.relay)
    assert len(sent(sink)) == 1
    clock.now = at("2026-12-03T07:00")
    await passes(r.relay, 2)
    await wait_for(lambda: len(sent(sink)) == 2)
    assert sent(sink)[1] == ("2 notifications during quiet hours",
                             "- Delivery d1: In transit\n- Delivery d2: In transit")
    assert db_rows(db, "SELECT state, count(*) FROM jobs GROUP BY state ORDER BY state") == \
        [("sent", 2), ("summarised", 2)]
    assert await metric(r, "kourier_relay_held_notifications") == 0
    for change in ("armed", "fired"):  # one summary timer for the night
        assert await metric(r, f'kourier_relay_timers_total{{change="{change}",kind="quiet"}}') \
            == 1
    timeline = await r.relay.store.timeline("d1")
    assert [(j.state, j.route) for j in timeline.jobs] == [("summarised", "(default)")]


async def test_friday_night_merges_with_the_weekend_until_monday_midnight(running, sink):
    clock = FakeClock(at("2026-12-04T23:00"))  # Friday
    r = await running(ops(sink, QUIET) + DEFAULT_ROUTE, clock=clock)
    await r.post(moving(1))
    clock.now = at("2026-12-06T12:00")  # Sunday noon: still quiet
    await r.post(moving(2))
    await passes(r.relay)
    assert sent(sink) == []
    clock.now = at("2026-12-07T00:00")  # Monday 00:00: Monday's window starts at 22:00
    await passes(r.relay, 2)
    await wait_for(lambda: len(sent(sink)) == 1)
    assert sent(sink)[0][0] == "2 notifications during quiet hours"
    await r.post(moving(3))  # Monday 00:00 is not quiet
    await passes(r.relay)
    await wait_for(lambda: len(sent(sink)) == 2)
    assert sent(sink)[1][0] == "Delivery d3: In transit"


@pytest.mark.parametrize(("received", "ends"), [
    ("2026-03-29T00:30", "2026-03-29T05:00"),  # spring forward: 07:00 CEST, not 07:00 CET
    ("2026-10-25T00:30", "2026-10-25T06:00"),  # fall back: 07:00 CET, not 07:00 CEST
])
async def test_quiet_time_ends_at_07_00_berlin_on_daylight_saving_nights(running, sink, received,
                                                                       ends):
    clock = FakeClock(at(received, UTC))
    r = await running(ops(sink, """\
    quiet_hours:
      timezone: Europe/Berlin
      windows: [{days: daily, from: "01:00", to: "07:00"}]
""") + DEFAULT_ROUTE, clock=clock)
    await r.post(moving(1))
    await passes(r.relay)
    assert sent(sink) == []
    assert datetime.fromtimestamp(at(ends, UTC), BERLIN).strftime("%H:%M") == "07:00"
    clock.now = at(ends, UTC) - 1
    await passes(r.relay)
    assert sent(sink) == []
    clock.now = at(ends, UTC)
    await passes(r.relay, 2)
    await wait_for(lambda: len(sent(sink)) == 1)
    assert sent(sink) == [("1 notification during quiet hours", "- Delivery d1: In transit")]


async def test_a_failing_summary_template_falls_back_to_the_built_in_summary(running, sink):
    clock = FakeClock(at("2026-12-02T23:00"))
    r = await running(ops(sink, QUIET.replace("urgent: [failure]", "template: morning"))
                      + DEFAULT_ROUTE + """
templates:
  morning:
    title: "{{ count // (count - count) }}"
""", clock=clock)
    await r.post(failed(1))  # not urgent here
    clock.now = at("2026-12-03T07:00")
    await passes(r.relay, 2)
    await wait_for(lambda: len(sent(sink)) == 1)
    assert sent(sink) == [("1 notification during quiet hours", "- Delivery d1: Failed")]
    assert sink.messages("ops")[0]["type"] == "failure"


async def test_a_digest_closing_in_quiet_hours_is_held_for_the_summary(running, sink):
    clock = FakeClock(at("2026-12-02T21:55"))
    r = await running(ops(sink, QUIET.replace("urgent: [failure]", "urgent: []"))
                      + DIGEST_ROUTE % "{window: 10m}", clock=clock)
    await r.post(failed(1))
    clock.advance(600)  # closes 22:05: quiet
    await passes(r.relay)
    assert sent(sink) == []
    assert (await r.relay.store.stats()).held == 1
    clock.now = at("2026-12-03T07:00")
    await passes(r.relay, 2)
    await wait_for(lambda: len(sent(sink)) == 1)
    assert sent(sink) == [("1 notification during quiet hours",
                           "- 1 deliveries failed at")]


async def test_held_notifications_count_against_the_backlog(running, sink):
    clock = FakeClock(at("2026-12-02T23:00"))
    r = await running(ops(sink, QUIET) + DEFAULT_ROUTE, clock=clock, store="max_backlog: 2")
    assert (await r.post(moving(1)))[0] == 202
    assert (await r.post(moving(2)))[0] == 202
    status, body, headers = await r.post(moving(3))
    assert (status, body["error"], headers["Retry-After"]) == (503, "Backlog full", "30")


async def test_purge_removes_fired_digests_and_summaries_with_their_events(running, sink,
                                                                            tmp_path):
    clock = FakeClock(at("2026-12-02T23:00"))
    r = await running(ops(sink, QUIET.replace("[failure]", "[]")) + DEFAULT_ROUTE + """
routes:
  - name: failures
    match: {status: failed}
    receivers: [ops]
    digest: {window: 1m}
""", clock=clock, store="retention: 1h")
    await r.post(failed(1))
    await r.post(moving(2))
    db = tmp_path / "relay.db"
    clock.advance(7200)
    await passes(r.relay)  # the digest closes at 23:01, in quiet hours: held
    await r.relay.purge()  # held work is kept, with the events it came from
    assert db_rows(db, "SELECT count(*) FROM events") == [(2,)]
    assert db_rows(db, "SELECT state, count(*) FROM jobs GROUP BY state") == [("held", 2)]
    clock.now = at("2026-12-03T07:00")
    await passes(r.relay, 3)
    await wait_for(lambda: len(sent(sink)) == 1)  # the digest was held: one summary
    clock.advance(7200)
    await r.relay.purge()
    for table in ("events", "jobs", "timers", "digest_items"):
        assert db_rows(db, f"SELECT count(*) FROM {table}") == [(0,)], table


# ---------------------------------------------------------------- the route dry run


def test_the_dry_run_says_what_joins_a_digest_and_what_is_held(tmp_path):
    config = dry_run_config(tmp_path, "json://127.0.0.1:9/ops")
    report, _ = explain(config, event_from_dict(failed(1)), now=at("2026-12-02T14:30"))
    assert "  chat[0] joins the digest hub=Hub 3, closes 14:40 (route failures; if this event" \
           " opens the window)" in report.splitlines()
    report, _ = explain(config, event_from_dict(moving(1)), now=at("2026-12-02T23:00"))
    # tomorrow's end with its weekday: a bare 07:00 would read as this morning's, long past
    assert "    held until Thu 07:00 (quiet hours), then sent in one summary" in \
        report.splitlines()
    report, _ = explain(config, event_from_dict(moving(1)), now=at("2026-12-03T01:00"))
    assert "    held until 07:00 (quiet hours), then sent in one summary" in report.splitlines()
    report, _ = explain(config, event_from_dict(failed(1)), now=at("2026-12-02T23:00"))
    assert "    sent now: failure is urgent during quiet hours" in report.splitlines()
    report, _ = explain(config, event_from_dict(moving(1)), now=at("2026-12-05T23:00"))
    assert "    held until Mon 00:00 (quiet hours), then sent in one summary" in \
        report.splitlines()


@pytest.mark.parametrize("route_type, held", [
    ("warning", ", then held until Thu 07:00 (quiet hours)"),
    ("failure", ""),  # urgent for ops: sent when the window closes, quiet or not
])
def test_the_dry_run_says_a_digest_closing_in_quiet_hours_is_held(tmp_path, route_type, held):
    # It said only when the window closes, though the digest then waits for the morning.
    # The type comes from the route's named template here.
    config = loads(with_ops(tmp_path, "json://127.0.0.1:9/ops") + f"""routes:
  - name: failures
    match: {{status: failed}}
    receivers: [ops]
    digest: {{window: 10m, group_by: [hub]}}
    template: night
templates:
  night: {{type: {route_type}}}
""")
    line = "  ops[0] joins the digest hub=Hub 3, closes {} (route failures; if this event opens" \
           " the window){}"
    report, _ = explain(config, event_from_dict(failed(1)), now=at("2026-12-02T21:55"))
    assert line.format("22:05", held) in report.splitlines()
    report, _ = explain(config, event_from_dict(failed(1)), now=at("2026-12-02T14:30"))
    assert line.format("14:40", "") in report.splitlines()


# ---------------------------------------------------------------- what docs/less-noise.md shows

DOC = Path(__file__).parent.parent / "docs" / "less-noise.md"
SUMMARY_EVENTS = [
    {"event": "delivery.updated", "delivery_id": "P-1001", "status": "in_transit",
     "timestamp": "2026-12-02T22:10:00Z"},
    {"event": "delivery.updated", "delivery_id": "P-1002", "status": "delivered",
     "timestamp": "2026-12-02T23:40:00Z"},
    {"event": "delivery.cancelled", "delivery_id": "P-1003", "timestamp": "2026-12-03T01:05:00Z"},
    {"event": "delivery.updated", "delivery_id": "P-1004", "status": "out_for_delivery",
     "timestamp": "2026-12-03T05:30:00Z"},
]


def doc_blocks() -> dict[str, str]:
    """The fenced block after each `<!-- rendered: NAME -->` in the page."""
    found = re.findall(r"<!-- rendered: ([\w-]+) -->\n(?:[^`]*\n)?```\n(.*?)```", DOC.read_text(),
                       re.S)
    return {name: text for name, text in found}


def hub3_failures(count: int = 3) -> list[dict[str, object]]:
    minutes = [0, 1, 6] if count == 3 else list(range(count))
    return [{"event": "delivery.updated", "delivery_id": f"P-{1001 + n * (3 if n == 2 else 1)}"
             if count == 3 else f"P-{1001 + n}",
             "status": "returned" if count == 3 and n == 2 else "failed", "hub": "3",
             "reason": "nobody home" if n % 2 else "address not found",
             "timestamp": f"2026-12-02T14:{30 + m:02d}:00Z"} for n, m in enumerate(minutes)]


DOC_DIGEST = """
routes:
  - name: failures
    match: {event: delivery.updated, status: [failed, returned]}
    receivers: [ops]
    digest: {window: 10m, group_by: [hub]}
"""


def doc_digest_config() -> Config:
    """The docs' digest route to one json:// receiver, for a planner without a relay."""
    return loads(f"""
server: {{listen: "127.0.0.1:8080", tokens: [t]}}
store: {{url: "sqlite:/nonexistent/r.db"}}
receivers:
  - name: ops
    urls: ["json://127.0.0.1:9/ops"]
{DOC_DIGEST}""")


async def rendered_for_the_docs(running, sink: Sink) -> dict[str, str]:
    clock = FakeClock(at("2026-12-02T14:30", UTC))
    r = await running(ops(sink, QUIET.replace("urgent: [failure]", "urgent: []")) + f"""
  - name: team
    urls: ["{sink.url('team')}"]
  - name: team2
    urls: ["{sink.url('team2')}"]
routes:
  - name: failures
    match: {{event: delivery.updated, status: [failed, returned]}}
    receivers: [team]
    digest: {{window: 10m, group_by: [hub]}}
    continue: true
  - name: failures-custom
    match: {{event: delivery.updated, status: [failed, returned]}}
    receivers: [team2]
    digest: {{window: 10m, group_by: [hub]}}
    title: "{{{{ count }}}} deliveries failed at hub {{{{ group.hub }}}}"
    body: |
      {{% for e in events %}}- {{{{ e.delivery_id }}}}: {{{{ e.reason }}}}
      {{% endfor %}}
  - name: all
    match: {{}}
    receivers: [ops]
""", clock=clock)
    for e in hub3_failures():
        await r.post(e)
    clock.advance(600)
    await passes(r.relay)
    await wait_for(lambda: len(sink.messages("team")) == len(sink.messages("team2")) == 1)
    out = {}
    for name, path in (("digest-builtin", "team"), ("digest-custom", "team2")):
        [m] = sink.messages(path)
        out[name] = f"{m['title']}\n{m['message']}\n"
    clock.now = at("2026-12-02T22:05", UTC)
    for e in SUMMARY_EVENTS:
        await r.post(e)
    clock.now = at("2026-12-03T07:00")
    await passes(r.relay, 2)
    await wait_for(lambda: len(sink.messages("ops")) == 1)
    [summary] = sink.messages("ops")
    out["summary-builtin"] = f"{summary['title']}\n{summary['message']}\n"
    return out


async def test_the_less_noise_page_shows_what_the_channel_receives(running, sink):
    shown, actual = doc_blocks(), await rendered_for_the_docs(running, sink)
    actual["digest-cut"] = cut_digest()
    wrong = {name: text for name, text in actual.items() if shown.get(name) != text}
    assert not wrong, "docs/less-noise.md should show:\n" + "\n".join(
        f"<!-- rendered: {name} -->\n```\n{text}```" for name, text in wrong.items())


def cut_digest() -> str:
    """Forty failures at hub 3 for a channel that takes 160 characters (an SMS)."""
    from relay.pipeline import Channel, Planner
    from relay.runtime import build_runtime
    from relay.store.records import DigestItem, TimelineEvent, Timer, TimerInputs

    cfg = doc_digest_config()
    rt = build_runtime(cfg)
    planner = Planner(cfg, rt.planner.router, rt.planner.templates,
                      {"ops": [Channel("sns", "sns://***", 160, 0)]})
    opened = at("2026-12-02T14:30", UTC)
    timer = Timer(1, "digest", "k", "", 1, opened + 600, "claimed", opened,
                  {"route": "failures", "group": [["hub", "3"]], "receiver": "ops",
                   "url_index": 0})
    items = tuple(DigestItem(n, TimelineEvent(n, "delivery.updated", opened, e))
                  for n, e in enumerate(hub3_failures(40)))
    [n] = planner.handlers["digest"](timer, TimerInputs(None, None, items), opened + 600)
    assert n.truncated and len(n.message.body) <= 160
    return f"{n.message.title}\n{n.message.body}\n"


# ---------------------------------------------------------------- the status page


async def test_the_status_page_shows_a_deliverys_digest_and_held_notifications(running, sink):
    clock = FakeClock(at("2026-12-02T20:55", UTC))  # 21:55 in Berlin
    r = await running(ops(sink, QUIET.replace("urgent: [failure]", "urgent: []")) + f"""
  - name: team
    urls: ["{sink.url('team')}"]""" + failures_digest("team"), clock=clock)
    await r.post(failed(1))
    page = await delivery_page(r, "d1")
    assert '<strong>failures</strong> hub=Hub 3 to team[0]: <a href="#event-1">an event</a>' \
        ' joined <time>2026-12-02 20:55:00 UTC</time>; <span class="pill st-pending">waiting' \
        "</span> for the window to close <time>2026-12-02 21:05:00 UTC</time>" in page
    clock.advance(300)  # 22:00 Berlin: quiet
    await r.post(moving(2))
    assert '<strong>Delivery d2: In transit</strong> to ops: <span class="pill st-pending">held' \
        "</span> until <time>2026-12-03 06:00:00 UTC</time>, then sent in one summary" \
        in await delivery_page(r, "d2")
    clock.advance(300)
    await passes(r.relay)
    await wait_for(lambda: sink.messages("team"))
    assert 'st-sent">sent</span> in the digest of <time>2026-12-02 21:05:00 UTC</time>' \
        in await delivery_page(r, "d1")
    clock.now = at("2026-12-03T07:00")
    await passes(r.relay, 2)
    await wait_for(lambda: sink.messages("ops"))
    assert 'st-sent">summarised</span> in the summary of <time>2026-12-03 06:00:00 UTC</time>' \
        in await delivery_page(r, "d2")


def test_a_digest_for_a_receiver_gone_from_the_config_still_makes_its_job():
    """The worker buries it ('receiver left the config'), for a replay: no event is lost."""
    from relay.runtime import build_runtime
    from relay.store.records import DigestItem, TimelineEvent, Timer, TimerInputs

    cfg = doc_digest_config()
    planner = build_runtime(cfg).planner
    opened = at("2026-12-02T14:30", UTC)
    timer = Timer(1, "digest", "k", "", 1, opened + 600, "claimed", opened,
                  {"route": "gone-route", "group": [], "receiver": "gone", "url_index": 2})
    items = (DigestItem(1, TimelineEvent(1, "delivery.updated", opened, failed(1))),)
    [n] = planner.handlers["digest"](timer, TimerInputs(None, None, items), opened + 600)
    assert (n.receiver, n.url_index, n.message.title, n.message.body) == \
        ("gone", 2, "1 event (gone-route)", "- d1: Failed at 14:30")
    assert planner.handlers["quiet"](timer, TimerInputs(None, None), opened) == ()  # nothing held


async def test_a_watch_alert_due_in_quiet_hours_waits_for_the_summary(running, sink):
    from tests.test_watches import WATCH

    clock = FakeClock(at("2026-12-02T19:00"))
    r = await running(ops(sink, QUIET) + WATCH.replace("after: 4h", "after: 210m"),
                      clock=clock)
    await r.post({"event": "delivery.created", "delivery_id": "D-1",
                  "timestamp": "2026-12-02T18:00:00Z"})
    clock.advance(3.5 * 3600)  # 22:30: the alert (a warning, not urgent here) is held
    await passes(r.relay)
    assert sent(sink) == []
    assert (await r.relay.store.stats()).held == 1
    clock.now = at("2026-12-03T07:00")
    await passes(r.relay, 2)
    await wait_for(lambda: sent(sink))
    assert sent(sink) == [("1 notification during quiet hours",
                           "- Delivery D-1 not delivered after 3h 30m")]


# Quiet windows close together: 12:00-13:00 and 13:30-18:00.
LUNCH = """\
    quiet_hours:
      timezone: Europe/Berlin
      windows:
        - {days: daily, from: "12:00", to: "13:00"}
        - {days: daily, from: "13:30", to: "18:00"}
"""


@pytest.mark.parametrize(("quiet", "held_at", "back_at", "ends"), [
    # down from 12:55 to 13:40: the 13:00 summary falls due in the 13:30 window
    pytest.param(LUNCH, "2026-12-02T12:30", "2026-12-02T13:40", "2026-12-02T18:00",
                 id="windows-close-together"),
    # down from Thursday 06:50 to 22:30: the 07:00 summary falls due in the next night
    pytest.param(QUIET, "2026-12-02T23:00", "2026-12-03T22:30", "2026-12-04T07:00",
                 id="down-all-day"),
])
async def test_a_summary_due_while_the_relay_was_down_waits_out_the_next_quiet_time(
        running, sink, tmp_path, quiet, held_at, back_at, ends):
    clock = FakeClock(at(held_at))
    r = await running(ops(sink, quiet) + DEFAULT_ROUTE, clock=clock)
    await r.post(moving(1))
    await passes(r.relay)
    clock.now = at(back_at)  # no pass ran from before the first quiet time's end until now
    with relay_log_lines(TextFormatter()) as log:
        await passes(r.relay, 2)
    assert "summary found due in quiet hours again: it waits until they end kind=quiet" \
        f" key=0:ops until={datetime.fromtimestamp(at(ends), UTC).isoformat()}" in log.getvalue()
    await r.post(moving(2))
    await passes(r.relay, 2)
    assert sent(sink) == []
    db = tmp_path / "relay.db"
    assert db_rows(db, "SELECT kind, state, due_at FROM timers") == [("quiet", "armed", at(ends))]
    clock.now = at(ends) - 1
    await passes(r.relay)
    assert sent(sink) == []
    clock.now = at(ends)
    await passes(r.relay, 2)
    await wait_for(lambda: sent(sink))
    assert sent(sink) == [("2 notifications during quiet hours",
                           "- Delivery d1: In transit\n- Delivery d2: In transit")]
    assert db_rows(db, "SELECT state, count(*) FROM jobs GROUP BY state ORDER BY state") == \
        [("sent", 1), ("summarised", 2)]
    assert await metric(r, 'kourier_relay_timers_total{change="fired",kind="quiet"}') == 1


async def test_a_summary_due_while_the_relay_was_down_goes_at_once_when_it_is_not_quiet(
        running, sink):
    clock = FakeClock(at("2026-12-02T12:30"))
    r = await running(ops(sink, LUNCH) + DEFAULT_ROUTE, clock=clock)
    await r.post(moving(1))
    clock.now = at("2026-12-02T13:10")  # back between the two windows
    await passes(r.relay, 2)
    await wait_for(lambda: sent(sink))
    assert sent(sink) == [("1 notification during quiet hours", "- Delivery d1: In transit")]


async def test_a_receiver_quiet_all_week_still_gets_its_weekly_summary_in_quiet_time(
        running, sink):
    clock = FakeClock(at("2026-12-02T12:30"))
    r = await running(ops(sink, """\
    quiet_hours:
      timezone: Europe/Berlin
      windows: [{days: daily, from: "00:00", to: "24:00"}]
""") + DEFAULT_ROUTE, clock=clock)
    await r.post(moving(1))
    clock.now = at("2026-12-09T12:29:59")
    await passes(r.relay)
    assert sent(sink) == []
    clock.now = at("2026-12-09T12:40")  # a week after it was held, and late: still quiet
    await passes(r.relay, 2)
    await wait_for(lambda: sent(sink))
    assert sent(sink) == [("1 notification during quiet hours", "- Delivery d1: In transit")]
