"""Watches: a real relay, a real json:// sink, the relay's clock driven by a FakeClock."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from relay.config import load
from relay.events import Event
from relay.lint import lint
from relay.watches import Watches, describe, human_duration
from tests.conftest import FakeClock, wait_for
from tests.test_sending import receivers
from tests.uiutil import delivery_page

HOUR = 3600.0
WATCH = """\
watches:
  - name: not-delivered
    start: {event: delivery.created}
    stop:
      - {event: delivery.updated, status: delivered}
      - {event: delivery.cancelled}
    after: 4h
    receivers: [ops]
    title: "Delivery {{ delivery_id }} not delivered after {{ elapsed }}"
    body: "Last seen: {{ last.status | human_status }} ({{ watch }})"
"""


def ts(clock: FakeClock, offset: float = 0.0) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(clock.now + offset, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def created(clock: FakeClock, delivery: str = "D-1", offset: float = 0.0) -> dict[str, str]:
    return {"event": "delivery.created", "delivery_id": delivery, "timestamp": ts(clock, offset)}


def updated(clock: FakeClock, status: str, delivery: str = "D-1") -> dict[str, str]:
    return {"event": "delivery.updated", "delivery_id": delivery, "status": status,
            "timestamp": ts(clock)}


async def start(running, sink, clock: FakeClock, watch: str = WATCH):
    return await running(receivers(sink, ops="ops") + watch, clock=clock)


def timers(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT key, state FROM timers ORDER BY id").fetchall()


async def test_a_watch_fires_after_its_time_and_not_before(running, sink, tmp_path):
    clock = FakeClock()
    r = await start(running, sink, clock)
    assert (await r.post(created(clock)))[0] == 202
    clock.advance(HOUR)
    assert (await r.post(updated(clock, "in_transit")))[0] == 202
    clock.advance(3 * HOUR - 1)
    await r.relay.worker.run_once()
    assert sink.messages("ops") == []
    clock.advance(1)  # exactly due
    await r.relay.worker.run_once()
    [message] = await wait_for(lambda: sink.messages("ops"), message="the watch's alert")
    assert message["title"] == "Delivery D-1 not delivered after 4h"
    assert message["message"] == "Last seen: In transit (not-delivered)"
    assert message["type"] == "warning"
    clock.advance(10 * HOUR)
    await r.relay.worker.run_once()
    assert len(sink.messages("ops")) == 1  # once per arming
    assert timers(tmp_path / "relay.db") == [("not-delivered:D-1", "fired")]


async def test_a_stop_in_time_means_no_alert(running, sink, tmp_path):
    clock = FakeClock()
    r = await start(running, sink, clock)
    await r.post(created(clock, "D-1"))
    await r.post(created(clock, "D-2"))
    clock.advance(3 * HOUR)
    await r.post(updated(clock, "delivered", "D-1"))
    await r.post({"event": "delivery.cancelled", "delivery_id": "D-2", "timestamp": ts(clock)})
    clock.advance(5 * HOUR)
    await r.relay.worker.run_once()
    assert sink.messages("ops") == []
    assert timers(tmp_path / "relay.db") == [("not-delivered:D-1", "disarmed"),
                                             ("not-delivered:D-2", "disarmed")]
    timeline = await r.relay.store.timeline("D-1")
    assert [t.state for t in timeline.timers] == ["disarmed"]


async def test_a_later_start_re_arms_the_clock(running, sink):
    clock = FakeClock()
    r = await start(running, sink, clock)
    await r.post(created(clock))
    clock.advance(3 * HOUR)
    await r.post(created(clock))  # another start (a new timestamp: not a duplicate)
    clock.advance(2 * HOUR)
    await r.relay.worker.run_once()
    assert sink.messages("ops") == []  # 5 h after the first start, 2 h after the second
    clock.advance(2 * HOUR)
    await r.relay.worker.run_once()
    [message] = await wait_for(lambda: sink.messages("ops"))
    assert message["title"] == "Delivery D-1 not delivered after 4h"


async def test_an_event_older_than_after_fires_a_minute_after_receipt(running, sink):
    clock = FakeClock()
    r = await start(running, sink, clock)
    await r.post(created(clock, offset=-5 * HOUR))
    clock.advance(59)
    await r.relay.worker.run_once()
    assert sink.messages("ops") == []
    clock.advance(2)
    await r.relay.worker.run_once()
    [message] = await wait_for(lambda: sink.messages("ops"))
    assert message["title"] == "Delivery D-1 not delivered after 1m 1s"


async def test_a_broken_template_falls_back_to_the_built_in_one(running, sink):
    clock = FakeClock()
    watch = WATCH.replace('"Last seen: {{ last.status | human_status }} ({{ watch }})"',
                          '"{{ last.status }}{{ 1 // 0 }}"')
    r = await start(running, sink, clock, watch)
    await r.post(created(clock))
    clock.advance(4 * HOUR)
    await r.relay.worker.run_once()
    [message] = await wait_for(lambda: sink.messages("ops"))
    assert message["title"] == "Delivery D-1: not-delivered (4h without a stop event)"
    assert "Watch not-delivered was armed by delivery.created 4h ago." in message["message"]


async def test_after_a_reload_an_alert_follows_the_new_config_and_a_removed_watch_sends_nothing(
        running, sink, tmp_path, caplog):
    clock = FakeClock()
    two = WATCH + WATCH.split("\n", 1)[1].replace("not-delivered", "no-courier").replace(
        "after: 4h", "after: 1h")
    r = await start(running, sink, clock, two)
    await r.post(created(clock))
    cfg = Path(r.relay.config_path)
    text = cfg.read_text()
    kept = text[:text.index("  - name: no-courier")]  # no-courier is removed
    cfg.write_text(kept.replace("not delivered after", "still not delivered after"))
    await r.relay.reload()
    clock.advance(4 * HOUR)
    await r.relay.worker.run_once()
    [message] = await wait_for(lambda: sink.messages("ops"), message="the remaining alert")
    assert message["title"] == "Delivery D-1 still not delivered after 4h"  # today's template
    assert "watch 'no-courier' is no longer in the config; nothing sent" in caplog.text
    assert timers(tmp_path / "relay.db") == [("not-delivered:D-1", "fired"),
                                             ("no-courier:D-1", "fired")]


async def test_metrics_count_armed_disarmed_and_fired(running, sink):
    clock = FakeClock()
    r = await start(running, sink, clock)
    for d in ("D-1", "D-2", "D-3"):
        await r.post(created(clock, d))
    await r.post(updated(clock, "delivered", "D-3"))
    clock.advance(4 * HOUR)
    await r.relay.worker.run_once()
    await wait_for(lambda: len(sink.messages("ops")) == 2)
    async with r.session.get(r.url + "/metrics") as resp:
        text = await resp.text()
    for change, n in (("armed", 3), ("disarmed", 1), ("fired", 2)):
        assert f'kourier_relay_timers_total{{change="{change}",kind="watch"}} {n}.0' in text


async def test_the_status_page_shows_a_deliverys_watches_armed_disarmed_and_fired(running, sink):
    clock = FakeClock()  # 2027-01-15 08:00:00 UTC
    r = await start(running, sink, clock)
    await r.post(created(clock, "D-1"))
    await r.post(created(clock, "D-2"))
    await r.post(updated(clock, "delivered", "D-2"))
    assert '<strong>not-delivered</strong> <span class="pill st-armed">armed</span> fires' \
        " <time>2027-01-15 12:00:00 UTC</time> unless a stop event comes first" \
        in await delivery_page(r, "D-1")
    assert '<span class="pill st-disarmed">disarmed</span> disarmed' \
        " <time>2027-01-15 08:00:00 UTC</time> by a stop event" in await delivery_page(r, "D-2")
    clock.advance(4 * HOUR)
    await r.relay.worker.run_once()
    await wait_for(lambda: sink.messages("ops"), message="the watch's alert")
    page = await delivery_page(r, "D-1")
    assert '<span class="pill st-fired">fired</span> fired <time>2027-01-15 12:00:00 UTC</time>' \
        in page
    assert "Delivery D-1 not delivered after 4h" in page  # the alert, under its arming event
    assert "route watch:not-delivered" in page


def test_human_duration_shows_the_two_largest_units():
    assert [human_duration(s) for s in (0, 59, 61, 4 * HOUR, 4 * HOUR + 300, 90000)] == \
        ["0s", "59s", "1m 1s", "4h", "4h 5m", "1d 1h"]


# ---------------------------------------------------------------- check


BASE = """\
server: {tokens: [t]}
receivers: [{name: ops, urls: ["json://127.0.0.1:9/x"]}]
routes: [{match: {event: delivery.updated}, receivers: [ops]}]
watches:
"""


def findings(tmp_path: Path, watch: str) -> list[str]:
    path = tmp_path / "c.yaml"
    path.write_text(BASE + watch)
    return [f"{i.line}: {i.path}: {i.message}" for i in lint(str(path))]


def test_check_reports_each_watch_mistake_with_its_place(tmp_path):
    assert findings(tmp_path, """\
  - name: w
    start: {status: {regex: "("}}
    stop: [{event: delivery.cancelled}, {status: {bogus: 1}}]
    after: 2 hours
    receivers: [opz]
