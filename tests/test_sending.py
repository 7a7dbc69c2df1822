"""Sending guarantees: retries and their schedule, dead letters, rate limits, circuit, backpressure."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import TOKEN, FakeClock, wait_for
from tests.forkserver import run_relay

EVENT = {"event": "delivery.updated", "status": "in_transit", "timestamp": "2024-09-14T14:30:00Z"}


def event(n: int | str, **extra):
    return {**EVENT, "delivery_id": f"d{n}", **extra}


def db_rows(path, sql, *args):
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, args).fetchall()


def receivers(sink, **paths):
    lines = ["receivers:"]
    for name, spec in paths.items():
        path, _, extra = spec.partition(" ")
        lines.append(f"  - name: {name}\n    urls: [\"{sink.url(path)}\"]")
        if extra:
            lines.append(f"    {extra}")
    return "\n".join(lines) + "\n"


async def ticked(relay):
    """One full worker pass after now: what it claimed is sent and recorded."""
    await relay.worker.run_once()


async def test_flaky_receiver_eventually_gets_every_event_exactly_once(running, sink, tmp_path):
    sink.script["/flaky"] = [500] * 12
    r = await running(receivers(sink, flaky="flaky") + "default_receiver: flaky\n",
                      sending="retry: {schedule: [0, 0.05, 0.1, 0.1, 0.1, 0.1], jitter: 0}\n"
                               "  circuit: {failures: 100}")
    for n in range(10):
        assert (await r.post(event(n)))[0] == 202
    await wait_for(lambda: len(sink.messages("flaky")) == 10, message="all ten delivered")
    titles = sorted(m["title"] for m in sink.messages("flaky"))
    assert titles == sorted(f"Delivery d{n}: In transit" for n in range(10))
    assert db_rows(tmp_path / "relay.db", "SELECT count(*) FROM attempts WHERE outcome='retry'") \
        == [(12,)]


async def test_permanent_error_goes_dead_at_once_with_its_reason(running, sink, tmp_path):
    sink.script["/bad"] = [400]
    r = await running(receivers(sink, bad="bad") + "default_receiver: bad\n")
    await r.post(event(1))
    dead = await wait_for(lambda: db_rows(tmp_path / "relay.db",
                                          "SELECT attempts, last_error FROM jobs WHERE state='dead'"))
    assert dead[0][0] == 1
    assert "error=400" in dead[0][1]
    assert sink.hits == ["/bad"]


async def test_retries_run_out_and_the_job_is_dead(running, sink, tmp_path):
    sink.default_status = 503
    r = await running(receivers(sink, down="down") + "default_receiver: down\n",
                      sending="retry: {schedule: [0, 0.05, 0.05], jitter: 0}\n"
                               "  circuit: {failures: 100}")
    await r.post(event(1))
    dead = await wait_for(lambda: db_rows(tmp_path / "relay.db",
                                          "SELECT attempts, last_error FROM jobs WHERE state='dead'"))
    assert dead[0][0] == 3
    assert dead[0][1].startswith("gave up after 3 attempts: ")
    assert len(sink.hits) == 3


async def test_retry_after_on_429_is_honoured_and_no_earlier_attempt_is_made(running, sink,
                                                                             tmp_path):
    clock = FakeClock()
    sink.script["/slow"] = [(429, {"Retry-After": "120"})]
    r = await running(receivers(sink, slow="slow") + "default_receiver: slow\n", clock=clock,
                      sending="retry: {schedule: [0, 1, 1], jitter: 0}")
    await r.post(event(1))
    await wait_for(lambda: sink.hits == ["/slow"])
    due = await wait_for(lambda: db_rows(tmp_path / "relay.db",
                                         "SELECT next_attempt_at FROM jobs WHERE state='pending'"))
    assert due == [(clock.now + 120,)]
    clock.advance(119)
    await ticked(r.relay)
    assert sink.hits == ["/slow"]
    clock.advance(2)
    await ticked(r.relay)
    await wait_for(lambda: len(sink.messages("slow")) == 1)


async def test_after_a_429_without_retry_after_the_wait_is_at_least_a_minute(running, sink,
                                                                             tmp_path):
    clock = FakeClock()
    sink.script["/x"] = [429]
    r = await running(receivers(sink, x="x") + "default_receiver: x\n", clock=clock,
                      sending="retry: {schedule: [0, 1, 1], jitter: 0}")
    await r.post(event(1))
    due = await wait_for(lambda: db_rows(tmp_path / "relay.db",
                                         "SELECT next_attempt_at FROM jobs WHERE state='pending'"
                                         " AND attempts=1"))
    assert due == [(clock.now + 60,)]


async def test_hanging_receiver_times_out_and_is_retried_a_minute_later(running, sink, tmp_path):
    clock = FakeClock()
    sink.script["/hang"] = ["hang"]
    r = await running(receivers(sink, hang="hang") + "default_receiver: hang\n", clock=clock,
                      sending="attempt_timeout: 0.3s\n  retry: {schedule: [0, 1], jitter: 0}")
    await r.post(event(1))
    row = await wait_for(lambda: db_rows(
        tmp_path / "relay.db", "SELECT next_attempt_at, last_error FROM jobs WHERE attempts=1"))
    assert row[0][0] >= clock.now + 60
    assert "timed out" in row[0][1].lower() or "timeout" in row[0][1].lower()


async def test_event_older_than_max_age_is_not_retried(running, sink, tmp_path):
    clock = FakeClock()
    sink.default_status = 500
    r = await running(receivers(sink, x="x") + "default_receiver: x\n", clock=clock,
                      sending="retry: {schedule: [0, 1h], jitter: 0, max_age: 30m}")
    await r.post(event(1))
    dead = await wait_for(lambda: db_rows(tmp_path / "relay.db",
                                          "SELECT last_error FROM jobs WHERE state='dead'"))
    assert dead[0][0].startswith("gave up after 1 attempts")


async def test_restart_keeps_the_schedule(running, sink, tmp_path):
    clock = FakeClock()
    sink.script["/x"] = [500]
    cfg = receivers(sink, x="x") + "default_receiver: x\n"
    sending = "retry: {schedule: [0, 10m], jitter: 0}"
    r = await running(cfg, clock=clock, sending=sending)
    await r.post(event(1))
    await wait_for(lambda: db_rows(tmp_path / "relay.db", "SELECT 1 FROM jobs WHERE attempts=1"))
    await r.relay.stop()
    again = await running(cfg, clock=clock, sending=sending)
    await ticked(again.relay)
    assert len(sink.hits) == 1  # not hurried by the restart
    clock.advance(601)
    await ticked(again.relay)
    await wait_for(lambda: len(sink.messages("x")) == 1)


# ---------------------------------------------------------------- dead letters


async def make_dead(running, sink, tmp_path):
    sink.script["/a"] = [400, 400]
    sink.script["/b"] = [404]
    r = await running(receivers(sink, a="a", b="b")
                      + "routes:\n  - {match: {event: delivery.updated}, receivers: [a, b]}\n")
    await r.post(event(1))
    await r.post(event(2, status="delivered"))
    await wait_for(lambda: len(db_rows(tmp_path / "relay.db",
                                       "SELECT id FROM jobs WHERE state='dead'")) == 3)
    return r


def cli(*args, config):
    return run_relay([*args, "-c", str(config)], capture_output=True, text=True, timeout=30)


async def test_dead_letters_list_show_and_replay_from_the_cli(running, sink, tmp_path):
    r = await make_dead(running, sink, tmp_path)
    cfg = tmp_path / "config.yaml"
    out = await asyncio.to_thread(cli, "dead", "list", config=cfg)
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["JOB", "RECEIVER", "DELIVERY", "ATTEMPTS", "LAST", "ERROR"]
    assert len(lines) == 4 and "HTTP 400" in out.stdout
    job_id = lines[1].split()[0]
    show = await asyncio.to_thread(cli, "dead", "show", job_id, config=cfg)
    assert "title: Delivery d1: In transit" in show.stdout
    assert '"delivery_id": "d1"' in show.stdout and "failed" in show.stdout
    assert sink.url() not in show.stdout + out.stdout  # no receiver URL at rest or on screen
    replay = await asyncio.to_thread(cli, "dead", "replay", "--receiver", "b", config=cfg)
    assert replay.stdout.strip() == "replayed 1 job(s)"
    await wait_for(lambda: len(sink.messages("b")) == 2, message="replayed job sent")
    assert sink.messages("b")[-1]["title"] == "Delivery d1: In transit"  # exactly as rendered
    replay_all = await asyncio.to_thread(cli, "dead", "replay", "--all", config=cfg)
    assert replay_all.stdout.strip() == "replayed 2 job(s)"
    await wait_for(lambda: len(sink.messages("a")) == 2)
    assert len(sink.messages("b")) == 2
    none_left = await asyncio.to_thread(cli, "dead", "replay", "--all", config=cfg)
    assert none_left.returncode == 1
    assert r.relay.worker.running


async def test_dead_cli_errors_are_one_line(tmp_path):
    out = await asyncio.to_thread(cli, "dead", "replay", config=tmp_path / "missing.yaml")
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0


async def admin(r, method, path, token="admin-secret", body=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with r.session.request(method, r.url + path, json=body, headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers


async def test_dead_letters_through_the_admin_api(running, sink, tmp_path):
    r = await make_dead(running, sink, tmp_path)
    status, body, headers = await admin(r, "GET", "/-/dead", token="wrong")
    assert status == 401 and body["error"] == "Unauthorized"
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert (await admin(r, "GET", "/-/dead", token=TOKEN))[0] == 401  # webhook token is not admin
    status, body, _ = await admin(r, "GET", "/-/dead?receiver=a")
    assert status == 200 and [j["receiver"] for j in body["jobs"]] == ["a", "a"]
    job = body["jobs"][0]
    assert "claim_token" not in job
    status, detail, _ = await admin(r, "GET", f"/-/dead/{job['id']}")
    assert detail["event"]["delivery_id"] == "d1" and detail["attempts"][0]["outcome"] == "failed"
    assert (await admin(r, "GET", "/-/dead/999"))[0] == 404
    assert (await admin(r, "POST", "/-/dead/replay", body={}))[0] == 400
    status, body, _ = await admin(r, "POST", "/-/dead/replay", body={"ids": [job["id"]]})
    assert (status, body) == (200, {"replayed": 1})
    await wait_for(lambda: len(sink.messages("a")) == 1)


async def test_the_admin_api_lists_a_removed_receivers_dead_jobs_and_refuses_a_made_up_name(
        running, sink, tmp_path):
    """`GET /-/dead?receiver=b` after `b` left the config lists its dead jobs (what an
    operator looks at before adding it back and replaying), as `dead list --receiver` does;
    a name neither configured nor with dead jobs is still a 400, never "no jobs"."""
    r = await make_dead(running, sink, tmp_path)
    cfg = Path(r.relay.config_path)
    cfg.write_text(cfg.read_text().replace("receivers: [a, b]", "receivers: [a]")
                   .replace(f'  - name: b\n    urls: ["{sink.url("b")}"]\n', ""))
    await r.relay.reload()
    assert "b" not in r.relay.config.receivers
    status, body, _ = await admin(r, "GET", "/-/dead?receiver=b")
    assert status == 200 and [j["receiver"] for j in body["jobs"]] == ["b"]
    status, body, _ = await admin(r, "GET", "/-/dead?receiver=nope")
    assert (status, body["details"]) == (400, "unknown receiver 'nope'")
    status, body, _ = await admin(r, "POST", "/-/dead/replay", body={"receiver": "b"})
    assert status == 400  # replaying to a receiver the config no longer has is refused


async def test_the_admin_api_gives_one_deliverys_timeline_as_json(running, sink, tmp_path):
    """`GET /-/delivery?id=d1`: its events, each job with its attempts (as `GET /-/dead/ID`
    shows a job: no claim token), for scripts; an unknown id is a 404, none a 400, and the
    admin token is needed as for every /-/ route."""
    r = await make_dead(running, sink, tmp_path)
    status, body, _ = await admin(r, "GET", "/-/delivery?id=d1")
    assert status == 200
    assert (body["delivery_id"], body["earlier"]) == ("d1", 0)
    assert [(e["id"], e["type"], e["payload"]["status"]) for e in body["events"]] == [
        (1, "delivery.updated", "in_transit")]
    jobs = {j["receiver"]: j for j in body["jobs"]}
    assert set(jobs) == {"a", "b"} and all("claim_token" not in j for j in jobs.values())
    assert [(j["state"], [(a["outcome"], a["error"][:8]) for a in j["attempts"]])
            for j in (jobs["a"], jobs["b"])] == [("dead", [("failed", "HTTP 400")]),
                                                 ("dead", [("failed", "HTTP 404")])]
    assert (body["timers"], body["live"], body["digests"]) == ([], [], [])
    status, body, _ = await admin(r, "GET", "/-/delivery?id=nope")
    assert (status, body) == (404, {"error": "Not found", "details": "no delivery 'nope'"})
    assert (await admin(r, "GET", "/-/delivery"))[0] == 400
    assert (await admin(r, "GET", "/-/delivery?id=%00"))[0] == 404  # no store holds NUL
    assert (await admin(r, "GET", "/-/delivery?id=d1", token=TOKEN))[0] == 401


async def test_the_delivery_command_prints_what_happened_to_one_delivery(running, sink, tmp_path):
    """`kourier-relay delivery ID`: the status page's delivery page in a terminal. Every
    event with its routes, each notification with its state and attempts, the watches; a
    payload's control characters never reach the terminal; an unknown id is one line."""
    sink.script["/b"] = [404]
    r = await running(receivers(sink, a="a", b="b") + """\
routes:
  - {name: all, match: {event: delivery.updated}, receivers: [a, b], title: "{{ note }} x"}
watches:
  - {name: stuck, start: {event: delivery.updated}, stop: [{status: delivered}], after: 1h,
     receivers: [a]}
""", clock=FakeClock())
    assert (await r.post(event(1, note="\x1b[31mred", status="in\x1b[2Jtransit")))[0] == 202
    await wait_for(lambda: len(db_rows(tmp_path / "relay.db", "SELECT id FROM jobs"
                                       " WHERE state IN ('sent', 'dead')")) == 2)
    out = await asyncio.to_thread(cli, "delivery", "d1", config=tmp_path / "config.yaml")
    assert (out.returncode, out.stderr) == (0, "")
    shown = re.sub(r"\(\d+ ms\)", "(N ms)", out.stdout)
    at = "2027-01-15 08:00:00 UTC"
    assert shown.splitlines() == [
        "delivery d1: 1 event; notifications: 1 dead, 1 sent",
        "",
        f"{at}  delivery.updated  intransit  (event 1)",
        "  routes: all",
        '  -> a[0] sent: "red x" (route all, job 1)',
        f"       {at} sent (N ms)",
        '  -> b[0] dead: "red x" (route all, job 2)',
        f"       {at} failed (N ms): HTTP 404: Failed to send JSON POST notification: Page not"
        " found., error=404.; the service said: ok",
        "",
        "watches:",
        "  stuck: armed, fires 2027-01-15 08:01:00 UTC unless a stop event comes (its event was"
        " already older than the watch's time: a minute after receipt)"]
    assert "\x1b" not in out.stdout
    missing = await asyncio.to_thread(cli, "delivery", "nope", config=tmp_path / "config.yaml")
    assert (missing.returncode, missing.stdout, missing.stderr) == (
        1, "", "error: no delivery 'nope' in the store (or its events are older than"
               " store.retention)\n")


