"""The failing-receiver notice: rendered by the planner, overridable, and no fake delivery."""

from __future__ import annotations

import sqlite3

from relay.lint import lint
from tests.conftest import FakeClock, wait_for, write_config

EVENT = {"event": "delivery.updated", "status": "in_transit", "timestamp": "2024-09-14T14:30:00Z"}


def rows(path, sql):
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


def failing_setup(sink, templates: str = "") -> str:
    return (f'receivers:\n  - name: flaky\n    urls: ["{sink.url("flaky")}"]\n'
            f'  - name: log\n    urls: ["{sink.url("log")}"]\n'
            "routes:\n  - {match: {event: delivery.updated}, receivers: [flaky]}\n" + templates)


SENDING = ("retry: {schedule: [0, 1, 1, 1], jitter: 0}\n"
           "  circuit: {failures: 2, cooldown: 60}\n  fallback_receiver: log")


async def open_the_circuit(running, sink, templates: str = ""):
    sink.script["/flaky"] = [500, 500]
    r = await running(failing_setup(sink, templates), clock=FakeClock(), sending=SENDING)
    for n in range(2):
        assert (await r.post({**EVENT, "delivery_id": f"d{n}"}))[0] == 202
    return r, await wait_for(lambda: sink.messages("log"), message="the notice")


async def test_an_open_circuit_tells_the_fallback_receiver_without_a_fake_delivery(
        running, sink, tmp_path):
    r, notice = await open_the_circuit(running, sink)
    assert notice[0]["title"] == "Receiver flaky is failing (urls[0]: json://***)"
    assert notice[0]["message"].startswith("The relay paused sending to flaky's urls[0]"
                                           " (json://***) after repeated")
    assert "HTTP 500" in notice[0]["message"]
    assert notice[0]["type"] == "failure"
    db = tmp_path / "relay.db"
    assert sorted(rows(db, "SELECT delivery_id FROM deliveries")) == [("d0",), ("d1",)]
    assert rows(db, "SELECT type, delivery_id FROM events WHERE type LIKE 'relay.%'") == [
        ("relay.receiver_failing", "")]
    assert rows(db, "SELECT count(*) FROM jobs WHERE delivery_id='-'") == [(0,)]


async def test_the_operator_overrides_the_notice_with_templates_receiver_failing(running, sink):
    override = ('templates:\n  receiver_failing:\n'
                '    title: "PAGE: {{ receiver }} down"\n    type: warning\n')
    _, notice = await open_the_circuit(running, sink, override)
    assert notice[0]["title"] == "PAGE: flaky down"
    assert notice[0]["type"] == "warning"
    assert notice[0]["message"].startswith("The relay paused sending to flaky's")  # built-in


def test_check_knows_the_fields_of_the_notice_template(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", """\
        server: {tokens: [t]}
        receivers: [{name: log, urls: ["console://"]}]
        default_receiver: log
        sending: {fallback_receiver: log}
        templates:
          receiver_failing: {title: "{{ receiver }}: {{ error }}", body: "{{ delivery_id }}"}
        """)
    found = [(i.path, i.message) for i in lint(str(cfg))]
    assert found == [("templates.receiver_failing.body",
                      "uses delivery_id, which the receiver_failing notice never carries (it has"
                      " error, event, receiver, timestamp, url, url_index); renders empty unless"
                      " an event"
                      " carries it")]


async def test_a_receiver_that_refuses_itself_opens_its_circuit_and_later_notifications_wait(
        running, sink, tmp_path):
    # 404: the webhook was deleted (401/403: credentials revoked). Every notification would
    # fail alike, so these count towards the circuit although each job is dead at once.
    sink.script["/flaky"] = [404, 404]
    clock = FakeClock()
    r = await running(failing_setup(sink), clock=clock, sending=SENDING)
    for n in range(2):
        assert (await r.post({**EVENT, "delivery_id": f"d{n}"}))[0] == 202
    notice = await wait_for(lambda: sink.messages("log"), message="the notice")
    assert notice[0]["title"] == "Receiver flaky is failing (urls[0]: json://***)"
    assert "HTTP 404" in notice[0]["message"]
    db = tmp_path / "relay.db"
    assert (await r.post({**EVENT, "delivery_id": "d2"}))[0] == 202
    await r.relay.worker.run_once()
    state = "SELECT delivery_id, state FROM jobs WHERE receiver = 'flaky' ORDER BY id"
    assert rows(db, state) == [("d0", "dead"), ("d1", "dead"), ("d2", "pending")]
    assert sink.hits.count("/flaky") == 2  # the paused receiver was not tried again
    clock.advance(60)  # the cooldown: one probe, the webhook is back (the fix), all resume
    await r.relay.worker.run_once()
    await wait_for(lambda: rows(db, state)[2] == ("d2", "sent"), message="the probe")


async def test_a_fallback_receiver_whose_own_url_fails_is_told_at_its_other_urls(
        running, sink):
    """Each receiver URL has its own circuit: when one of the fallback receiver's own URLs
    trips, its other URLs still work, so the notice goes to those (not to the one that
    failed, where it would wait behind the open circuit); it was never sent."""
    sink.script["/ops-chat"] = [500, 500]
    setup = (f'receivers:\n  - name: ops\n    urls: ["{sink.url("ops-chat")}",'
             f' "{sink.url("ops-mail")}"]\n'
             "routes:\n  - {match: {event: delivery.updated}, receivers: [ops]}\n")
    r = await running(setup, clock=FakeClock(), sending=SENDING.replace(
        "fallback_receiver: log", "fallback_receiver: ops"))
    for n in range(2):
        assert (await r.post({**EVENT, "delivery_id": f"d{n}"}))[0] == 202
    notice = await wait_for(lambda: [m for m in sink.messages("ops-mail")
                                     if m["title"].startswith("Receiver ops is failing")],
                            message="the notice at ops' other URL")
    assert notice[0]["title"] == "Receiver ops is failing (urls[0]: json://***)"
    await r.relay.worker.run_once()
    assert not [m for m in sink.messages("ops-chat") if "is failing" in m["title"]]
    assert len(sink.messages("ops-mail")) == 3  # d0, d1 and the notice