""") == [
        "8: watches[0].after: expected a duration like 30s, 5m, 2h, got '2 hours'",
        '9: watches[0].receivers[0]: undefined receiver "opz" (did you mean "ops"?)',
    ]
    assert findings(tmp_path, """\
  - name: w
    start: {status: {regex: "("}}
    stop: [{event: delivery.cancelled}, {status: {bogus: 1}}]
    after: 2h
    receivers: [ops]
    title: "{{ delivery_id }"
""") == [
        "6: watches[0].start.status: invalid regex '(': missing ), unterminated subpattern"
        " at position 0",
        '7: watches[0].stop[1].status: unknown matcher "bogus" (use regex, not or exists)',
        "10: watches[0].title: template syntax error: unexpected '}'",
    ]


def test_check_refuses_a_watch_name_with_a_colon_and_a_duplicate_name(tmp_path):
    watch = """\
  - name: "late:4h"
    start: {event: delivery.created}
    after: 4h
    receivers: [ops]
"""
    assert findings(tmp_path, watch) == [
        '5: watches[0].name: a watch name must not contain ":" (its timers are keyed'
        " name:delivery_id)"]
    assert findings(tmp_path, watch.replace("late:4h", "late") * 2) == [
        '9: watches[1].name: duplicate watch "late"']


def test_check_warns_about_a_stop_that_can_never_come_after_start(tmp_path):
    assert findings(tmp_path, """\
  - name: w
    start: {event: delivery.updated, status: in_transit}
    stop: [{event: delivery.created}, {event: "delivery.*"}]
    after: 2h
    receivers: [ops]
    body: "{{ last.status }} {{ elapsed }} {{ watch }} {{ courier }}"