async def test_dead_list_json_is_the_admin_apis_jobs_as_an_array(running, sink, tmp_path):
    r = await make_dead(running, sink, tmp_path)
    out = await asyncio.to_thread(cli, "dead", "list", "--json", config=tmp_path / "config.yaml")
    status, body, _ = await admin(r, "GET", "/-/dead")
    assert (out.returncode, status) == (0, 200)
    assert json.loads(out.stdout) == body["jobs"]  # docs/commands.md: the same jobs, unwrapped


async def test_admin_api_is_off_without_an_admin_token(running, sink):
    r = await running(receivers(sink, a="a") + "default_receiver: a\n", admin='""')
    status, body, _ = await admin(r, "GET", "/-/dead")
    assert status == 403 and "admin_token" in body["details"]


# ---------------------------------------------------------------- rate limit, isolation, circuit


async def test_rate_limited_and_hanging_receivers_do_not_slow_a_third(running, sink, tmp_path):
    clock = FakeClock()
    sink.script["/hang"] = ["hang"] * 10
    r = await running(receivers(sink, limited="limited rate_limit: 1/s", hang="hang", fast="fast")
                      + "routes:\n  - {match: {event: delivery.updated},"
                        " receivers: [limited, hang, fast]}\n", clock=clock,
                      sending="attempt_timeout: 5s\n  retry: {schedule: [0, 1h], jitter: 0}")
    for n in range(5):
        await r.post(event(n))
    await wait_for(lambda: len(sink.messages("fast")) == 5, timeout=3,
                   message="the fast receiver to get all five while the others wait")
    assert len(sink.messages("limited")) == 1  # the bucket's one token; the clock stands still
    for sent in range(2, 6):  # one per second of the relay's clock, never sooner
        clock.advance(0.5)
        await ticked(r.relay)
        assert len(sink.messages("limited")) == sent - 1
        clock.advance(0.5)
        await ticked(r.relay)
        await wait_for(lambda n=sent: len(sink.messages("limited")) == n)

    def starts() -> list[float]:
        return [at for (at,) in db_rows(tmp_path / "relay.db", "SELECT a.at FROM attempts a JOIN"
                                        " jobs j ON j.id = a.job_id WHERE j.receiver='limited'"
                                        " ORDER BY a.at")]

    # The sink sees the fifth message before the worker has recorded its attempt.
    await wait_for(lambda: len(starts()) == 5, message="five attempts recorded")
    at = starts()
    assert [b - a for a, b in zip(at, at[1:], strict=False)] == [1.0] * 4


