"""One contract for every store: each test runs against SQLite and PostgreSQL.

A second store instance on the same database stands in for a second process
(another replica), so exclusivity, dedup and rate limits are proven across
instances, not only within one.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from relay.errors import SchemaTooNew, StaleClaim, StoreError
from relay.events import Event, event_from_dict
from relay.message import Message
from relay.pipeline import Notification
from relay.store import (
    SCHEMA_VERSION,
    Attempt,
    Circuit,
    ClaimResult,
    Job,
    RateLimit,
    Store,
    open_store,
)
from relay.store.relays import ANNOUNCED_FOR
from relay.store.schema import TABLES_1, render
from relay.store.sql import TIMELINE_SHOWN
from tests import pgutil
from tests.conftest import free_port, wait_for

T0 = 1_800_000_000.0
CIRCUIT = Circuit(failures=5, cooldown=60.0, max_cooldown=600.0)


@dataclass
class Backend:
    name: str
    url: str
    bump_schema: Callable[[], Awaitable[None]]
    # A real fault: a trigger that makes every UPDATE of the table fail; `heal` drops it.
    fail_updates: Callable[[str], Awaitable[None]]
    heal: Callable[[str], Awaitable[None]]
    downgrade_to_1: Callable[[], Awaitable[None]]  # as a relay before schema step 2 left it
    opened: list[Store] = field(default_factory=list)

    async def open(self) -> Store:
        """Another store on the same database, as a second process would have."""
        store = open_store(self.url)
        await store.open()
        self.opened.append(store)
        return store


# What the steps after 1 added, undone (as a relay before them left its database).
UNDO_STEPS = ("DROP TABLE relays", "DROP TABLE digest_items", "DROP TABLE health", "DROP TABLE timers",
              "ALTER TABLE deliveries DROP COLUMN last_event_id", "DROP TABLE live_messages",
              "ALTER TABLE jobs DROP COLUMN live", "ALTER TABLE jobs DROP COLUMN event_at",
              # step 10: receivers keyed by name alone again (step 1's table)
              "DROP TABLE receivers", render((TABLES_1[3],), (), "sqlite").rstrip(";\n"))


async def _sqlite_backend(tmp_path: Path) -> AsyncIterator[Backend]:
    path = tmp_path / "relay.db"

    def run(*statements: str) -> None:
        with closing(sqlite3.connect(path, isolation_level=None)) as conn:
            for statement in statements:
                conn.execute(statement)

    async def bump() -> None:
        run(f"PRAGMA user_version={SCHEMA_VERSION + 1}")

    async def fail_updates(table: str) -> None:
        run(f"CREATE TRIGGER fault_{table} BEFORE UPDATE ON {table}"
            " BEGIN SELECT RAISE(ABORT, 'injected fault'); END")

    async def heal(table: str) -> None:
        run(f"DROP TRIGGER fault_{table}")

    async def downgrade() -> None:
        run(*UNDO_STEPS, "PRAGMA user_version=1")

    yield Backend("sqlite", f"sqlite:{path}", bump, fail_updates, heal, downgrade)


async def _postgres_backend(empty: bool = False) -> AsyncIterator[Backend]:
    """A schema as migration leaves it, from the pool (`empty`: a new empty schema)."""
    import asyncpg

    schema = pgutil.fresh_schema if empty else pgutil.migrated_schema
    async with schema(await pgutil.base_dsn()) as dsn:
        async def run(*statements: str) -> None:
            conn = await asyncpg.connect(dsn)
            try:
                for statement in statements:
                    await conn.execute(statement)
            finally:
                await conn.close()

        async def bump() -> None:
            await run(f"INSERT INTO schema_version (version) VALUES ({SCHEMA_VERSION + 1})")

        async def fail_updates(table: str) -> None:
            await run("CREATE OR REPLACE FUNCTION fault() RETURNS trigger LANGUAGE plpgsql"
                      " AS $$ BEGIN RAISE EXCEPTION 'injected fault'; END $$",
                      f"CREATE TRIGGER fault_{table} BEFORE UPDATE ON {table}"
                      " FOR EACH ROW EXECUTE FUNCTION fault()")

        async def heal(table: str) -> None:  # leaves the schema as it was before the fault
            await run(f"DROP TRIGGER fault_{table} ON {table}", "DROP FUNCTION fault()")

        async def downgrade() -> None:
            await run(*UNDO_STEPS, "ALTER TABLE jobs DROP CONSTRAINT jobs_state_check",
                      "ALTER TABLE jobs ADD CONSTRAINT jobs_state_check"
                      " CHECK (state IN ('pending', 'claimed', 'sent', 'dead', 'suppressed'))",
                      "DELETE FROM schema_version WHERE version > 1")

        yield Backend("postgres", dsn, bump, fail_updates, heal, downgrade)


async def _stores_closed(source: AsyncIterator[Backend]) -> AsyncIterator[Backend]:
    """The backend `source` makes; after, every store opened on it closed, then its own end."""
    b = await anext(source)
    yield b
    for store in reversed(b.opened):
        await store.close()
    await anext(source, None)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    source = _sqlite_backend(tmp_path) if request.param == "sqlite" else _postgres_backend()
    async for b in _stores_closed(source):
        yield b


@pytest.fixture
async def store(backend: Backend) -> Store:
    return await backend.open()


def event(type: str = "delivery.updated", delivery: str = "d1",
          ts: str = "2024-09-14T14:30:00Z", **extra: Any) -> Event:
    return event_from_dict({"event": type, "delivery_id": delivery, "timestamp": ts,
                            "status": "in_transit", **extra})


def job(receiver: str = "hook", url_index: int = 0, suppress: bool = False) -> Notification:
    return Notification(receiver, url_index, "route-1",
                        Message(f"title {receiver}", "body", "info", "text"), suppress)


async def claim(store: Store, receiver: str = "hook", limit: int = 10, now: float = T0,
                owner: str = "a", lease: float = 30.0, bucket: RateLimit | None = None,
                circuit: Circuit = CIRCUIT, url_index: int = 0) -> ClaimResult:
    return await store.claim(receiver, url_index, limit=limit, now=now, lease=lease,
                             owner=owner, bucket=bucket, circuit=circuit)


async def queue(store: Store, count: int, receiver: str = "hook", now: float = T0) -> None:
    for i in range(count):
        await store.accept(event(delivery=f"q{i}"), f"q{receiver}{i}", [job(receiver)], now=now)


def attempt(at: float, outcome: str = "retry", error: str = "HTTP 500") -> Attempt:
    return Attempt(at, outcome, error, 0.25)


# ---------------------------------------------------------------- ingest


async def test_accept_stores_the_event_and_one_job_per_notification(store: Store) -> None:
    payload = event(note="ü")
    accepted = await store.accept(payload, "k1", [job(), job(url_index=1), job("mail")], now=T0)
    assert (accepted.duplicate, accepted.jobs, accepted.suppressed) == (False, 3, "")
    jobs = (await claim(store)).jobs + (await claim(store, url_index=1)).jobs  # one per URL
    assert [(j.receiver, j.url_index, j.state, j.attempts) for j in jobs] == \
        [("hook", 0, "claimed", 0), ("hook", 1, "claimed", 0)]
    first = jobs[0]
    assert (first.event_id, first.message.title, first.delivery_id, first.event_type, first.created_at) \
        == (accepted.event_id, "title hook", "d1", "delivery.updated", T0)
    detail = await store.detail(first.id)
    assert detail is not None and detail.event == dict(payload.payload)
    assert (await store.stats()).backlog == 3
    assert store.backlog_estimate() == 3


async def test_a_duplicate_key_is_acknowledged_without_new_jobs(store: Store) -> None:
    first = await store.accept(event(), "same", [job()], now=T0)
    again = await store.accept(event(), "same", [job(), job("mail")], now=T0 + 5)
    assert again.duplicate and again.jobs == 0 and again.event_id == first.event_id
    assert len((await claim(store)).jobs) == 1
    assert (await claim(store, "mail")).jobs == []


async def test_concurrent_duplicate_accepts_on_two_stores_make_one_set_of_jobs(
        backend: Backend, store: Store) -> None:
    other = await backend.open()
    results = await asyncio.gather(*(s.accept(event(), "race", [job(), job(url_index=1)], now=T0)
                                     for s in [store, other] * 6))
    assert sum(not r.duplicate for r in results) == 1
    assert len({r.event_id for r in results}) == 1
    assert len((await claim(store)).jobs) == len((await claim(store, url_index=1)).jobs) == 1


async def test_reopening_the_store_keeps_queued_jobs(backend: Backend, store: Store) -> None:
    await store.accept(event(), "k", [job()], now=T0)
    await store.close()
    reopened = await backend.open()
    assert len((await claim(reopened)).jobs) == 1


# ---------------------------------------------------------------- claims and leases


async def test_concurrent_claims_never_hand_out_a_job_twice(backend: Backend,
                                                            store: Store) -> None:
    await queue(store, 30)
    other = await backend.open()

    async def drain(s: Store, owner: str) -> list[Job]:
        got: list[Job] = []
        while jobs := (await claim(s, limit=2, owner=owner)).jobs:
            got += jobs
        return got

    rounds = await asyncio.gather(*(drain(s, f"owner-{i}")
                                    for i, s in enumerate([store, other] * 2)))
    ids = [j.id for jobs in rounds for j in jobs]
    assert len(ids) == 30 and len(set(ids)) == 30
    tokens = {j.claim_token for jobs in rounds for j in jobs}
    assert len(tokens) >= 15  # one token per claim call, never shared between calls


async def test_an_expired_lease_is_taken_over_and_the_old_claim_goes_stale(
        store: Store) -> None:
    await store.accept(event(), "k", [job()], now=T0)
    [mine] = (await claim(store, owner="a", now=T0, lease=30)).jobs
    assert (await claim(store, owner="b", now=T0 + 29)).jobs == []
    [theirs] = (await claim(store, owner="b", now=T0 + 31, lease=30)).jobs
    assert theirs.id == mine.id and theirs.claim_token != mine.claim_token
    for finish in (store.complete(mine, attempt(T0 + 32, "sent", "")),
                   store.bury(mine, attempt(T0 + 32, "failed")),
                   store.retry_later(mine, attempt(T0 + 32), at=T0 + 40, circuit=CIRCUIT)):
        with pytest.raises(StaleClaim):
            await finish
    await store.release(mine)  # a stale release is ignored, not an error
    assert (await claim(store, owner="c", now=T0 + 33)).jobs == []
    await store.complete(theirs, attempt(T0 + 34, "sent", ""))
    detail = await store.detail(theirs.id)
    assert detail is not None
    assert (detail.job.state, detail.job.attempts, len(detail.history)) == ("sent", 1, 1)


async def test_a_released_job_is_claimable_at_once_without_using_an_attempt(
        store: Store) -> None:
    await store.accept(event(), "k", [job()], now=T0)
    [mine] = (await claim(store, owner="a")).jobs
    await store.release(mine)
    [again] = (await claim(store, owner="b")).jobs
    assert again.id == mine.id and again.attempts == 0


# ---------------------------------------------------------------- retries and dead letters


async def test_a_retry_is_not_claimable_before_its_time(store: Store) -> None:
    await store.accept(event(), "k", [job()], now=T0)
    [first] = (await claim(store)).jobs
    opened = await store.retry_later(first, attempt(T0, error="HTTP 500"), at=T0 + 30, circuit=CIRCUIT)
    assert opened is False
    early = await claim(store, now=T0 + 29.9)
    assert early.jobs == [] and early.wait_until == pytest.approx(T0 + 30)
    [second] = (await claim(store, now=T0 + 30)).jobs
    assert (second.id, second.attempts, second.last_error) == (first.id, 1, "HTTP 500")


async def test_a_buried_job_is_listed_dead_with_its_attempt_history(store: Store) -> None:
    await store.accept(event(), "k", [job(), job("mail")], now=T0)
    [first] = (await claim(store)).jobs
    await store.retry_later(first, attempt(T0, error="HTTP 503"), at=T0 + 1, circuit=CIRCUIT)
    [second] = (await claim(store, now=T0 + 1)).jobs
    await store.bury(second, attempt(T0 + 1, "failed", "HTTP 404"))
    dead = await store.dead()
    assert [(j.id, j.state, j.attempts, j.last_error) for j in dead] == \
        [(first.id, "dead", 2, "HTTP 404")]
    assert await store.dead("mail") == [] and len(await store.dead("hook")) == 1
    detail = await store.detail(first.id)
    assert detail is not None and detail.event["delivery_id"] == "d1"
    assert [(a.at, a.outcome, a.error) for a in detail.history] == \
        [(T0, "retry", "HTTP 503"), (T0 + 1, "failed", "HTTP 404")]
    stats = await store.stats()
    assert (stats.dead, stats.backlog, stats.oldest_pending_at) == (1, 1, T0)
    assert await store.detail(987654321) is None


async def test_replay_by_id_by_receiver_and_all(store: Store) -> None:
    for key, receivers in (("a", ["hook", "hook"]), ("b", ["mail"]), ("c", ["sms"])):
        await store.accept(event(delivery=key), key, [job(r, i) for i, r in
                                                      enumerate(receivers)], now=T0)
    dead: list[Job] = []
    for receiver, index in (("hook", 0), ("hook", 1), ("mail", 0), ("sms", 0)):
        for j in (await claim(store, receiver, url_index=index)).jobs:
            await store.bury(j, attempt(T0, "failed", "HTTP 400"))
            dead.append(j)
    woken: list[int] = []
    store.subscribe(lambda: woken.append(1))
    later = T0 + 100
    assert await store.replay([dead[0].id], None, later) == 1
    assert await store.replay(None, "mail", later) == 1
    assert await store.replay(None, None, later) == 2
    assert await store.replay(None, None, later) == 0
    assert len(woken) == 3 and await store.dead() == []  # not for the replay of nothing
    assert store.backlog_estimate() == 4
    hook = (await claim(store, now=later)).jobs + (await claim(store, now=later, url_index=1)).jobs
    assert [(j.attempts, j.created_at) for j in hook] == [(0, later), (0, later)]
    detail = await store.detail(dead[0].id)
    assert detail is not None and len(detail.history) == 1  # history is kept


# ---------------------------------------------------------------- retention


async def test_purge_deletes_only_finished_events_past_the_cutoff_in_batches(
        store: Store) -> None:
    sent: list[Job] = []
    for i in range(3):
        await store.accept(event(delivery=f"s{i}"), f"sent{i}", [job()], now=T0)
    for j in (await claim(store)).jobs:
        await store.complete(j, attempt(T0, "sent", ""))
        sent.append(j)
    await store.accept(event(delivery="n"), "no-jobs", [], now=T0)
    await store.accept(event(delivery="p"), "pending", [job("slow")], now=T0)
    await store.accept(event(delivery="x"), "dead", [job("bad")], now=T0)
    [bad] = (await claim(store, "bad")).jobs
    await store.bury(bad, attempt(T0, "failed"))
    await store.accept(event(delivery="y"), "young", [job("young")], now=T0 + 1000)
    [young] = (await claim(store, "young", now=T0 + 1000)).jobs
    await store.complete(young, attempt(T0 + 1000, "sent", ""))

    batches = [await store.purge(T0 + 500, batch=3) for _ in range(6)]
    # Four finished events, then the ordering state of the seven deliveries.
    assert batches == [3, 1, 3, 3, 1, 0]
    assert all([await store.detail(j.id) is None for j in sent])
    assert await store.detail(bad.id) is not None and await store.detail(young.id) is not None
    assert len((await claim(store, "slow")).jobs) == 1
    again = await store.accept(event(delivery="s0"), "sent0", [job()], now=T0 + 2000)
    assert not again.duplicate  # dedup lasts as long as retention keeps the event


# ---------------------------------------------------------------- rate limit and circuit


async def test_a_rate_limit_bucket_is_shared_by_every_owner(backend: Backend,
                                                            store: Store) -> None:
    await queue(store, 8)
    other = await backend.open()
    bucket = RateLimit(2, 10.0)  # 2 per 10 s: one token every 5 s
    first = await asyncio.gather(*(claim(s, limit=5, owner=f"o{i}", bucket=bucket)
                                   for i, s in enumerate([store, other, store, other])))
    assert sum(len(r.jobs) for r in first) == 2
    empty = [r for r in first if not r.jobs]
    assert empty and all(r.wait_until == pytest.approx(T0 + 5) for r in empty)
    assert len((await claim(other, owner="b", now=T0 + 5, bucket=bucket)).jobs) == 1
    assert (await claim(store, owner="a", now=T0 + 5, bucket=bucket)).jobs == []
    assert len((await claim(store, owner="a", now=T0 + 100, bucket=bucket)).jobs) == 2


async def test_the_circuit_opens_half_opens_and_closes(store: Store) -> None:
    circuit = Circuit(failures=2, cooldown=10.0, max_cooldown=40.0)
    await queue(store, 5)
    one, two = (await claim(store, limit=2, circuit=circuit)).jobs
    assert await store.retry_later(one, attempt(T0), at=T0, circuit=circuit) is False
    assert await store.retry_later(two, attempt(T0), at=T0, circuit=circuit) is True
    shut = await claim(store, now=T0 + 5, circuit=circuit)
    assert shut.jobs == [] and shut.paused and shut.wait_until == pytest.approx(T0 + 10)

    [probe] = (await claim(store, limit=5, now=T0 + 10, circuit=circuit)).jobs
    assert (await claim(store, owner="b", limit=5, now=T0 + 10, circuit=circuit)).jobs == []
    assert await store.retry_later(probe, attempt(T0 + 10), at=T0 + 10, circuit=circuit) is False
    reopened = await claim(store, now=T0 + 25, circuit=circuit)
    assert reopened.paused and reopened.wait_until == pytest.approx(T0 + 30)  # cooldown doubled

    [probe] = (await claim(store, limit=5, now=T0 + 30, circuit=circuit)).jobs
    await store.complete(probe, attempt(T0 + 30, "sent", ""))
    closed = await claim(store, limit=5, now=T0 + 30, circuit=circuit)
    assert len(closed.jobs) == 4 and not closed.paused


async def test_a_burial_for_the_receivers_own_fault_counts_towards_its_circuit(
        store: Store) -> None:
    """`bury(circuit=…)`: the job is dead and the receiver's failure counted, in one write;
    a plain burial (the message's fault) neither counts nor resets."""
    circuit = Circuit(failures=2, cooldown=10.0, max_cooldown=40.0)
    await queue(store, 4)
    one, two, three = (await claim(store, limit=3, circuit=circuit)).jobs
    assert await store.bury(one, attempt(T0, "failed", "HTTP 400"), circuit=None) is False
    assert await store.bury(two, attempt(T0, "failed", "HTTP 404"), circuit=circuit) is False
    assert await store.bury(three, attempt(T0, "failed", "HTTP 404"), circuit=circuit) is True
    [state] = await store.receivers()
    assert (state.failures, state.open_until) == (2, T0 + 10)
    shut = await claim(store, now=T0 + 5, circuit=circuit)
    assert shut.jobs == [] and shut.paused  # the fourth waits, it is not spent
    assert [j.id for j in await store.dead()] == [one.id, two.id, three.id]
    assert store.backlog_estimate() == 1


async def test_a_probe_that_reached_nobody_leaves_the_circuit_half_open(store: Store) -> None:
    """A live update skipped as older (`reached=False`) sent no request: the receiver is
    still unproven, so the next claim is a probe again, not the whole queue."""
    circuit = Circuit(failures=1, cooldown=10.0, max_cooldown=40.0)
    await queue(store, 4)
    [first] = (await claim(store, limit=1, circuit=circuit)).jobs
    assert await store.retry_later(first, attempt(T0), at=T0, circuit=circuit) is True
    [probe] = (await claim(store, limit=5, now=T0 + 10, circuit=circuit)).jobs
    await store.complete(probe, attempt(T0 + 10, "sent", ""), reached=False)
    [again] = (await claim(store, limit=5, now=T0 + 10, circuit=circuit)).jobs  # one probe
    await store.complete(again, attempt(T0 + 10, "sent", ""))
    assert len((await claim(store, limit=5, now=T0 + 10, circuit=circuit)).jobs) == 2


async def test_a_failed_retry_write_leaves_the_claim_and_its_retry_counts_the_failure_once(
        backend: Backend, store: Store) -> None:
    """Rescheduling the job and counting the failure are one transaction: both or neither."""
    circuit = Circuit(failures=1, cooldown=10.0, max_cooldown=40.0)
    await store.accept(event(), "k", [job()], now=T0)
    [first] = (await claim(store, circuit=circuit)).jobs
    await backend.fail_updates("receivers")  # the failure count cannot be written
    with pytest.raises(StoreError):
        await store.retry_later(first, attempt(T0), at=T0 + 30, circuit=circuit)
    await backend.heal("receivers")
    # The worker writes the same outcome again: it must not be dropped as a stale claim.
    assert await store.retry_later(first, attempt(T0), at=T0 + 30, circuit=circuit) is True
    [state] = await store.receivers()
    assert (state.name, state.failures, state.open_until) == ("hook", 1, T0 + 10)
    shut = await claim(store, now=T0 + 5, circuit=circuit)
    assert shut.paused and shut.wait_until == pytest.approx(T0 + 10)
    detail = await store.detail(first.id)
    assert detail is not None and (detail.job.attempts, len(detail.history)) == (1, 1)


async def test_a_success_writes_the_receiver_row_only_when_its_circuit_needs_closing(
        backend: Backend, store: Store) -> None:
    await queue(store, 3)
    one, two = (await claim(store, limit=2)).jobs
    await backend.fail_updates("receivers")
    await store.complete(one, attempt(T0, "sent", ""))  # a closed circuit: nothing to write
    await backend.heal("receivers")
    await store.retry_later(two, attempt(T0), at=T0 + 1, circuit=CIRCUIT)
    [three] = (await claim(store, now=T0 + 1, limit=1)).jobs
    await backend.fail_updates("receivers")
    with pytest.raises(StoreError):  # one failure counted: this success must reset it
        await store.complete(three, attempt(T0 + 1, "sent", ""))
    await backend.heal("receivers")
    await store.complete(three, attempt(T0 + 1, "sent", ""))
    [state] = await store.receivers()
    assert (state.failures, state.backlog, state.last_sent_at) == (0, 1, T0 + 1)
    assert (state.last_error, state.last_error_at) == ("HTTP 500", T0)


# ---------------------------------------------------------------- per receiver URL
# A receiver URL (receiver name, url_index) is claimed for separately: its own circuit,
# token bucket and claims. Before, all of a receiver's URLs shared one of each.


async def queue_urls(store: Store, count: int, now: float = T0) -> None:
    """`count` events, each with a job for hook's URL 0 and one for its URL 1."""
    for i in range(count):
        await store.accept(event(delivery=f"u{i}"), f"u{i}", [job(), job(url_index=1)], now=now)


async def test_a_failing_url_opens_its_own_circuit_while_its_receivers_other_url_is_sent(
        backend: Backend, store: Store) -> None:
    circuit = Circuit(failures=2, cooldown=10.0, max_cooldown=40.0)
    await queue_urls(store, 4)
    one, two = (await claim(store, limit=2, circuit=circuit, url_index=1)).jobs
    assert {one.url_index, two.url_index} == {1}
    assert await store.retry_later(one, attempt(T0), at=T0, circuit=circuit) is False
    assert await store.retry_later(two, attempt(T0), at=T0, circuit=circuit) is True
    shut = await claim(store, now=T0 + 5, circuit=circuit, url_index=1)
    assert shut.jobs == [] and shut.paused and shut.wait_until == pytest.approx(T0 + 10)
    other = await backend.open()  # another replica sees the same: URL 0 is not paused
    healthy = await claim(other, owner="b", now=T0 + 5, circuit=circuit)
    assert [j.url_index for j in healthy.jobs] == [0] * 4 and not healthy.paused
    for j in healthy.jobs:
        await other.complete(j, attempt(T0 + 5, "sent", ""))
    states = {(s.name, s.url_index): s for s in await store.receivers()}
    assert sorted(states) == [("hook", 0), ("hook", 1)]
    assert (states["hook", 0].failures, states["hook", 0].open_until,
            states["hook", 0].backlog, states["hook", 0].last_sent_at) == (0, 0.0, 0, T0 + 5)
    assert (states["hook", 1].failures, states["hook", 1].open_until,
            states["hook", 1].backlog, states["hook", 1].last_error) == (2, T0 + 10, 4, "HTTP 500")
    assert (await claim(store, now=T0 + 6, circuit=circuit, url_index=1)).paused


async def test_a_url_is_orphaned_only_when_no_live_relay_sends_for_it(backend: Backend,
                                                                      store: Store) -> None:
    """A rolling config change: relay A's config has receiver "old", B's already "new"."""
    other = await backend.open()
    a, b, old, new = "host-a:1:a", "host-b:1:b", ("old", 0), ("new", 0)
    assert await store.announce(a, {old}, now=T0) == {old}
    assert await other.announce(b, {new}, now=T0 + 1) == {old, new}
    assert await store.announce(a, {old}, now=T0 + 2) == {old, new}
    quiet = T0 + 1 + ANNOUNCED_FOR + 1  # B said nothing for longer than ANNOUNCED_FOR
    assert await store.announce(a, {old}, now=quiet) == {old}
    assert await other.announce(b, {new}, now=quiet) == {old, new}
    await other.withdraw(b)  # B stopped: at once, not after ANNOUNCED_FOR
    assert await store.announce(a, {old}, now=quiet + 1) == {old}
    gone = f"{socket.gethostname()}:{2**31 - 7}:x"  # a process of this host that is not running
    await other.announce(gone, {new}, now=quiet + 2)
    assert await store.announce(a, {old}, now=quiet + 3) == {old}
    # relays() lists what the orphan pass counts as live: not the relay whose process is gone
    assert [(r.owner, r.places, r.seen_at) for r in await other.relays()] == [
        (a, frozenset({old}), quiet + 3)]


async def test_a_circuit_no_live_relay_sends_for_is_forgotten_once_no_job_needs_it(
        store: Store) -> None:
    await store.accept(event(), "k", [job("old"), job("new")], now=T0)
    [kept] = (await claim(store, "new")).jobs  # its row exists now, and a job is active
    assert len((await claim(store, "old")).jobs) == 1
    await store.announce("a", {("old", 0)}, now=T0)
    assert {(r.name, r.url_index) for r in await store.receivers()} == {("old", 0), ("new", 0)}
    await store.complete(kept, attempt(T0, "sent", ""))
    await store.announce("a", {("old", 0)}, now=T0 + 1)
    assert [(r.name, r.url_index) for r in await store.receivers()] == [("old", 0)]
    assert len((await claim(store, "new", now=T0 + 2)).jobs) == 0  # a claim makes a fresh row
    assert {(r.name, r.url_index) for r in await store.receivers()} == {("old", 0), ("new", 0)}


async def test_retry_now_closes_one_urls_circuit_and_makes_its_waiting_retries_due(
        backend: Backend, store: Store) -> None:
    circuit = Circuit(failures=2, cooldown=600.0, max_cooldown=600.0)
    await queue_urls(store, 3)
    held = await store.accept(event(delivery="h"), "h", [replace(job(), hold=300.0)], now=T0)
    for url in (0, 1):  # both URLs fail twice: both circuits open, their retries an hour out
        for j in (await claim(store, limit=2, circuit=circuit, url_index=url)).jobs:
            await store.retry_later(j, attempt(T0), at=T0 + 3600, circuit=circuit)
    assert (await claim(store, now=T0 + 1, circuit=circuit)).paused

    other = await backend.open()  # another process (the CLI, a replica) asks for URL 0 only
    assert await other.retry_now("hook", 0, now=T0 + 1) == 2
    again = await claim(store, limit=10, now=T0 + 1, circuit=circuit)
    assert not again.paused and sorted(j.attempts for j in again.jobs) == [0, 1, 1]
    assert held.event_id not in {j.event_id for j in again.jobs}  # its hold is not cut short
    assert (await claim(store, now=T0 + 1, circuit=circuit, url_index=1)).paused
    states = {(s.name, s.url_index): s for s in await store.receivers()}
    assert (states["hook", 0].failures, states["hook", 0].open_until) == (0, 0.0)
    assert states["hook", 1].failures == 2
    assert await store.retry_now("hook", 1, now=T0 + 2) == 2
    assert await store.retry_now("nobody", 0, now=T0 + 2) == 0  # no row, no jobs: nothing


async def test_retry_now_counts_the_retries_an_open_circuit_held_after_their_backoff(
        store: Store) -> None:
    """Short retries, a long cooldown: the retries are due but the circuit holds them.
    Both go now, and the count says so (before: "0 waiting retries go now")."""
    circuit = Circuit(failures=2, cooldown=600.0, max_cooldown=600.0)
    await queue_urls(store, 2)
    for j in (await claim(store, limit=2, circuit=circuit)).jobs:
        await store.retry_later(j, attempt(T0), at=T0 + 5, circuit=circuit)
    assert (await claim(store, now=T0 + 10, circuit=circuit)).paused  # due, and held
    assert await store.retry_now("hook", 0, now=T0 + 10) == 2
    again = await claim(store, limit=10, now=T0 + 10, circuit=circuit)
    assert sorted(j.attempts for j in again.jobs) == [1, 1]


async def test_a_probe_that_succeeds_on_one_url_leaves_another_urls_circuit_open(
        store: Store) -> None:
    circuit = Circuit(failures=1, cooldown=10.0, max_cooldown=40.0)
    await queue_urls(store, 3)
    [a] = (await claim(store, limit=1, circuit=circuit)).jobs
    [b] = (await claim(store, limit=1, circuit=circuit, url_index=1)).jobs
    # each URL's first failure opens its own circuit (and each says so: two notices)
    assert await store.retry_later(a, attempt(T0), at=T0, circuit=circuit) is True
    assert await store.bury(b, attempt(T0 + 2, "failed", "HTTP 404"), circuit=circuit) is True
    [probe] = (await claim(store, limit=5, now=T0 + 10, circuit=circuit)).jobs
    assert probe.url_index == 0
    await store.complete(probe, attempt(T0 + 10, "sent", ""))
    assert len((await claim(store, limit=5, now=T0 + 10, circuit=circuit)).jobs) == 2  # closed
    shut = await claim(store, limit=5, now=T0 + 11, circuit=circuit, url_index=1)
    assert shut.jobs == [] and shut.paused and shut.wait_until == pytest.approx(T0 + 12)
    [own] = (await claim(store, limit=5, now=T0 + 12, circuit=circuit, url_index=1)).jobs
    assert own.url_index == 1  # half-open: one probe of its own, not its receiver's queue
    assert (await claim(store, limit=5, now=T0 + 12, circuit=circuit, url_index=1)).jobs == []
    states = {s.url_index: s for s in await store.receivers()}
    assert (states[0].failures, states[1].failures) == (0, 1)


async def test_each_url_of_a_receiver_has_its_own_token_bucket(backend: Backend,
                                                              store: Store) -> None:
    await queue_urls(store, 4)
    other = await backend.open()
    bucket = RateLimit(2, 10.0)  # 2 per 10 s per URL: one token every 5 s
    zero = await claim(store, limit=5, bucket=bucket)
    one = await claim(other, owner="b", limit=5, bucket=bucket, url_index=1)
    assert [j.url_index for j in zero.jobs] == [0, 0] and [j.url_index for j in one.jobs] == [1, 1]
    for index, s in ((0, other), (1, store)):  # spent, whichever replica asks
        empty = await claim(s, limit=5, now=T0 + 1, bucket=bucket, url_index=index)
        assert empty.jobs == [] and empty.wait_until == pytest.approx(T0 + 5)
    assert len((await claim(store, limit=5, now=T0 + 5, bucket=bucket, url_index=1)).jobs) == 1
    assert len((await claim(store, limit=5, now=T0 + 100, bucket=bucket)).jobs) == 2
    tokens = {s.url_index: s.tokens for s in await store.receivers()}
    assert tokens == {0: pytest.approx(0.0), 1: pytest.approx(0.0)}


async def test_a_claim_takes_only_its_own_urls_jobs_and_active_receivers_names_each_url(
        store: Store) -> None:
    """The worker's concurrency is per URL: a claim's `limit` (its free slots) is never
    spent on another URL's jobs, and `active_receivers` names the URLs with work."""
    await queue_urls(store, 3)
    await store.accept(event(delivery="m"), "m", [job("mail", 2)], now=T0)
    assert await store.active_receivers() == {("hook", 0), ("hook", 1), ("mail", 2)}
    [first] = (await claim(store, limit=1)).jobs
    [second] = (await claim(store, limit=1, url_index=1)).jobs
    assert (first.url_index, second.url_index) == (0, 1)
    assert (await claim(store, "mail")).jobs == []  # mail's URL 0 has none; its URL 2 has one
    [mail] = (await claim(store, "mail", url_index=2)).jobs
    await store.bury(mail, attempt(T0, "failed", "HTTP 400"))
    assert await store.active_receivers() == {("hook", 0), ("hook", 1)}


async def test_a_claim_without_a_circuit_takes_the_jobs_of_an_open_one(store: Store) -> None:
    """The orphan pass (a URL removed from the config, its circuit open) buries jobs
    without sending them: `circuit=None` does not wait for the cooldown or a probe."""
    circuit = Circuit(failures=1, cooldown=60.0, max_cooldown=600.0)
    await queue(store, 3)
    [first] = (await claim(store, limit=1, circuit=circuit)).jobs
    assert await store.retry_later(first, attempt(T0), at=T0, circuit=circuit) is True
    assert (await claim(store, now=T0 + 1, circuit=circuit)).paused
    taken = await store.claim("hook", 0, limit=10, now=T0 + 1, lease=30.0, owner="a",
                              bucket=None, circuit=None)
    assert len(taken.jobs) == 3 and not taken.paused
    [state] = await store.receivers()
    assert (state.failures, state.open_until) == (1, T0 + 60)  # the circuit is left as it was


# ---------------------------------------------------------------- read side


async def test_a_delivery_timeline_holds_its_events_jobs_and_attempts(store: Store) -> None:
    await store.accept(event(ts="2024-09-14T10:00:00Z"), "u1", [job(), job("mail")], now=T0)
    await store.accept(event(delivery="other"), "o", [job()], now=T0)
    await store.accept(event("delivery.delivered", ts="2024-09-14T11:00:00Z"), "u2", [job()],
                       now=T0 + 1)
    hook = (await claim(store, now=T0 + 1)).jobs
    await store.retry_later(hook[0], attempt(T0 + 1), at=T0 + 2, circuit=CIRCUIT)
    await store.complete(hook[2], attempt(T0 + 1, "sent", ""))
    timeline = await store.timeline("d1")
    assert [(e.type, e.received_at) for e in timeline.events] == \
        [("delivery.updated", T0), ("delivery.delivered", T0 + 1)]
    assert timeline.events[0].payload["timestamp"] == "2024-09-14T10:00:00Z"
    assert [(j.receiver, j.state) for j in timeline.jobs] == \
        [("hook", "pending"), ("mail", "pending"), ("hook", "sent")]
    assert [(a.job_id, a.attempt.outcome) for a in timeline.attempts] == \
        [(hook[0].id, "retry"), (hook[2].id, "sent")]
    empty = await store.timeline("nobody")
    assert (empty.events, empty.jobs, empty.attempts) == ((), (), ())


async def test_a_timeline_holds_the_newest_events_and_what_they_caused_and_counts_the_rest(
        store: Store) -> None:
    extra = 3
    for n in range(TIMELINE_SHOWN + extra):
        await store.accept(event(ts=f"2024-09-14T10:{n // 60:02d}:{n % 60:02d}Z"), f"k{n}",
                           [job()], now=T0 + n)
    await store.accept(event(delivery="other"), "o", [job("mail")], now=T0)
    first, *_, last = (await claim(store, limit=TIMELINE_SHOWN + extra, now=T0 + 200)).jobs
    for j in (first, last):  # an attempt of a left-out event's job and of a shown one
        await store.complete(j, attempt(T0 + 201, "sent", ""))
    timeline = await store.timeline("d1")
    assert [e.received_at for e in timeline.events] == \
        [T0 + n for n in range(extra, TIMELINE_SHOWN + extra)]
    shown = {e.id for e in timeline.events}
    assert len(timeline.jobs) == TIMELINE_SHOWN and {j.event_id for j in timeline.jobs} == shown
    assert [a.job_id for a in timeline.attempts] == [last.id]
    assert timeline.earlier == extra
    assert (await store.timeline("other")).earlier == 0


async def test_recent_deliveries_newest_first_with_their_notification_counts(
        store: Store) -> None:
    await store.accept(event(delivery="d1"), "a", [job(), job("mail")], now=T0)
    await store.accept(event(delivery="d2", ts="2024-09-14T15:00:00Z"), "b", [job()], now=T0 + 1)
    await store.accept(event("delivery.delivered", delivery="d1", ts="2024-09-14T16:00:00Z",
                             status="delivered"), "c", [], now=T0 + 2)
    first, second = (await claim(store, now=T0 + 2)).jobs
    await store.complete(first, attempt(T0 + 3, "sent", ""))
    await store.bury(second, attempt(T0 + 3, "failed", "HTTP 404"))
    recent = await store.recent_deliveries(10)
    assert [(d.delivery_id, d.last_type, d.last_status, d.last_at, d.events) for d in recent] == \
        [("d1", "delivery.delivered", "delivered", T0 + 2, 2),
         ("d2", "delivery.updated", "in_transit", T0 + 1, 1)]
    assert [(d.sent, d.waiting, d.dead) for d in recent] == [(1, 1, 0), (0, 0, 1)]
    assert [d.delivery_id for d in await store.recent_deliveries(1)] == ["d1"]


async def test_activity_counts_events_and_attempts_per_minute(store: Store) -> None:
    await store.accept(event(delivery="old"), "o", [job()], now=T0 - 1)  # before the window
    await store.accept(event(delivery="d1"), "a", [job(), job(url_index=1)], now=T0 + 5)
    await store.accept(event(delivery="d2"), "b", [job()], now=T0 + 65)
    claimed = (await claim(store, now=T0 + 65)).jobs + (await claim(store, now=T0 + 65,
                                                                   url_index=1)).jobs
    one, two, three, four = sorted(claimed, key=lambda j: j.id)
    await store.complete(two, attempt(T0 + 70, "sent", ""))
    await store.retry_later(three, attempt(T0 + 125), at=T0 + 200, circuit=CIRCUIT)
    await store.bury(four, attempt(T0 + 179, "failed", "HTTP 404"))
    minutes = await store.activity(T0, 4)
    assert [(m.at, m.events, m.sent, m.failed) for m in minutes] == \
        [(T0, 1, 0, 0), (T0 + 60, 1, 1, 0), (T0 + 120, 0, 0, 2), (T0 + 180, 0, 0, 0)]


async def test_ping_commits_a_write(backend: Backend, store: Store) -> None:
    await store.ping()  # creates the health row
    await backend.fail_updates("health")
    with pytest.raises(StoreError):  # a store that can read but not commit is not ready
        await store.ping()
    await backend.heal("health")
    await store.ping()


# ---------------------------------------------------------------- stale and cancelled updates


async def test_an_update_older_than_the_newest_is_suppressed(store: Store) -> None:
    newer = await store.accept(event(ts="2024-09-14T10:00:00Z"), "a", [job(suppress=True)], now=T0)
    older = await store.accept(event(ts="2024-09-14T09:00:00Z"), "b",
                               [job(suppress=True), job("mail")], now=T0)
    newest = await store.accept(event(ts="2024-09-14T11:00:00Z"), "c", [job(suppress=True)], now=T0)
    assert (newer.jobs, newest.jobs, newest.suppressed) == (1, 1, "")
    assert older.jobs == 1  # the receiver that did not ask for suppression still gets it
    assert older.suppressed == "an update with a newer timestamp was already received"


async def test_a_cancellation_suppresses_pending_and_later_updates(store: Store) -> None:
    await store.accept(event(ts="2024-09-14T10:00:00Z"), "u1",
                       [job(suppress=True), job("mail")], now=T0)
    await store.accept(event(delivery="d2"), "other", [job(suppress=True)], now=T0)
    cancel = await store.accept(event("delivery.cancelled", ts="2024-09-14T10:05:00Z"), "c",
                                [job()], now=T0)
    assert cancel.jobs == 1
    late = await store.accept(event(ts="2024-09-14T10:10:00Z"), "u2", [job(suppress=True)], now=T0)
    assert late.jobs == 0 and late.suppressed == "delivery was already cancelled"
    hook = (await claim(store)).jobs
    assert sorted((j.delivery_id, j.event_type) for j in hook) == \
        [("d1", "delivery.cancelled"), ("d2", "delivery.updated")]
    assert len((await claim(store, "mail")).jobs) == 1
    assert store.backlog_estimate() == 3  # what ingest checks against max_backlog
    assert (await store.stats()).backlog == 3


# ---------------------------------------------------------------- schema


async def test_a_newer_schema_is_refused(backend: Backend, store: Store) -> None:
    await store.close()
    await backend.bump_schema()
    with pytest.raises(SchemaTooNew, match="upgrade the relay"):
        await backend.open()


async def test_a_version_1_database_is_migrated_and_keeps_its_jobs(backend: Backend,
                                                                  store: Store) -> None:
    await store.accept(event(), "k", [job()], now=T0)
    await store.close()
    await backend.downgrade_to_1()
    upgraded = await backend.open()
    await upgraded.ping()  # the health table of step 2 exists again
    assert len((await claim(upgraded)).jobs) == 1


# ---------------------------------------------------------------- PostgreSQL only


@pytest.fixture
async def pg() -> AsyncIterator[Backend]:
    async for b in _stores_closed(_postgres_backend(empty=False)):
        yield b


@pytest.fixture
async def empty_pg() -> AsyncIterator[Backend]:
    """A new empty schema: no relay has migrated it yet."""
    async for b in _stores_closed(_postgres_backend(empty=True)):
        yield b


@pytest.mark.postgres
async def test_new_jobs_wake_idle_workers_of_every_replica(pg: Backend) -> None:
    ingest, idle = await pg.open(), await pg.open()
    woken = asyncio.Event()
    idle.subscribe(woken.set)
    await wait_for(lambda: woken.is_set(), 5, message="LISTEN connection up")  # first connect
    woken.clear()
    await ingest.accept(event(), "k", [job()], now=T0)
    await asyncio.wait_for(woken.wait(), 5)


@pytest.mark.postgres
async def test_replicas_starting_together_create_the_schema_once(empty_pg: Backend) -> None:
    import asyncpg

    conn = await asyncpg.connect(empty_pg.url)
    assert await conn.fetchval("SELECT to_regclass('schema_version')") is None  # none yet
    await asyncio.gather(*(empty_pg.open() for _ in range(5)))
    assert await conn.fetch("SELECT version FROM schema_version ORDER BY version") == \
        [(step,) for step in range(1, SCHEMA_VERSION + 1)]  # each step once
    await conn.close()


@pytest.mark.parametrize("url", [
    "postgresql://relay:s3cret@127.0.0.1:{port}/relay",
    "postgresql://relay@127.0.0.1:{port}/relay?password=s3cret",
    "postgresql://relay:s3cret@127.0.0.1:notaport/relay",
    "postgresql://relay:s3cret@[::1/relay",
])
async def test_an_unusable_dsn_is_a_store_error_that_hides_the_password(url: str) -> None:
    pytest.importorskip("asyncpg")
    store = open_store(url.format(port=free_port()))  # nothing listens there
    with pytest.raises(StoreError) as info:
        await store.open()
    assert "s3cret" not in str(info.value) and "s3cret" not in repr(store)


@pytest.mark.postgres
async def test_killed_connections_give_store_errors_then_recover(pg: Backend) -> None:
    import asyncpg

    name = f"kt_{uuid.uuid4().hex[:12]}"  # this test's connections, nobody else's
    victim, ingest = open_store(f"{pg.url}&application_name={name}"), await pg.open()
    await victim.open()
    pg.opened.append(victim)
    woken = asyncio.Event()
    victim.subscribe(woken.set)
    await wait_for(woken.is_set, 5, message="LISTEN connection up")
    woken.clear()
    admin = await asyncpg.connect(pg.url)
    killed = await admin.fetchval("SELECT count(pg_terminate_backend(pid)) FROM"
                                  " pg_stat_activity WHERE application_name = $1", name)
    await admin.close()
    assert killed >= 2  # the pool's connection and the LISTEN connection
    await wait_for(woken.is_set, 10, message="LISTEN to reconnect")
    woken.clear()
    await ingest.accept(event(), "k", [job()], now=T0)
    await asyncio.wait_for(woken.wait(), 5)

    async def claimed() -> bool:
        try:
            return bool((await claim(victim)).jobs)
        except StoreError:
            return False  # a lost connection is a StoreError, never a raw asyncpg error

    await wait_for(claimed, 10, message="the pool to reconnect")


@pytest.mark.postgres
async def test_a_claim_whose_new_circuit_row_another_relay_forgets_meanwhile_is_not_a_crash(
        pg: Backend) -> None:
    """A claim finds no row for its receiver URL; another replica's claim creates it first
    (so this one's INSERT ... DO NOTHING inserts nothing); a relay whose config lacks the URL
    forgets the unused row (`announce`) before this claim reads it again. Before, the claim
    crashed on the missing row (TypeError, the worker's task gone). Two statement triggers
    hold the claim at those two points on advisory locks the test holds: the real
    statements in their real order, only the timing is chosen."""
    import asyncpg

    name = f"lr_{uuid.uuid4().hex[:12]}"
    first, second = (int(uuid.uuid4().int % 2**31) for _ in range(2))
    claimer = open_store(f"{pg.url}&application_name={name}")
    await claimer.open()
    pg.opened.append(claimer)
    forgetter = await pg.open()
    conn = await asyncpg.connect(pg.url)
    await conn.execute(
        f"CREATE FUNCTION hold_{name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        f" IF current_setting('application_name') = '{name}' THEN"
        " PERFORM pg_advisory_xact_lock(TG_ARGV[0]::bigint); END IF; RETURN NULL; END $$;"
        f" CREATE TRIGGER b_{name} BEFORE INSERT ON receivers FOR EACH STATEMENT"
        f" EXECUTE FUNCTION hold_{name}({first});"
        f" CREATE TRIGGER a_{name} AFTER INSERT ON receivers FOR EACH STATEMENT"
        f" EXECUTE FUNCTION hold_{name}({second})")

    async def held_at(key: int) -> bool:
        return bool(await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1"
            " AND NOT granted", key))

    try:
        await conn.execute(f"SELECT pg_advisory_lock({first}), pg_advisory_lock({second})")
        task = asyncio.create_task(claim(claimer, "p"))
        await wait_for(lambda: held_at(first), 5, message="the claim about to insert its row")
        await conn.execute("INSERT INTO receivers (name, url_index, cooldown) VALUES"
                           " ('p', 0, 60)")  # another replica's claim, first
        await conn.execute(f"SELECT pg_advisory_unlock({first})")
        await wait_for(lambda: held_at(second), 5, message="the claim about to read its row")
        assert await forgetter.announce("host-z:1:z", {("hook", 0)}, now=T0) == {("hook", 0)}
        assert await conn.fetchval("SELECT count(*) FROM receivers WHERE name = 'p'") == 0
        await conn.execute(f"SELECT pg_advisory_unlock({second})")
        result = await asyncio.wait_for(task, 5)
        assert (result.jobs, result.paused) == ([], False)
        assert await conn.fetchval("SELECT count(*) FROM receivers WHERE name = 'p'") == 1
    finally:
        await conn.execute(f"DROP TRIGGER b_{name} ON receivers; DROP TRIGGER a_{name} ON"
                           f" receivers; DROP FUNCTION hold_{name}()")
        await conn.close()