""") == [
        "7: watches[0].stop[0]: watch \"w\": this stop can never match after start: it matches"
        " only delivery.created, which Kourier sends once, before any other event of a delivery",
        '7: watches[0].stop[1]: watch "w": every event that matches start also matches this'
        " stop, and a stop wins, so the watch never arms",
        "10: watches[0].body: uses courier, which Kourier does not document (it documents delivery_id,"
        " event, status, timestamp); renders empty unless an event carries it (name the"
        " fields your events carry in deliveries.extra_fields)",
    ]


def test_check_warns_of_a_field_of_last_kourier_never_sends_as_of_a_top_level_one(tmp_path):
    """`last` is the delivery's newest event: `{{ last.courier }}` warns as `{{ courier }}`
    does (it renders empty unless an event carries it), a misspelt field with a hint."""
    sent = "Kourier does not document (it documents delivery_id, event, status, timestamp)"
    assert findings(tmp_path, """\
  - name: w
    start: {event: delivery.created}
    stop: [{status: delivered}]
    after: 2h
    receivers: [ops]
    title: "{{ delivery_id }} is {{ last.status }} since {{ last.timestamp }}"
    body: |
      by {{ last.courier }}
      {{ last.stauts }} {{ last['event'] }}
""") == [
        f"12: watches[0].body: uses last.courier, which {sent}; renders empty unless"
        " an event carries it (name the fields your events carry in deliveries.extra_fields)",
        f"13: watches[0].body: uses last.stauts, which {sent}; renders empty unless"
        ' an event carries it (did you mean "status"?)',
    ]


MAPPING_STOP = """\
  - name: w
    start: {event: delivery.updated}
    stop:
      event: delivery.canceled
      status: {bogus: 1}
    after: 2h
    receivers: [ops]