async def test_circuit_pauses_a_failing_receiver_and_resumes_after_a_probe(running, sink,
                                                                           tmp_path):
    clock = FakeClock()
    sink.script["/flaky"] = [500, 500, 500]  # then it answers again
    r = await running(receivers(sink, flaky="flaky", log="log") +
                      "routes:\n  - {match: {event: delivery.updated}, receivers: [flaky]}\n",
                      clock=clock,
                      sending="retry: {schedule: [0, 1, 1, 1, 1, 1, 1, 1], jitter: 0}\n"
                               "  circuit: {failures: 3, cooldown: 60}\n"
                               "  fallback_receiver: log")
    for n in range(3):
        await r.post(event(n))
    await wait_for(lambda: sink.hits.count("/flaky") == 3)
    notice = await wait_for(lambda: sink.messages("log"), message="fallback notice")
    assert notice[0]["title"] == "Receiver flaky is failing (urls[0]: json://***)"
    clock.advance(30)  # the jobs are due again, but the circuit is open
    await ticked(r.relay)
    assert sink.hits.count("/flaky") == 3
    clock.advance(31)
    await ticked(r.relay)
    await wait_for(lambda: len(sink.messages("flaky")) == 3, message="resumed after the probe")

    def sent_attempts():
        rows = db_rows(tmp_path / "relay.db", "SELECT attempts FROM jobs WHERE receiver='flaky'"
                                              " AND state='sent' ORDER BY id")
        return rows if len(rows) == 3 else None

    attempts = await wait_for(sent_attempts, message="all three recorded as sent")
    assert attempts == [(2,), (2,), (2,)]  # paused jobs did not burn attempts


