"""Send processes (`sending.processes` > 1): real children sending to a real sink.

The relay process claims and records; the children only send. These tests
prove the failure paths: a child killed mid-send, a SIGTERM while sends are in
flight or stuck, a reload, one stuck send next to a healthy one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from pathlib import Path

from relay import sendproc
from tests.conftest import (
    TOKEN,
    FakeClock,
    free_port,
    spawn_relay,
    wait_for,
    wait_healthy,
    write_config,
)
from tests.test_live_email import smtp  # noqa: F401  (fixture)
from tests.test_processes import processes_config

POOL = """\
receivers:
  - name: hook
    urls: ["{url}"]
    concurrency: 4
  - name: other
    urls: ["{other}"]
routes:
  - match: {event: delivery.created}
    receivers: [hook]
    title: "{{ delivery_id }}"
  - match: {event: delivery.updated}
    receivers: [hook, other]
    title: "{{ delivery_id }}"
"""
SENDING = """processes: 2
  grace_period: {grace}
  retry: {schedule: [0, 0.1, 0.2], jitter: 0}"""


def event(n: int | str, kind: str = "delivery.created") -> dict[str, str]:
    return {"event": kind, "delivery_id": f"d{n}", "timestamp": "2024-09-14T14:30:00Z"}


async def start_pool(running, sink, grace: str = "2s", **paths: str):
    relay = await running(POOL, sending=SENDING.replace("{grace}", grace),
                          url=sink.url(paths.get("hook", "hook")),
                          other=sink.url(paths.get("other", "other")))
    await wait_for(lambda: relay.relay.senders.ready_count() == 1,
                   message="the send process to load its config")
    return relay


async def test_a_send_process_runs_below_the_relay_process_cpu_priority(running, sink):
    """Busy cores run ingest first (the send process is niced), and it still sends."""
    r = await start_pool(running, sink)
    [child] = r.relay.senders.pids()
    own = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, child) == min(19, own + sendproc.NICENESS) > own
    assert (await r.post(event(1)))[0] == 202
    await wait_for(lambda: sink.messages("hook"), message="the send process to send")


async def test_a_send_process_killed_mid_send_has_its_job_sent_again_once(running, sink):
    sink.script["/hook"] = ["hang"]  # the first attempt never gets an answer
    r = await start_pool(running, sink)
    pool = r.relay.senders
    [victim] = pool.pids()
    assert (await r.post(event(1)))[0] == 202
    await wait_for(lambda: sink.hits.count("/hook") == 1, message="the first attempt")
    os.kill(victim, signal.SIGKILL)
    await wait_for(lambda: sink.messages("hook"), message="the job to be sent again")
    assert [m["title"] for m in sink.messages("hook")] == ["d1"]
    assert sink.hits.count("/hook") == 2  # one attempt in the dead child, one retry: no more

    async def recorded() -> list[tuple[str, str]] | None:  # written once the send is back
        timeline = await r.relay.store.timeline("d1")
        outcomes = [(a.attempt.outcome, a.attempt.error) for a in timeline.attempts]
        return outcomes if len(outcomes) >= 2 else None

    outcomes = await wait_for(recorded, message="the retry's outcome in the store")
    assert outcomes[0][0] == "retry"
    assert f"the send process stopped during the send (pid {victim}" in outcomes[0][1]
    assert outcomes[1:] == [("sent", "")]
    # the retry may have gone out before the new send process was up (the relay sends itself)
    await wait_for(lambda: pool.restarts == 1 and victim not in pool.pids()
                   and len(pool.pids()) == 1, message="one new send process")


async def test_one_stuck_send_does_not_hold_the_send_process(running, sink):
    sink.script["/other"] = ["hang"]
    r = await start_pool(running, sink)
    assert (await r.post(event(1, "delivery.updated")))[0] == 202
    await wait_for(lambda: sink.hits.count("/other") == 1, message="the send that hangs")
    assert (await r.post(event(2)))[0] == 202
    await wait_for(lambda: len(sink.messages("hook")) == 2, message="both hook sends")
    assert sink.hits.count("/other") == 1 and not sink.messages("other")  # still stuck


async def test_a_reload_reaches_the_send_processes(running, sink, tmp_path):
    r = await start_pool(running, sink)
    assert (await r.post(event(1)))[0] == 202
    await wait_for(lambda: sink.messages("hook"), message="the first send")
    config = tmp_path / "config.yaml"
    config.write_text(config.read_text().replace("/hook", "/moved"))
    await r.relay.reload()
    assert (await r.post(event(2)))[0] == 202
    await wait_for(lambda: sink.messages("moved"), message="the send to the new URL")
    assert [m["title"] for m in sink.messages("moved")] == ["d2"]
    assert [m["title"] for m in sink.messages("hook")] == ["d1"]


PROCESS_CONFIG = processes_config("  processes: 2\n  grace_period: {grace}\n", concurrency=4)


def job_states(db: Path) -> list[str]:
    with sqlite3.connect(db) as c:
        return [row[0] for row in c.execute("SELECT state FROM jobs ORDER BY id")]


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "State:\tZ" in f.read()
    except FileNotFoundError:
        return True


def children_of(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


async def post_all(port: int, count: int) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        for n in range(count):
            async with session.post(f"http://127.0.0.1:{port}/webhook", json=event(n),
                                    headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                assert resp.status == 202


async def test_sigterm_lets_sends_in_the_send_processes_finish(tmp_path, sink):
    port, db = free_port(), tmp_path / "relay.db"
    cfg = write_config(tmp_path / "relay.yaml", PROCESS_CONFIG, port=port, token=TOKEN, db=db,
                       url=sink.url("hook"), grace="10s")
    sink.delay = 0.5  # every send is in flight when SIGTERM arrives
    log = tmp_path / "relay.log"
    proc = spawn_relay(cfg, log=log)
    try:
        await asyncio.to_thread(wait_healthy, port)
        await wait_for(lambda: "send process ready" in log.read_text(), message="the child")
        children = children_of(proc.pid)
        await post_all(port, 4)
        await wait_for(lambda: len(sink.hits) == 4, message="four sends in flight")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert sorted(m["title"] for m in sink.messages("hook")) == ["d0", "d1", "d2", "d3"]
    assert job_states(db) == ["sent"] * 4
    assert children and all(gone(pid) for pid in children)


async def test_sigterm_releases_a_send_stuck_past_the_grace_period(tmp_path, sink):
    port, db = free_port(), tmp_path / "relay.db"
    cfg = write_config(tmp_path / "relay.yaml", PROCESS_CONFIG, port=port, token=TOKEN, db=db,
                       url=sink.url("hook"), grace="0.5s")
    sink.script["/hook"] = ["hang"]
    log = tmp_path / "relay.log"
    proc = spawn_relay(cfg, log=log)
    try:
        await asyncio.to_thread(wait_healthy, port)
        await wait_for(lambda: "send process ready" in log.read_text(), message="the child")
        await post_all(port, 1)
        await wait_for(lambda: sink.hits == ["/hook"], message="the stuck send")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert job_states(db) == ["pending"]  # released for the next run, no attempt spent
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT attempts FROM jobs").fetchone()[0] == 0


async def test_sighup_reaches_the_send_processes(tmp_path, sink):
    port, db = free_port(), tmp_path / "relay.db"
    cfg = write_config(tmp_path / "relay.yaml", PROCESS_CONFIG, port=port, token=TOKEN, db=db,
                       url=sink.url("hook"), grace="2s")
    log = tmp_path / "relay.log"
    proc = spawn_relay(cfg, log=log)
    try:
        await asyncio.to_thread(wait_healthy, port)
        await wait_for(lambda: "send process ready" in log.read_text(), message="the child")
        cfg.write_text(cfg.read_text().replace("/hook", "/moved"))
        proc.send_signal(signal.SIGHUP)
        await wait_for(lambda: "config reloaded" in log.read_text(), message="the reload")
        await post_all(port, 1)
        await wait_for(lambda: sink.messages("moved"), message="the send to the new URL")
        assert not sink.messages("hook")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0


# The in-process send's behaviours, in a send process: status tap, classification,
# timeouts, redaction (tests/test_sending.py has the in-process versions).

ONE = """\
receivers:
  - name: x
    urls: ["{url}"]