"""
LISTED_STOP = MAPPING_STOP.replace("""\
      event: delivery.canceled
      status:""", """\
      - {event: delivery.cancelled}
      - event: delivery.canceled
        status:""")
UNKNOWN = ("'delivery.canceled' matches no event type Kourier sends (delivery.cancelled,"
           " delivery.created, delivery.updated), only one it may add later (did you mean"
           ' "delivery.cancelled"?)')


STOP_FORMS = {  # (config, the key path of its bad stop, its line, the indent of its keys)
    "one mapping, no index": (MAPPING_STOP, "watches[0].stop", 7, "      "),
    "a list, by index": (LISTED_STOP, "watches[0].stop[1]", 9, "        "),
}


@pytest.mark.parametrize("form", STOP_FORMS)
def test_check_names_a_stop_as_the_file_writes_it(tmp_path, form):
    """`stop: {...}` has no `[0]` in the file, so its findings have none either."""
    text, path, line, indent = STOP_FORMS[form]
    event_line = line + 1 if form.startswith("one") else line
    assert findings(tmp_path, text) == [
        f"{event_line}: {path}.event: {UNKNOWN}",
        f'{event_line + 1}: {path}.status: unknown matcher "bogus" (use regex, not or exists)',
    ]
    assert findings(tmp_path, text.replace("canceled", "created").replace(
        f"{indent}status: {{bogus: 1}}\n", "")) == [
        f'{line}: {path}: watch "w": this stop can never match after start: it matches'
        " only delivery.created, which Kourier sends once, before any other event of a delivery"]


def test_the_dry_run_names_a_single_stop_as_the_file_does(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(BASE + MAPPING_STOP.replace("canceled", "cancelled").replace(
        "      status: {bogus: 1}\n", ""))
    [watch] = Watches.from_config(load(str(path))).watches
    event = Event("delivery.cancelled", "D-1", "2027-01-15T08:00:00Z", None, {})
    assert describe(watch, "disarm", 0, event, 0.0) == \
        "  DISARM w: stop matches (a timer armed for this delivery will not fire)"


async def test_a_start_older_than_the_stop_that_came_first_arms_nothing(running, sink, tmp_path):
    # Kourier retried the created after a failure; the delivered (newer) came first.
    clock = FakeClock()
    r = await start(running, sink, clock)
    await r.post(updated(clock, "delivered"))
    await r.post(created(clock, offset=-600))
    clock.advance(5 * HOUR)
    await r.relay.worker.run_once()
    assert sink.messages("ops") == []
    assert timers(tmp_path / "relay.db") == [("not-delivered:D-1", "disarmed")]
    assert "never armed: its stop event came before the start event" in \
        await delivery_page(r, "D-1")


NO_UPDATE = WATCH.replace("name: not-delivered", "name: no-update").replace(
    "start: {event: delivery.created}", "start: {event: delivery.updated}").replace("4h", "2h")


async def test_an_update_older_than_the_cancellation_does_not_re_arm_the_watch(running, sink):
    clock = FakeClock()
    r = await start(running, sink, clock, NO_UPDATE)
    await r.post({**updated(clock, "in_transit"), "timestamp": ts(clock)})
    await r.post({"event": "delivery.cancelled", "delivery_id": "D-1",
                  "timestamp": ts(clock, 60)})
    await r.post({**updated(clock, "out_for_delivery"), "timestamp": ts(clock, 30)})  # late
    clock.advance(3 * HOUR)
    await r.relay.worker.run_once()
    assert sink.messages("ops") == []
    # A start newer than the stop still arms (the clock starts at its receipt).
    await r.post({**updated(clock, "in_transit"), "timestamp": ts(clock)})
    clock.advance(2 * HOUR)
    await r.relay.worker.run_once()
    [message] = await wait_for(lambda: sink.messages("ops"), message="the watch's alert")
    assert message["title"] == "Delivery D-1 not delivered after 2h"


# ---------------------------------------------------------------- the route dry run and the store

def dry_run(config: Path, body: dict[str, str], lines: int = 1) -> list[str]:
    """The `route` command's watch lines for `body` (the real CLI, in this process)."""
    import json

    from click.testing import CliRunner

    from relay.cli import main

    result = CliRunner().invoke(main, ["route", "-c", str(config), "-"], input=json.dumps(body))
    assert result.exit_code == 0, result.output
    out = result.output.splitlines()
    return [line for line in out[out.index("watches:") + 1:] if line][:lines]


