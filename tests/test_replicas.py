"""Several relay processes on one PostgreSQL database: no loss, no double sends.

Each replica is a real `python -m relay serve` process with its own port; the
sink is a local HTTP server behind Apprise `json://`.
"""

from __future__ import annotations

import asyncio
import math
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests import pgutil
from tests.conftest import (
    TOKEN,
    Sink,
    free_port,
    serve_head,
    spawn_relay,
    wait_for,
    write_config,
)
from tests.forkserver import run_relay

pytestmark = pytest.mark.postgres

CONFIG = serve_head("{dsn}", admin=True) + """\
sending:
  concurrency: {concurrency}
  lease: {lease}
  grace_period: 1s
  retry: {schedule: [0, 0.1, 0.2, 0.5, 1, 1, 1, 1, 1, 1], jitter: 0}
  circuit: {failures: 1000}
receivers:
  - name: hook
    urls: ["{url}"]
    concurrency: {concurrency}
routes:
  - match: {event: delivery.created}
    receivers: [hook]
    title: "{{ delivery_id }}"
"""
ADMIN = "admin-secret"
CONCURRENCY = 4  # per replica: bounds what one killed replica can have in flight


@dataclass
class Replica:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


Start = Callable[..., Awaitable[list[Replica]]]


@pytest.fixture
async def schema_dsn() -> AsyncIterator[str]:
    """A fresh schema; tests ask for it before `replicas`, so it outlives the processes."""
    async with pgutil.fresh_schema(await pgutil.base_dsn()) as dsn:
        yield dsn


@pytest.fixture
async def replicas(tmp_path: Path, sink: Sink) -> AsyncIterator[Start]:
    """Start `count` relay processes on one database; all are stopped after the test."""
    started: list[Replica] = []

    async def start(count: int, dsn: str, lease: str = "3s") -> list[Replica]:
        group = []
        for _ in range(count):
            port = free_port()
            cfg = write_config(tmp_path / f"replica-{port}.yaml", CONFIG, port=port,
                               token=TOKEN, dsn=dsn, lease=lease, url=sink.url("hook"),
                               concurrency=CONCURRENCY, admin=ADMIN)
            replica = Replica(port, spawn_relay(cfg, log=tmp_path / f"replica-{port}.log"))
            started.append(replica)
            group.append(replica)
        await asyncio.gather(*(ready(r) for r in group))
        return group

    yield start
    await stop(started)


async def stop(group: list[Replica]) -> None:
    for r in group:
        if r.proc.poll() is None:
            r.proc.send_signal(signal.SIGTERM)
    for r in group:
        await asyncio.to_thread(r.proc.wait, 15)


async def ready(replica: Replica) -> None:
    async def up() -> bool:
        assert replica.proc.poll() is None, "relay exited during start-up"
        return await status_of(replica, "/readyz") == 200

    await wait_for(up, timeout=15, message=f"replica on port {replica.port} ready")


async def status_of(replica: Replica, path: str) -> int | None:
    try:
        async with aiohttp.ClientSession() as s, s.get(replica.url + path) as r:
            return r.status
    except aiohttp.ClientError:
        return None