default_receiver: x
"""


def rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as c:
        return c.execute(sql).fetchall()


async def test_retry_after_is_read_by_the_send_process(running, sink, tmp_path):
    clock = FakeClock()
    sink.script["/slow"] = [(429, {"Retry-After": "120"})]
    r = await running(ONE, clock=clock, url=sink.url("slow"),
                      sending="processes: 2\n  retry: {schedule: [0, 1, 1], jitter: 0}")
    assert (await r.post(event(1)))[0] == 202
    due = await wait_for(lambda: rows(tmp_path / "relay.db", "SELECT next_attempt_at, last_error"
                                      " FROM jobs WHERE state='pending' AND attempts=1"))
    assert due[0][0] == clock.now + 120
    assert due[0][1].startswith("HTTP 429")


async def test_a_4xx_from_the_send_process_is_permanent(running, sink, tmp_path):
    sink.script["/bad"] = [400]
    r = await running(ONE, url=sink.url("bad"), sending="processes: 2")
    assert (await r.post(event(1)))[0] == 202
    dead = await wait_for(lambda: rows(tmp_path / "relay.db",
                                       "SELECT attempts, last_error FROM jobs WHERE state='dead'"))
    assert dead[0][0] == 1 and "error=400" in dead[0][1]


async def test_the_send_process_applies_the_attempt_timeout(running, sink, tmp_path):
    sink.script["/hang"] = ["hang"]
    r = await running(ONE, url=sink.url("hang"),
                      sending="processes: 2\n  attempt_timeout: 0.3s")
    assert (await r.post(event(1)))[0] == 202
    row = await wait_for(lambda: rows(tmp_path / "relay.db",
                                      "SELECT last_error FROM jobs WHERE attempts=1"))
    assert row[0][0] == "timed out after 0.3s"  # the child's socket timeout, not our backstop


async def test_secrets_in_a_url_never_reach_the_attempt_or_the_log(running, tmp_path, capfd):
    secret = "s3cr3tTOKENvalue"
    url = f"json://user:{secret}@127.0.0.1:{free_port()}/hook?-X-Token={secret}"
    r = await running(ONE, url=url, sending="processes: 2\n  retry: {schedule: [0, 1h]}")
    assert (await r.post(event(1)))[0] == 202
    row = await wait_for(lambda: rows(tmp_path / "relay.db",
                                      "SELECT last_error FROM jobs WHERE attempts=1"))
    assert row[0][0] and secret not in row[0][0]
    await r.relay.stop()
    out, err = capfd.readouterr()
    assert secret not in out and secret not in err


async def test_while_no_send_process_can_start_the_relay_sends_itself(tmp_path, sink):
    from aiohttp.test_utils import TestServer

    from relay.lifecycle import Relay

    port = free_port()
    cfg = write_config(tmp_path / "relay.yaml", PROCESS_CONFIG, port=port, token=TOKEN,
                       db=tmp_path / "relay.db", url=sink.url("hook"), grace="1s")
    # a child that cannot start: its log set-up refuses the level and it exits at once
    relay = Relay(str(cfg), env={}, log_args=["--log-level", "nonsense"])
    server = TestServer(relay.web_app(), host="127.0.0.1", port=port)
    await server.start_server()
    try:
        await wait_for(lambda: relay.senders.restarts >= 1, message="a restart")
        assert relay.senders.ready_count() == 0
        await post_all(port, 1)
        await wait_for(lambda: sink.messages("hook"), message="the send in the relay process")
        assert relay.senders._delay > 0.2  # each early death waits longer before the next start
    finally:
        await server.close()
    assert not relay.senders.pids()


async def test_an_emails_thread_headers_cross_to_the_send_process(running, smtp):  # noqa: F811
    from relay.live.email import thread_id
    from tests.test_live_routes import config
    from tests.test_live_routes import event as state

    mail = smtp.url()
    r = await running(config(mail), sending="processes: 2")
    await wait_for(lambda: r.relay.senders.ready_count() == 1, message="the send process")
    assert (await r.post(state(0)))[0] == 202
    (m,) = await wait_for(lambda: smtp.messages(), message="the mail")
    thread = thread_id("D1", "lifecycle", "ops-chat", 0)
    assert (m["In-Reply-To"], m["References"]) == (thread, thread)
    assert len(m.get_all("Message-ID")) == 1
