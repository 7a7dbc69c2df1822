"""/metrics after a known sequence, /readyz, and JSON log lines from a real `serve`."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from relay import __version__
from tests.conftest import (
    BASE_CONFIG,
    DEFAULTS,
    TOKEN,
    free_port,
    wait_for,
    write_config,
)
from tests.forkserver import RelayProcess

STAMP = "2024-09-14T14:30:00Z"
THREE_RECEIVERS = """
receivers:
  - {name: ok, urls: ["{ok}"]}
  - {name: flaky, urls: ["{flaky}"]}
  - {name: broken, urls: ["{broken}"]}
routes:
  - name: all
    match: {event: "delivery.*"}
    receivers: [ok, flaky, broken]
"""


def event(delivery_id: str, status: str = "in_transit") -> dict[str, str]:
    return {"event": "delivery.updated", "delivery_id": delivery_id, "status": status,
            "timestamp": STAMP}


async def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by (name, sorted labels), via prometheus' own parser."""
    async with aiohttp.ClientSession() as s, s.get(f"{url}/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=")
        text = await r.text()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def dead_jobs(url: str) -> float | None:
    return value(await scrape(url), "kourier_relay_dead_jobs")


async def test_metrics_count_a_known_sequence(running, sink):
    sink.script = {"/flaky": [500], "/broken": [400]}
    r = await running(THREE_RECEIVERS,
                      ok=sink.url("ok"), flaky=sink.url("flaky"), broken=sink.url("broken"))
    assert (await r.post(event("D-1")))[0] == 202            # accepted: 3 jobs
    assert (await r.post(event("D-1")))[0] == 200            # duplicate
    assert (await r.post(event("D-2"), token="wrong"))[0] == 401
    assert (await r.post(raw=b"{not json"))[0] == 400
    await wait_for(lambda: len(sink.messages()) == 2, message="ok and flaky to be sent")
    await wait_for(lambda: dead_jobs(r.url), message="broken to go dead")

    m = await scrape(r.url)
    events = "kourier_relay_events_total"
    assert value(m, events, type="delivery.updated", outcome="accepted") == 1
    assert value(m, events, type="delivery.updated", outcome="duplicate") == 1
    assert value(m, events, type="", outcome="rejected_auth") == 1
    assert value(m, events, type="", outcome="rejected_400") == 1
    notes = "kourier_relay_notifications_total"
    assert value(m, notes, receiver="ok", outcome="sent") == 1
    assert value(m, notes, receiver="flaky", outcome="retry") == 1
    assert value(m, notes, receiver="flaky", outcome="sent") == 1
    assert value(m, notes, receiver="broken", outcome="failed") == 1  # an attempt outcome
    assert value(m, notes, receiver="broken", outcome="dead") is None
    assert value(m, "kourier_relay_dead_letters_total", receiver="broken", reason="failed") == 1
    assert value(m, notes, receiver="ok", outcome="retry") is None
    attempts = "kourier_relay_attempt_seconds_count"
    assert [value(m, attempts, receiver=n) for n in ("ok", "flaky", "broken")] == [1, 2, 1]
    assert value(m, "kourier_relay_queue_depth") == 0
    assert value(m, "kourier_relay_oldest_pending_seconds") == 0
    assert value(m, "kourier_relay_dead_jobs") == 1
    assert value(m, "kourier_relay_config_last_reload_successful") == 1
    assert value(m, "kourier_relay_config_last_reload_success_timestamp_seconds") > 1.7e9
    assert value(m, "kourier_relay_build_info", version=__version__) == 1


async def test_queue_depth_and_oldest_pending_follow_waiting_jobs(running, sink):
    r = await running(THREE_RECEIVERS,
                      ok=sink.url("ok"), flaky=sink.url("flaky"), broken=sink.url("broken"))
    await r.relay.worker.pause()
    assert (await r.post(event("D-3")))[0] == 202
    m = await scrape(r.url)
    assert value(m, "kourier_relay_queue_depth") == 3
    assert 0 <= value(m, "kourier_relay_oldest_pending_seconds") < 60
    r.relay.worker.resume()
    await wait_for(lambda: len(sink.messages()) == 3)
    await wait_for(lambda: queue_empty(r.url), message="the queue to drain")


async def queue_empty(url: str) -> bool:
    return value(await scrape(url), "kourier_relay_queue_depth") == 0