async def post(session: aiohttp.ClientSession, replica: Replica, delivery_id: str) -> int | None:
    """The HTTP status, or None when the replica did not answer (it is dead)."""
    body = {"event": "delivery.created", "delivery_id": delivery_id,
            "timestamp": "2024-09-14T14:30:00Z"}
    try:
        async with session.post(replica.url + "/webhook", json=body,
                                headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            return r.status
    except (aiohttp.ClientError, TimeoutError):
        return None


def arrived(sink: Sink) -> Counter[str]:
    return Counter(m["title"] for m in sink.messages("hook"))


async def settled(dsn: str) -> bool:
    """No job is waiting or being sent any more, so no further notification can arrive."""
    rows = await pgutil.fetch(dsn, "SELECT count(*) FROM jobs WHERE state IN ('pending', 'claimed')")
    return bool(rows[0][0] == 0)


async def test_a_replica_killed_under_load_loses_no_acknowledged_event(
        schema_dsn: str, replicas: Start, sink: Sink) -> None:
    sink.delay = 0.2  # sends take a while, so the victim dies with some in flight
    group = await replicas(3, schema_dsn, lease="3s")
    victim = group[0]
    acked: list[str] = []
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async def send(n: int) -> None:
            status = await post(session, group[n % 3], f"e{n}")
            if status is not None and 200 <= status < 300:
                acked.append(f"e{n}")

        await asyncio.gather(*(send(n) for n in range(45)))
        owned = f"%:{victim.proc.pid}:%"
        held = await wait_for(lambda: pgutil.fetch(schema_dsn, "SELECT id FROM jobs WHERE state ="
                                            " 'claimed' AND claimed_by LIKE $1", owned),
                              timeout=10, message="the victim to hold claims")
        victim.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(victim.proc.wait, 10)
        orphaned = [r[0] for r in await pgutil.fetch(
            schema_dsn, "SELECT id FROM jobs WHERE state = 'claimed' AND claimed_by LIKE $1",
            owned)]
        await asyncio.gather(*(send(n) for n in range(45, 90)))

    await wait_for(lambda: set(acked) <= set(arrived(sink)), timeout=30,
                   message="every acknowledged event at the sink")
    await wait_for(lambda: settled(schema_dsn), timeout=15, message="the queue to drain")
    assert held and len(acked) >= 75  # 45 before the kill, 30 to the survivors after it
    taken_over = await pgutil.fetch(schema_dsn, "SELECT state FROM jobs WHERE id = ANY($1::bigint[])",
                             orphaned)
    assert all(r[0] == "sent" for r in taken_over)
    extra = sum(count - 1 for count in arrived(sink).values())
    assert extra <= CONCURRENCY, arrived(sink).most_common(5)


async def test_the_same_event_posted_to_two_replicas_at_once_is_sent_once(
        schema_dsn: str, replicas: Start, sink: Sink) -> None:
    first, second = await replicas(2, schema_dsn)
    ids = [f"dup{n}" for n in range(15)]
    async with aiohttp.ClientSession() as session:
        statuses = await asyncio.gather(*(post(session, r, i) for i in ids
                                          for r in (first, second)))
    pairs = [sorted(s or 0 for s in statuses[k:k + 2]) for k in range(0, len(statuses), 2)]
    assert pairs == [[200, 202]] * len(ids)  # one accepted, one duplicate, per event
    await wait_for(lambda: set(ids) <= set(arrived(sink)), message="every event at the sink")
    await wait_for(lambda: settled(schema_dsn), message="the queue to drain")
    assert arrived(sink) == Counter(ids)


async def test_a_database_restart_under_load_gives_503s_then_full_recovery(
        replicas: Start, sink: Sink) -> None:
    await pgutil.base_dsn()  # same skip/require rule as every PostgreSQL test
    with pgutil.private_cluster(free_port()) as cluster:  # never restart the shared server
        group = await replicas(2, cluster.dsn, lease="10s")
        acked: list[str] = []
        statuses: Counter[int | None] = Counter()
        done = asyncio.Event()
        loaders = [asyncio.create_task(load(r, f"r{i}", acked, statuses, done))
                   for i, r in enumerate(group)]
        try:
            await wait_for(lambda: len(acked) >= 20, message="events acknowledged")
            await asyncio.to_thread(cluster.stop)
            await wait_for(lambda: statuses[503] >= 10, message="503s while the database is down")
            assert await status_of(group[0], "/readyz") == 503
            before = len(acked)
            await asyncio.to_thread(cluster.start)
            await wait_for(lambda: len(acked) >= before + 20, timeout=15,
                           message="ingest to recover")
        finally:
            done.set()
            await asyncio.gather(*loaders)
        await wait_for(lambda: set(acked) <= set(arrived(sink)), timeout=20,
                       message="every acknowledged event at the sink")
        assert await status_of(group[1], "/readyz") == 200
        assert set(statuses) <= {202, 503}, statuses
        await stop(group)


async def test_while_the_database_is_down_no_replica_shows_stale_or_broken_data(
        replicas: Start, sink: Sink) -> None:
    """Metrics show no last-known backlog, pages and the admin API answer 503 JSON, /readyz
    says not ready; once the database is back, every replica says ready and counts again."""
    await pgutil.base_dsn()
    with pgutil.private_cluster(free_port()) as cluster:
        group = await replicas(2, cluster.dsn, lease="30s")
        sink.script["/hook"] = ["hang"] * 3  # three notifications stay in flight
        async with aiohttp.ClientSession() as session:
            for n in range(3):
                assert await post(session, group[n % 2], f"q{n}") == 202
        known = {"queue_depth": 3.0, "dead_jobs": 0.0, "circuit_open": 0.0}
        for r in group:
            await wait_for(lambda r=r: gauges(r, "circuit_open"),
                           message="the backlog in the metrics")
            assert await gauges(r, "circuit_open") == known
        await asyncio.to_thread(cluster.stop)
        for r in group:
            assert await gauges(r) is None  # unknown, not the backlog read before
            assert math.isnan(await circuit_open(r))  # nor the circuit seen before
            for path in ("/ui/", "/ui/dead", "/ui/delivery?id=q0", "/-/dead"):
                status, body = await admin_get(r, path)
                assert (status, body["error"]) == (503, "Store unavailable"), (path, body)
            assert await status_of(r, "/readyz") == 503
        await asyncio.to_thread(cluster.start)
        for r in group:
            await ready(r)
            await wait_for(lambda r=r: gauges(r, "circuit_open"),
                           message="the metrics to count again")
            assert await gauges(r, "circuit_open") == known
        await stop(group)


async def test_dead_letters_replayed_on_two_replicas_at_once_are_each_sent_once(
        schema_dsn: str, replicas: Start, sink: Sink) -> None:
    first, second = await replicas(2, schema_dsn)
    ids = [f"dead{n}" for n in range(6)]
    sink.script["/hook"] = [404] * len(ids)  # refused for good: each goes dead at once
    async with aiohttp.ClientSession() as session:
        for n, delivery in enumerate(ids):
            assert await post(session, (first, second)[n % 2], delivery) == 202
        await wait_for(lambda: settled(schema_dsn), message="every job dead")
        listed = [await admin_get(r, "/-/dead") for r in (first, second)]
        assert listed[0] == listed[1] and len(listed[0][1]["jobs"]) == len(ids)
        for r in (first, second):  # each replica counts the dead letters the other buried
            assert await gauges(r) == {"queue_depth": 0.0, "dead_jobs": float(len(ids))}
        headers = {"Authorization": f"Bearer {ADMIN}"}

        async def replay(r: Replica) -> int:
            async with session.post(r.url + "/-/dead/replay", json={"receiver": "hook"},
                                    headers=headers) as resp:
                assert resp.status == 200
                return int((await resp.json())["replayed"])

        counts = await asyncio.gather(*(replay(r) for r in (first, second, first, second)))
    assert sum(counts) == len(ids)
    await wait_for(lambda: set(ids) <= set(arrived(sink)), message="every replay at the sink")
    await wait_for(lambda: settled(schema_dsn), message="the queue to drain")
    assert arrived(sink) == Counter(ids)
    for r in (first, second):
        assert await gauges(r) == {"queue_depth": 0.0, "dead_jobs": 0.0}


async def test_a_search_on_one_replica_finds_exactly_the_delivery_another_stored(
        schema_dsn: str, replicas: Start, sink: Sink) -> None:
    first, second = await replicas(2, schema_dsn)
    odd = ["50%_off 'ü' \"x\"", "50%_off 'ü' \"x\"2", "50X_off 'ü' \"x\""]
    async with aiohttp.ClientSession() as session:
        for delivery in odd:
            assert await post(session, second, delivery) == 202
        headers = {"Authorization": f"Bearer {ADMIN}"}
        for wanted, found in ((odd[0], True), ("50%", False), ("50%_off 'Ü' \"x\"", False),
                              ("_0%_off 'ü' \"x\"", False)):
            async with session.get(first.url + "/ui/deliveries", params={"delivery_id": wanted},
                                   headers=headers, allow_redirects=False) as r:
                assert (r.status == 303) is found, wanted
                if found:
                    async with session.get(first.url + r.headers["Location"],
                                           headers=headers) as page:
                        text = await page.text()
                    assert page.status == 200 and text.count('class="event card"') == 1


async def gauges(replica: Replica, *more: str) -> dict[str, float] | None:
    """The store-read gauges of /metrics (and `more`, such as `circuit_open`, whose one
    sample is the receiver hook's); None while any is unknown (NaN) or not there yet."""
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as s, s.get(replica.url + "/metrics") as r:
        assert r.status == 200
        text = await r.text()
    names = ("queue_depth", "dead_jobs", *more)
    found = {f.name.removeprefix("kourier_relay_"): f.samples[0].value
             for f in text_string_to_metric_families(text)
             if f.name.removeprefix("kourier_relay_") in names and f.samples}
    return found if len(found) == len(names) and not any(map(math.isnan, found.values())) \
        else None


async def circuit_open(replica: Replica) -> float:
    """`kourier_relay_circuit_open{receiver="hook",url="0"}` as /metrics shows it now."""
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as s, s.get(replica.url + "/metrics") as r:
        text = await r.text()
    [value] = [sample.value for f in text_string_to_metric_families(text)
               for sample in f.samples if sample.name == "kourier_relay_circuit_open"
               and sample.labels == {"receiver": "hook", "url": "0"}]
    return value


async def admin_get(replica: Replica, path: str) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {ADMIN}", "Accept": "application/json"}
    async with aiohttp.ClientSession() as s, s.get(replica.url + path, headers=headers) as r:
        return r.status, await r.json(content_type=None)


async def load(replica: Replica, prefix: str, acked: list[str],
               statuses: Counter[int | None], done: asyncio.Event) -> None:
    """Post unique events back to back until `done`; remember what was acknowledged."""
    n = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while not done.is_set():
            n += 1
            status = await post(session, replica, f"{prefix}-{n}")
            statuses[status] += 1
            if status == 202:
                acked.append(f"{prefix}-{n}")
            else:
                await asyncio.sleep(0.01)  # pacing while refused, not synchronisation


# ---------------------------------------------------------------- a rolling config change

ROLLING = serve_head("{dsn}", admin=True) + """\
receivers:
  - name: hook
    urls: ["{hook}"]
{extra}routes:
  - name: all
    match: {{event: "delivery.*"}}
    receivers: [{receivers}]
"""


async def test_a_receiver_only_one_replicas_config_has_yet_is_not_buried_by_the_other(
        tmp_path: Path, sink: Sink) -> None:
    """Replica A's config already has receiver `new`; B's does not yet (a ConfigMap update
    reaches pods one by one). B's orphan pass leaves `new`'s jobs to A, until A stops."""
    from aiohttp.test_utils import TestServer

    from relay.lifecycle import Relay
    from relay.ui.views import other_relays_places, receiver_rows

    async with pgutil.fresh_schema(await pgutil.base_dsn()) as dsn:
        relays, servers = [], []
        try:
            for name, extra, receivers in [
                    ("a", f'  - name: new\n    urls: ["{sink.url("new")}"]\n', "hook, new"),
                    ("b", "", "hook")]:
                port = free_port()
                cfg = write_config(tmp_path / f"{name}.yaml", ROLLING.format(
                    port=port, token=TOKEN, admin=ADMIN, dsn=dsn, hook=sink.url("hook"),
                    extra=extra, receivers=receivers))
                relay = Relay(str(cfg))
                server = TestServer(relay.web_app(), host="127.0.0.1", port=port)
                await server.start_server()
                relays.append(relay)
                servers.append(server)
            a, b = relays
            await wait_for(lambda: pgutil.fetchval(dsn, "SELECT count(*) = 2 FROM relays"),
                           message="both relays announced what they send for")
            for n, says in [(0, "lacks new[0]"), (1, "also sends for new[0]")]:
                async with aiohttp.ClientSession() as s, s.get(
                        f"http://127.0.0.1:{servers[n].port}/ui/",
                        headers={"Authorization": f"Bearer {ADMIN}"}) as r:
                    page = " ".join((await r.text()).split())
                assert "2 relays serve from this store" in page and says in page, page
            async def new_row() -> Any:  # (B's first announce, before A's, forgot it a moment)
                return next((r for r in receiver_rows(
                    b.config, await b.store.receivers(), time.time(), elsewhere=(
                        other_relays_places(await b.store.relays(), b.worker.owner,
                                            time.time()))) if r.name == "new"), None)

            row = await wait_for(new_row, message="new[0]'s row, as B sees it")
            assert row.state == "not in this config"  # A has it: not "removed, jobs go dead"
            out = await asyncio.to_thread(run_relay, ["receivers", "-c", str(tmp_path / "b.yaml")],
                                          capture_output=True, text=True, timeout=30)
            assert out.returncode == 0, out.stderr
            listed = [line.split(": seen")[1].split(", ", 1)[1] for line in out.stdout.splitlines()
                      if line.startswith("  ")]
            assert sorted(listed) == ["1 receiver URL(s); same receiver URLs as"
                                      f" {tmp_path / 'b.yaml'}",
                                      "2 receiver URL(s); also sends for new[0]"], out.stdout
            assert "2 relays serve from this store:" in out.stdout
            await a.worker.pause()  # A takes the events but sends nothing for now

            async def post(delivery: str) -> None:
                async with aiohttp.ClientSession() as s, s.post(
                        f"http://127.0.0.1:{servers[0].port}/webhook", json={
                            "event": "delivery.created", "delivery_id": delivery,
                            "timestamp": "2026-12-02T10:00:00Z"},
                        headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                    assert r.status == 202

            async def states() -> list[str]:
                return [r[0] for r in await pgutil.fetch(
                    dsn, "SELECT state FROM jobs WHERE receiver = 'new' ORDER BY id")]

            await post("D-1")
            await post("D-2")
            b.worker.config_changed()  # B looks for orphans now
            await b.worker.run_once()
            assert await states() == ["pending", "pending"]  # before: both dead at once
            a.worker.resume()
            await wait_for(lambda: len(sink.messages("new")) == 2, message="A sent them")

            await a.worker.pause()
            await post("D-3")
            await a.stop()  # A leaves, and says so: B buries what only A sent for
            relays.remove(a)
            b.worker.config_changed()
            await b.worker.run_once()
            assert await states() == ["sent", "sent", "dead"]
            assert len(sink.messages("hook")) == 3  # hook, in both configs, sent each
        finally:
            for relay in relays:
                await relay.stop()
            for server in servers:
                await server.close()


async def test_a_receiver_added_by_a_reload_during_a_pass_is_not_buried_by_that_pass(
        tmp_path: Path, sink: Sink) -> None:
    """A pass under way read the config before the reload: its orphan look must not bury a
    job that the new config's receiver got meanwhile (it does not: such a job is due after
    the pass's `now`, which its orphan claim goes by). The pass is held inside a claim by a
    row lock (a real lock, not a mock) while the reload lands and the event comes in."""
    import asyncpg
    from aiohttp.test_utils import TestServer

    from relay.lifecycle import Relay

    async with pgutil.fresh_schema(await pgutil.base_dsn()) as dsn:
        port = free_port()
        cfg = write_config(tmp_path / "relay.yaml", ROLLING.format(
            port=port, token=TOKEN, admin=ADMIN, dsn=dsn, hook=sink.url("hook"), extra="",
            receivers="hook"))
        relay = Relay(str(cfg))
        server = TestServer(relay.web_app(), host="127.0.0.1", port=port)
        await server.start_server()
        conn = await asyncpg.connect(dsn)
        try:
            await wait_for(lambda: pgutil.fetchval(
                dsn, "SELECT count(*) FROM receivers WHERE name = 'hook'"))
            tx = conn.transaction()
            await tx.start()
            await conn.execute("SELECT 1 FROM receivers WHERE name = 'hook' FOR UPDATE")
            relay.worker.config_changed()  # the next pass looks for orphans, and waits here
            me = await conn.fetchval("SELECT pg_backend_pid()")
            await wait_for(lambda: pgutil.fetchval(
                dsn, "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY("
                "pg_blocking_pids(pid))", me), message="the pass waits on the lock")
            write_config(cfg, ROLLING.format(
                port=port, token=TOKEN, admin=ADMIN, dsn=dsn, hook=sink.url("hook"),
                extra=f'  - name: new\n    urls: ["{sink.url("new")}"]\n',
                receivers="hook, new"))
            await relay.reload()
            async with aiohttp.ClientSession() as s, s.post(
                    f"http://127.0.0.1:{port}/webhook", json={
                        "event": "delivery.created", "delivery_id": "D-1",
                        "timestamp": "2026-12-02T10:00:00Z"},
                    headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                assert r.status == 202
            await tx.rollback()  # the pass goes on, with the config it read before

            async def state() -> str | None:
                value: str | None = await pgutil.fetchval(
                    dsn, "SELECT state FROM jobs WHERE receiver = 'new'")
                return value if value in ("sent", "dead") else None
            assert await wait_for(state) == "sent"  # before: dead, "no longer in the config"
            assert len(sink.messages("new")) == 1
        finally:
            await conn.close()
            await relay.stop()
            await server.close()