def utc(clock: FakeClock, offset: float = 0.0) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(clock.now + offset, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


ARMS = "  ARM    not-delivered -> ops: fires 4h after receipt unless a stop event comes"


async def test_the_dry_run_says_a_start_older_than_the_stored_stop_arms_nothing(
        running, sink, tmp_path):
    clock = FakeClock(2_000_000_000.0)  # in the future: no start in this test is late
    r = await start(running, sink, clock)
    config = tmp_path / "config.yaml"
    assert await asyncio.to_thread(dry_run, config, created(clock, offset=-600)) == [ARMS]
    await r.post(updated(clock, "delivered"))
    files = sorted(p.name for p in tmp_path.iterdir())
    assert await asyncio.to_thread(dry_run, config, created(clock, offset=-600)) == [
        f"  (no change) not-delivered: this start ({utc(clock, -600)}) is older than the stop"
        f" already received ({utc(clock)}): the relay arms nothing"]
    assert await asyncio.to_thread(dry_run, config, created(clock, offset=60)) == [ARMS]
    assert sorted(p.name for p in tmp_path.iterdir()) == files  # the dry run made nothing
    await r.post(created(clock, offset=-600))  # and the relay agrees: it arms nothing
    assert timers(tmp_path / "relay.db") == [("not-delivered:D-1", "disarmed")]


async def test_the_dry_run_names_the_start_or_the_stop_the_timer_was_ordered_by(
        running, sink, tmp_path):
    clock = FakeClock(2_000_000_000.0)
    r = await start(running, sink, clock, NO_UPDATE)
    config = tmp_path / "config.yaml"
    await r.post(updated(clock, "in_transit"))
    newer = {**updated(clock, "out_for_delivery"), "timestamp": ts(clock, 30)}
    assert await asyncio.to_thread(dry_run, config, newer) == [
        "  RE-ARM no-update -> ops: fires 2h after receipt unless a stop event comes (the timer"
        " is armed: its countdown starts over)"]
    older = {**updated(clock, "out_for_delivery"), "timestamp": ts(clock, -30)}
    assert await asyncio.to_thread(dry_run, config, older) == [
        f"  (no change) no-update: this start ({utc(clock, -30)}) is older than the start that"
        f" armed the timer ({utc(clock)}): the relay arms nothing (the timer stays as that"
        " start armed it)"]
    same = {**updated(clock, "out_for_delivery"), "timestamp": ts(clock)}
    assert "is no newer than the start that armed" in (await asyncio.to_thread(
        dry_run, config, same))[0]
    await r.post({"event": "delivery.cancelled", "delivery_id": "D-1", "timestamp": ts(clock, 60)})
    between = {**updated(clock, "out_for_delivery"), "timestamp": ts(clock, 30)}
    assert await asyncio.to_thread(dry_run, config, between) == [
        f"  (no change) no-update: this start ({utc(clock, 30)}) is older than the newest start"
        f" or stop already received ({utc(clock, 60)}): the relay arms nothing"]


@pytest.mark.postgres
async def test_the_dry_run_reads_a_watchs_timer_on_postgresql(sink, tmp_path):
    from relay.events import event_from_dict
    from relay.store import open_store
    from tests import pgutil
    from tests.conftest import BASE_CONFIG, DEFAULTS, free_port

    clock = FakeClock(2_000_000_000.0)
    async with pgutil.migrated_schema(await pgutil.base_dsn()) as dsn:
        config = tmp_path / "config.yaml"
        config.write_text(BASE_CONFIG.format(**{**DEFAULTS, "port": free_port(), "db": "x"})
                          .replace('"sqlite:x"', f'"{dsn}"') + receivers(sink, ops="ops") + WATCH)
        cfg = load(str(config))
        store = open_store(dsn)
        await store.open()
        try:
            stop = event_from_dict(updated(clock, "delivered"))
            await store.accept(stop, "k", [], now=clock.now,
                               timers=Watches.from_config(cfg).ops(stop, clock.now))
        finally:
            await store.close()
        assert await asyncio.to_thread(dry_run, config, created(clock, offset=-600)) == [
            f"  (no change) not-delivered: this start ({utc(clock, -600)}) is older than the"
            f" stop already received ({utc(clock)}): the relay arms nothing"]
        assert await asyncio.to_thread(dry_run, config, created(clock, offset=60)) == [ARMS]


def test_without_a_readable_store_the_dry_run_says_arm_as_before(tmp_path):
    clock = FakeClock(2_000_000_000.0)
    config = tmp_path / "config.yaml"
    config.write_text(BASE.removesuffix("watches:\n") + WATCH
                      + f'store: {{url: "sqlite:{tmp_path / "relay.db"}"}}\n')
    (tmp_path / "relay.db").write_bytes(b"not a database")
    assert dry_run(config, created(clock)) == [ARMS]
    assert dry_run(config, created(clock), lines=2)[1] == (
        f"  (store: {tmp_path / 'relay.db'} cannot be read: file is not a database; a start"
        " older than what it holds would arm nothing)")
    assert (tmp_path / "relay.db").read_bytes() == b"not a database"


async def test_a_receiver_listed_twice_by_a_watch_gets_one_alert(running, sink):
    """A route sends a receiver it lists twice one notification; a watch sent two alerts."""
    clock = FakeClock()
    r = await start(running, sink, clock, WATCH.replace("receivers: [ops]",
                                                        "receivers: [ops, ops]"))
    assert (await r.post(created(clock)))[0] == 202
    clock.advance(4 * HOUR)
    await r.relay.worker.run_once()
    await wait_for(lambda: sink.messages("ops"), message="the watch's alert")
    await r.relay.worker.run_once()  # a second alert, if there were one, is sent by now
    assert len(sink.messages("ops")) == 1