async def get(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.json()


async def test_readyz_is_503_while_the_store_cannot_write_and_recovers(running, tmp_path):
    r = await running(store="busy_timeout: 100ms")
    assert await get(f"{r.url}/readyz") == (200, {"status": "ready", "checks": {
        "config": True, "store": True, "worker": True}})
    assert await get(f"{r.url}/healthz") == (200, {"status": "ok"})
    other = sqlite3.connect(tmp_path / "relay.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the only write lock
        assert await get(f"{r.url}/readyz") == (503, {"status": "not ready", "checks": {
            "config": True, "store": False, "worker": True}})
        assert (await get(f"{r.url}/healthz"))[0] == 200  # alive, just not ready
    finally:
        other.execute("ROLLBACK")
        other.close()
    await wait_for(lambda: ready(r.url), message="readiness to come back")


async def test_readyz_is_503_while_the_store_answers_but_the_workers_passes_fail(
        running, tmp_path, caplog):
    """A table the worker's pass needs is gone (a grant missing on PostgreSQL does the
    same): the store's ping works, ingest works, nothing is sent; /readyz says so."""
    from relay.store.schema import TABLES_11, render

    r = await running()
    other = sqlite3.connect(tmp_path / "relay.db", isolation_level=None)
    try:
        other.execute("DROP TABLE relays")
        r.relay.worker.config_changed()  # the next pass announces (and fails) now
        # (A ping that shares the failing pass's batch fails with it: wait for one alone.)
        status, body = await wait_for(lambda: worker_not_ready(r.url), message="not ready")
        assert body["checks"] == {"config": True, "store": True, "worker": False}
        assert body["reasons"]["worker"].startswith("its passes fail, so nothing is sent:")
        assert "relays" in body["reasons"]["worker"]
        other.executescript(render(TABLES_11, (), "sqlite"))
    finally:
        other.close()
    r.relay.worker.config_changed()
    await wait_for(lambda: ready(r.url), message="readiness to come back")


async def worker_not_ready(url: str) -> tuple[int, dict] | None:
    status, body = await get(f"{url}/readyz")
    return (status, body) if status == 503 and body["checks"]["store"] else None


async def ready(url: str) -> bool:
    return (await get(f"{url}/readyz"))[0] == 200


async def test_json_logs_carry_request_id_on_ingest_and_job_id_on_attempts(tmp_path):
    port = free_port()
    cfg = write_config(tmp_path / "config.yaml", BASE_CONFIG + """
receivers:
  - name: log
    urls: ["console://"]
default_receiver: log
""", port=port, db=tmp_path / "relay.db", **DEFAULTS)
    err_path = tmp_path / "stderr.log"
    with open(err_path, "wb") as err:
        proc = RelayProcess(["serve", "-c", str(cfg), "--log-format", "json"],
                            stdout=subprocess.DEVNULL, stderr=err, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_for(lambda: _up(url, proc, err_path), 20, message="relay subprocess to be ready")
        async with aiohttp.ClientSession() as s:
            for token, rid in ((TOKEN, "req-accepted"), ("wrong", "req-rejected")):
                async with s.post(f"{url}/webhook", json=event("D-4"), headers={
                        "Authorization": f"Bearer {token}", "X-Request-Id": rid}) as resp:
                    assert resp.headers["X-Request-Id"] == rid
        await wait_for(lambda: _line(err_path, "sent"), message="the attempt log line")
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 20)
    lines = [json.loads(line) for line in err_path.read_text().splitlines()]  # all JSON
    accepted = _line(err_path, "accepted")
    assert accepted["request_id"] == "req-accepted" and accepted["delivery_id"] == "D-4"
    assert accepted["level"] == "info" and accepted["jobs"] == 1
    rejected = _line(err_path, "rejected: bad or missing token")
    assert rejected["request_id"] == "req-rejected" and rejected["level"] == "warning"
    sent = _line(err_path, "sent")
    assert isinstance(sent["job_id"], int) and sent["receiver"] == "log"
    assert {"time", "level", "logger", "message"} <= set(lines[0])


async def _up(url: str, proc: RelayProcess, log: Path) -> bool:
    assert proc.poll() is None, f"the relay exited:\n{log.read_text()}"
    try:
        return await ready(url)
    except aiohttp.ClientError:
        return False


def _line(path: Path, message: str) -> dict | None:
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record["message"] == message:
            return record
    return None


async def test_unknown_event_types_cannot_grow_metrics_without_bound(running):
    r = await running("receivers: [{name: log, urls: ['console://']}]\n")

    async def size() -> int:
        async with r.session.get(f"{r.url}/metrics") as resp:
            return len(await resp.read())

    await r.post({"event": "delivery.updated", "delivery_id": "D-0", "timestamp": STAMP})
    before = await size()
    import random
    rng = random.Random(11)
    for n in range(300):  # each label a type added would be ~80 bytes: 4 would fail the bound
        kind = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz._", k=24))
        assert (await r.post({"event": kind, "delivery_id": f"D-{n}", "timestamp": STAMP}))[0] \
            == 202
    after = await size()
    assert after - before < 300, (before, after)
    m = await scrape(r.url)
    assert value(m, "kourier_relay_events_total", type="other", outcome="accepted") == 300