# ---------------------------------------------------------------- backpressure and store faults


async def test_full_backlog_answers_503_and_keeps_nothing(running, sink, tmp_path):
    sink.default_status = 500
    r = await running(receivers(sink, x="x") + "default_receiver: x\n",
                      store="max_backlog: 2",
                      sending="retry: {schedule: [0, 1h], jitter: 0}")
    assert (await r.post(event(1)))[0] == 202
    assert (await r.post(event(2)))[0] == 202
    status, body, headers = await r.post(event(3))
    assert status == 503 and body["error"] == "Backlog full" and headers["Retry-After"]
    assert db_rows(tmp_path / "relay.db", "SELECT count(*) FROM events") == [(2,)]


async def test_with_suppress_stale_off_every_update_is_sent(running, sink):
    """An audit log's route gets every event, the stale one and the one after a cancel."""
    r = await running(receivers(sink, x="x") + "default_receiver: x\n"
                      "deliveries: {suppress_stale: false}\n")
    for kind, at in [("delivery.updated", "14:40"), ("delivery.updated", "14:35"),
                     ("delivery.cancelled", "14:45"), ("delivery.updated", "14:50")]:
        await r.post({"event": kind, "delivery_id": "d1", "status": "in_transit",
                      "timestamp": f"2024-09-14T{at}:00Z"})
    await wait_for(lambda: len(sink.messages("x")) == 4, message="all four updates")


