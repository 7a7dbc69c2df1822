"""Quiet hours meet hold and live routes, end to end: a real relay (SQLite), a json:// sink or
a real SMTP server (aiosmtpd), a fake clock. Quiet hours win: a held notification is neither
coalesced nor sent live; its summary is a plain message."""

from __future__ import annotations

from relay.events import event_from_dict
from relay.explain import explain
from relay.live.email import thread_id
from tests.conftest import FakeClock, wait_for
from tests.test_less_noise import QUIET, at, dry_run_config, failed, ops, passes, sent
from tests.test_live_email import smtp  # noqa: F401  (fixture)
from tests.test_sending import db_rows


def update(n: int, status: str, delivery: str = "d1") -> dict[str, object]:
    return {"event": "delivery.updated", "delivery_id": delivery, "status": status,
            "timestamp": f"2026-12-02T22:0{n}:00Z"}


ROUTE = """
routes:
  - name: lifecycle
    match: {{event: "delivery.*"}}
    receivers: [ops]
    title: "Delivery {{{{ delivery_id }}}}: {{{{ status }}}}"
    body: "{{{{ status }}}}"
    {options}
"""


async def test_a_hold_route_in_quiet_hours_holds_every_update_for_the_summary_and_replaces_none(
        running, sink, tmp_path):
    clock = FakeClock(at("2026-12-02T23:00"))  # Wednesday night, Berlin
    r = await running(ops(sink, QUIET) + ROUTE.format(options="hold: 30s"), clock=clock)
    for n, status in enumerate(("in_transit", "out_for_delivery", "delayed")):
        assert (await r.post(update(n, status)))[0] == 202
    db = tmp_path / "relay.db"
    assert db_rows(db, "SELECT state, last_error FROM jobs ORDER BY id") == [("held", "")] * 3
    clock.now = at("2026-12-03T07:00")
    await passes(r.relay, 2)
    await wait_for(lambda: len(sent(sink)) == 1, message="the summary")
    assert sent(sink) == [("3 notifications during quiet hours",
                           "- Delivery d1: in_transit\n- Delivery d1: out_for_delivery\n"
                           "- Delivery d1: delayed")]
    assert db_rows(db, "SELECT state, count(*) FROM jobs GROUP BY state ORDER BY state") == [
        ("sent", 1), ("summarised", 3)]
    # By day the hold coalesces again: two updates within 30 s are one message, the newer.
    clock.now = at("2026-12-03T08:00")
    await r.post(update(3, "in_transit", "d2"))
    clock.advance(10)
    await r.post(update(4, "delivered", "d2"))
    clock.advance(21)
    await passes(r.relay)
    await wait_for(lambda: len(sent(sink)) == 2, message="the held-back update")
    assert sent(sink)[1] == ("Delivery d2: delivered", "delivered")
    assert db_rows(db, "SELECT state FROM jobs WHERE delivery_id = 'd2' ORDER BY id") == [
        ("suppressed",), ("sent",)]


async def test_a_live_email_route_in_quiet_hours_sends_a_plain_summary_then_threads_by_day(
        running, smtp, tmp_path):  # noqa: F811
    clock = FakeClock(at("2026-12-02T23:00"))
    mail = smtp.url()
    r = await running(f"""
receivers:
  - name: ops
    urls: ["{mail}"]
{QUIET}""" + ROUTE.format(options="live: true"), clock=clock)
    await r.post(update(0, "in_transit"))
    await r.post(failed(9))  # urgent: goes at once, and live (threaded) as it would by day
    await passes(r.relay)
    (urgent,) = await wait_for(lambda: smtp.messages(), message="the urgent mail")
    assert urgent["In-Reply-To"] == thread_id("d9", "lifecycle", "ops", 0)
    assert db_rows(tmp_path / "relay.db",
                   "SELECT delivery_id, state, live FROM jobs WHERE state = 'held'") == [
        ("d1", "held", 1)]
    clock.now = at("2026-12-03T07:00")
    await passes(r.relay, 2)
    await wait_for(lambda: len(smtp.messages()) == 2, message="the summary mail")
    summary = smtp.messages()[1]
    assert summary["Subject"] == "1 notification during quiet hours"
    assert summary["In-Reply-To"] is None and summary["References"] is None  # plain
    clock.now = at("2026-12-03T08:00")
    await r.post(update(1, "delivered"))
    await passes(r.relay)
    await wait_for(lambda: len(smtp.messages()) == 3, message="the day's mail")
    thread = thread_id("d1", "lifecycle", "ops", 0)
    assert smtp.messages()[2]["In-Reply-To"] == thread  # by day in the delivery's thread


def test_the_dry_run_prints_live_hold_digest_and_quiet_lines(tmp_path):
    config = dry_run_config(tmp_path, "tgram://123456789:abcdefg_hijklmnop/-1001234", then="""\
  - name: lifecycle
    match: {}
    receivers: [ops]
    live: true
    hold: 30s
""")
    day, _ = explain(config, event_from_dict(failed(1)), now=at("2026-12-02T14:30"))
    lines = day.splitlines()
    assert "  chat[0] joins the digest hub=Hub 3, closes 14:40 (route failures; if this event" \
           " opens the window)" in lines
    assert any(line.startswith("    live: would post a new message") for line in lines), day
    assert any(line.startswith("    hold 30s: a newer notification") for line in lines), day
    assert "    sent now: failure is urgent during quiet hours" not in lines
    night, _ = explain(config, event_from_dict(update(0, "in_transit")),
                       now=at("2026-12-02T23:00"))
    lines = night.splitlines()
    assert "    held until Thu 07:00 (quiet hours), then sent in one summary" in lines
    assert "    quiet hours win over live and hold: the summary is a plain message (no edit of" \
           " the delivery's), nothing replaces this one" in lines
    assert not any(line.startswith(("    live:", "    hold 30s")) for line in lines), night
    urgent, _ = explain(config, event_from_dict(failed(1)), now=at("2026-12-02T23:00"))
    lines = urgent.splitlines()
    assert "    sent now: failure is urgent during quiet hours" in lines
    assert any(line.startswith("    live: would post a new message") for line in lines), urgent
    assert "123456789:abcdefg" not in day + night + urgent  # the bot token stays out