async def test_locked_store_answers_503_then_recovers(running, sink, tmp_path):
    r = await running(receivers(sink, x="x") + "default_receiver: x\n",
                      store="busy_timeout: 0.2s")
    blocker = sqlite3.connect(tmp_path / "relay.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        status, body, headers = await r.post(event(1))
        assert status == 503 and body["error"] == "Store unavailable"
        assert headers["Retry-After"]
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert db_rows(tmp_path / "relay.db", "SELECT count(*) FROM events") == [(0,)]
    assert (await r.post(event(1)))[0] == 202
    await wait_for(lambda: len(sink.messages("x")) == 1)


@pytest.mark.parametrize("setting", ["deliveries: {suppress_stale: true}\n", ""],
                         ids=["on", "by default"])
@pytest.mark.parametrize("sequence, sent", [
    (["delivery.created", "delivery.updated@14:40", "delivery.updated@14:35"], 2),
    (["delivery.cancelled", "delivery.updated@14:40"], 1),
])
async def test_stale_and_post_cancel_updates_are_suppressed(running, sink, sequence, sent,
                                                            setting):
    r = await running(receivers(sink, x="x") + "default_receiver: x\n" + setting)
    for item in sequence:
        kind, _, at = item.partition("@")
        await r.post({"event": kind, "delivery_id": "d1", "status": "in_transit",
                      "timestamp": f"2024-09-14T{at or '14:30'}:00Z"})
    await wait_for(lambda: len(sink.messages("x")) == sent)
    await ticked(r.relay)
    assert len(sink.messages("x")) == sent
