"""Schema steps 7-11 on a database left by an older relay, and what steps 9 and 10 are for.

On SQLite step 7 rebuilds `jobs` (a CHECK cannot be altered): the rebuilt table
must carry every column and index steps 1-6 made, or it drops them silently.
Each test builds a database at an older version with the old relay's own steps,
fills jobs and attempts, opens it with this relay, and compares the whole
schema with a fresh database's, row by row. Step 9 lets a delivery's status
page read its newest events in index order: the plans prove it. Step 10 keys a
receiver's circuit and token bucket by receiver URL: the old row becomes URL 0's.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from relay.message import Message
from relay.store import SCHEMA_VERSION, Job, open_store, sql
from relay.store.rows import JOB_FIELDS
from relay.store.schema import migrations
from tests import pgutil

EVENT = ("INSERT INTO events (dedup_key, type, delivery_id, received_at, payload)"
         " VALUES ('k{n}', 'delivery.updated', 'd{n}', {n}, '{{}}')")
JOB = ("INSERT INTO jobs (event_id, receiver, url_index, route, title, body, type, format,"
       " delivery_id, event_type, created_at, next_attempt_at, state, finished_at{extra_cols})"
       " VALUES ({n}, 'ops', 0, 'r', 't{n}', 'b', 'info', 'text', 'd{n}', 'delivery.updated',"
       " {n}, {n}, '{state}', {finished}{extra_vals})")
ATTEMPT = ("INSERT INTO attempts (job_id, at, outcome, error, duration)"
           " VALUES ({n}, {n}, 'failed', 'HTTP 400', 0.1)")
STATES = ("pending", "sent", "dead", "suppressed")
# A receiver whose circuit is open, as a relay before step 10 kept it (one row per name).
OLD_RECEIVER = ("INSERT INTO receivers (name, tokens, tokens_at, failures, open_until, cooldown)"
                " VALUES ('ops', 2.5, 7.0, 5, 1900000000.0, 120.0)")
RECEIVER_VIEW = ("SELECT name, url_index, tokens, tokens_at, failures, open_until, cooldown"
                 " FROM receivers ORDER BY name, url_index")
MIGRATED_RECEIVER = [("ops", 0, 2.5, 7.0, 5, 1900000000.0, 120.0)]


def old_rows(version: int) -> list[str]:
    """Events, one job in each old state (live ones at version 6), an attempt per job and
    a receiver's row."""
    out = [OLD_RECEIVER]
    for n, state in enumerate(STATES, 1):
        live = ", live, event_at", f", {n % 2}, {n}.5"
        extra = live if version >= 6 else ("", "")
        out += [EVENT.format(n=n),
                JOB.format(n=n, state=state, finished="NULL" if state == "pending" else n,
                           extra_cols=extra[0], extra_vals=extra[1]),
                ATTEMPT.format(n=n)]
    return out


JOB_VIEW = ("SELECT id, event_id, receiver, title, state, attempts, finished_at, live, event_at"
            " FROM jobs ORDER BY id")


# ---------------------------------------------------------------- SQLite


def sqlite_at(path: Path, version: int) -> None:
    """A file as a relay at `version` left it, with jobs and attempts in it."""
    steps = migrations("sqlite")
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA foreign_keys=ON")
        for step in range(1, version + 1):
            conn.executescript(f"BEGIN;{steps[step]}PRAGMA user_version={step};COMMIT;")
        for statement in old_rows(version):
            conn.execute(statement)
        if version < 7:
            with pytest.raises(sqlite3.IntegrityError):  # the old CHECK: no held jobs yet
                conn.execute("UPDATE jobs SET state = 'held' WHERE id = 1")


async def open_and_close(url: str) -> None:
    store = open_store(url)
    await store.open()
    await store.close()


def sqlite_schema(path: Path) -> dict[str, Any]:
    """Every table's columns, indexes (with their columns and WHERE), foreign keys and SQL."""
    with closing(sqlite3.connect(path)) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        out: dict[str, Any] = {"master": conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name").fetchall()}
        for t in tables:
            indexes = conn.execute(f"PRAGMA index_list({t})").fetchall()
            out[t] = {"columns": conn.execute(f"PRAGMA table_info({t})").fetchall(),
                      "indexes": sorted(indexes),
                      "index_columns": {i[1]: conn.execute(f"PRAGMA index_info({i[1]})").fetchall()
                                        for i in indexes},
                      "foreign_keys": conn.execute(f"PRAGMA foreign_key_list({t})").fetchall()}
        return out


@pytest.mark.parametrize("version", [5, 6, 7, 8, 9, 10])
async def test_a_sqlite_file_at_an_older_version_upgrades_to_the_newest_keeping_every_row_column_and_index(
        tmp_path: Path, version: int) -> None:
    old, fresh = tmp_path / "old.db", tmp_path / "fresh.db"
    sqlite_at(old, version)
    with closing(sqlite3.connect(old)) as conn:
        before = conn.execute(JOB_VIEW if version >= 6 else JOB_VIEW.replace(
            "live, event_at", "0, NULL")).fetchall()
        attempts = conn.execute("SELECT * FROM attempts ORDER BY id").fetchall()
    await open_and_close(f"sqlite:{old}")
    await open_and_close(f"sqlite:{fresh}")

    assert sqlite_schema(old) == sqlite_schema(fresh)
    with closing(sqlite3.connect(old)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 11
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute(JOB_VIEW).fetchall() == before  # live and event_at kept at 6
        assert conn.execute("SELECT * FROM attempts ORDER BY id").fetchall() == attempts
        names = {r[1] for r in conn.execute("PRAGMA index_list(jobs)")}
        assert {"jobs_due", "jobs_event", "jobs_delivery", "jobs_sent", "jobs_held"} <= names
        # step 8: jobs_held is partial (held jobs only); no timers_delivery
        partial = {r[1]: r[4] for r in conn.execute("PRAGMA index_list(jobs)")}
        assert partial["jobs_held"] == 1
        assert "timers_delivery" not in {r[1] for r in conn.execute("PRAGMA index_list(timers)")}
        assert [r[2] for r in conn.execute("PRAGMA index_info(jobs_delivery)")] == ["delivery_id"]
        conn.execute("PRAGMA foreign_keys=ON")  # (outside a transaction, or it is a no-op)
        conn.execute("UPDATE jobs SET state = 'held' WHERE id = 1")  # the wider CHECK
        conn.execute("DELETE FROM events WHERE id = 2")  # still cascades into jobs, attempts
        assert conn.execute("SELECT count(*) FROM attempts WHERE job_id = 2").fetchone() == (0,)
        # step 10: the receiver's row is its URL 0's; its URL 1 gets a row of its own
        assert conn.execute(RECEIVER_VIEW).fetchall() == MIGRATED_RECEIVER
        conn.execute("INSERT INTO receivers (name, url_index) VALUES ('ops', 1)")
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO receivers (name, url_index) VALUES ('ops', 0)")
        assert [r[2] for r in conn.execute("PRAGMA index_info(jobs_due)")] == \
            ["state", "receiver", "url_index", "next_attempt_at"]


def test_the_step_7_rebuild_lists_every_column_and_index_on_jobs_of_the_steps_before_it() -> None:
    """The rebuild's SQL, read directly: each earlier step's jobs column and index is in it."""
    steps = migrations("sqlite")
    rebuild = steps[7]
    with closing(sqlite3.connect(":memory:")) as conn:
        for step in range(1, 7):
            conn.executescript(steps[step])
        columns = [r[1] for r in conn.execute("PRAGMA table_info(jobs)")]
        indexes = [r[1] for r in conn.execute("PRAGMA index_list(jobs)")]
    assert "live" in columns and "event_at" in columns
    assert f"INSERT INTO jobs_new ({', '.join(columns)}) SELECT {', '.join(columns)} FROM jobs" \
        in rebuild
    assert all(f"INDEX IF NOT EXISTS {name} ON jobs " in rebuild for name in indexes), indexes


# ---------------------------------------------------------------- PostgreSQL


async def pg_schema(conn: Any) -> dict[str, Sequence[Any]]:
    """Columns, indexes and constraints of the current schema, comparable across schemas."""
    columns = await conn.fetch(
        "SELECT table_name, column_name, ordinal_position, data_type, is_nullable,"
        " regexp_replace(column_default, 't_[0-9a-f]+\\.', '') AS column_default"
        " FROM information_schema.columns WHERE table_schema = current_schema()"
        " ORDER BY table_name, ordinal_position")
    indexes = await conn.fetch(
        "SELECT tablename, indexname, regexp_replace(indexdef, 't_[0-9a-f]+\\.', '') AS def"
        " FROM pg_indexes WHERE schemaname = current_schema() ORDER BY indexname")
    constraints = await conn.fetch(
        "SELECT c.conrelid::regclass::text AS tbl, c.conname, pg_get_constraintdef(c.oid) AS def"
        " FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace"
        " WHERE n.nspname = current_schema() ORDER BY tbl, conname")
    return {"columns": [tuple(r) for r in columns], "indexes": [tuple(r) for r in indexes],
            "constraints": [tuple(r) for r in constraints]}


async def pg_at(conn: Any, version: int) -> None:
    """A schema as a relay at `version` left it, with jobs, attempts and a receiver row."""
    await conn.execute("CREATE TABLE schema_version (version integer PRIMARY KEY,"
                       " applied_at timestamptz NOT NULL DEFAULT now())")
    steps = migrations("postgres")
    for step in range(1, version + 1):
        await conn.execute(steps[step])
        await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", step)
    for statement in old_rows(version):
        await conn.execute(statement.replace(", 1, 1.5)", ", true, 1.5)")
                           .replace(", 0, 2.5)", ", false, 2.5)")
                           .replace(", 1, 3.5)", ", true, 3.5)")
                           .replace(", 0, 4.5)", ", false, 4.5)"))


@pytest.mark.postgres
@pytest.mark.parametrize("version", [6, 8, 9, 10])
async def test_a_postgres_schema_at_an_older_version_upgrades_to_the_newest_keeping_every_row_column_and_index(
        version: int) -> None:
    import asyncpg

    base = await pgutil.base_dsn()
    async with pgutil.fresh_schema(base) as old, pgutil.fresh_schema(base) as fresh:
        conn = await asyncpg.connect(old)
        try:
            await pg_at(conn, version)
            if version < 7:
                with pytest.raises(asyncpg.CheckViolationError):
                    await conn.execute("UPDATE jobs SET state = 'held' WHERE id = 1")
            before = [tuple(r) for r in await conn.fetch(JOB_VIEW)]
            attempts = [tuple(r) for r in await conn.fetch("SELECT * FROM attempts ORDER BY id")]
            await open_and_close(old)
            await open_and_close(fresh)
            assert await conn.fetchval("SELECT max(version) FROM schema_version") == 11
            assert [tuple(r) for r in await conn.fetch(JOB_VIEW)] == before
            assert [tuple(r) for r in await conn.fetch("SELECT * FROM attempts ORDER BY id")] \
                == attempts
            await conn.execute("UPDATE jobs SET state = 'held' WHERE id = 1")
            index = await conn.fetchval("SELECT indexdef FROM pg_indexes WHERE indexname ="
                                        " 'events_delivery' AND schemaname = current_schema()")
            assert index.endswith("(delivery_id, id)")
            assert [tuple(r) for r in await conn.fetch(RECEIVER_VIEW)] == MIGRATED_RECEIVER
            await conn.execute("INSERT INTO receivers (name, url_index) VALUES ('ops', 1)")
            with pytest.raises(asyncpg.UniqueViolationError):
                await conn.execute("INSERT INTO receivers (name, url_index) VALUES ('ops', 0)")
            await conn.execute("DELETE FROM receivers WHERE url_index = 1")
            other = await asyncpg.connect(fresh)
            try:
                assert await pg_schema(conn) == await pg_schema(other)
            finally:
                await other.close()
        finally:
            await conn.close()


# ---------------------------------------------------------------- step 9: a delivery's newest events

# What a delivery's status page reads of its events (sql.TIMELINE_QUERIES): the newest
# TIMELINE_SHOWN, those events themselves, and how many earlier ones it leaves out.
NEWEST = f"SELECT id FROM events WHERE delivery_id = ? ORDER BY id DESC LIMIT {sql.TIMELINE_SHOWN}"
EVENT_READS = {"newest": (NEWEST, 1), "events": (sql.TIMELINE_EVENTS, 2),
               "earlier": (sql.TIMELINE_EARLIER, 2)}
# 750 events of one delivery among 50,000 (many deliveries of a few events each), all
# in the table's oldest 30,000: its newest 100 are neither the table's first nor its last.
BIG, MANY, EVERY, UNTIL = "D-big", 50_000, 40, 30_000
ROWS = ("SELECT 'k' || i, 'delivery.updated', CASE WHEN i % {every} = 0 AND i <= {until}"
        " THEN '{big}' ELSE 'd' || (i % 997) END, i, '{{}}' FROM {series}")


def pg_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(n for child in plan.get("Plans", ()) for n in pg_nodes(child))]


@pytest.mark.postgres
async def test_postgres_reads_a_deliverys_newest_events_from_its_index_without_sorting_them(
        ) -> None:
    """Before step 9 the newest 100 of a delivery's 750 events were found by sorting all
    of them, or by walking the primary key back from the table's newest row."""
    import asyncpg

    plans = {}
    async with pgutil.migrated_schema(await pgutil.base_dsn()) as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "INSERT INTO events (dedup_key, type, delivery_id, received_at, payload) "
                + ROWS.format(every=EVERY, until=UNTIL, big=BIG,
                              series=f"generate_series(1, {MANY}) AS i"))
            await conn.execute("ANALYZE events")
            for read, (query, times) in EVENT_READS.items():
                found = await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql.numbered(query),
                                            *[BIG] * times)
                plans[read] = (json.loads(found) if isinstance(found, str) else found)[0]["Plan"]
        finally:
            await conn.execute("TRUNCATE events CASCADE")
            await conn.close()
    for read, plan in plans.items():
        [limit] = [n for n in pg_nodes(plan) if n["Node Type"] == "Limit"]  # the newest 100
        walk = [(n["Node Type"], n.get("Index Name")) for n in pg_nodes(limit)]
        assert [n for n in walk if "Sort" in n[0]] == [], (read, walk)
        assert ("events_delivery" in {name for _, name in walk}), (read, walk)


async def test_sqlite_reads_a_deliverys_newest_events_from_its_index_without_sorting_them(
        tmp_path: Path) -> None:
    """SQLite needs no step 9: `events_delivery` ends with the rowid, which is `id`."""
    await open_and_close(f"sqlite:{tmp_path / 'relay.db'}")
    with closing(sqlite3.connect(tmp_path / "relay.db")) as conn:
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
            " INSERT INTO events (dedup_key, type, delivery_id, received_at, payload) "
            + ROWS.format(every=EVERY, until=UNTIL, big=BIG, series="n"), (MANY,))
        conn.execute("ANALYZE")
        for query, times in EVENT_READS.values():
            steps = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + query, [BIG] * times)]
            assert not [s for s in steps if "TEMP B-TREE" in s], (query, steps)
            assert any("INDEX events_delivery (delivery_id=?)" in s for s in steps), steps


def schema_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "store schema" in r.getMessage()]


async def test_a_store_says_in_one_line_that_it_created_or_upgraded_its_schema(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A first start created the schema (not nine `migrated to version N` lines); an older
    file was upgraded from its version; a current one says nothing."""
    caplog.set_level("INFO", logger="relay.store")
    await open_and_close(f"sqlite:{tmp_path / 'new.db'}")
    assert schema_lines(caplog) == [f"store schema created (version {SCHEMA_VERSION})"]
    caplog.clear()
    sqlite_at(tmp_path / "old.db", 5)
    await open_and_close(f"sqlite:{tmp_path / 'old.db'}")
    assert schema_lines(caplog) == [f"store schema upgraded from version 5 to {SCHEMA_VERSION}"]
    caplog.clear()
    await open_and_close(f"sqlite:{tmp_path / 'old.db'}")
    assert schema_lines(caplog) == []


@pytest.mark.postgres
async def test_a_postgres_store_says_in_one_line_that_it_created_its_schema(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="relay.store")
    async with pgutil.fresh_schema(await pgutil.base_dsn()) as dsn:
        await open_and_close(dsn)
        assert schema_lines(caplog) == [f"store schema created (version {SCHEMA_VERSION})"]
        caplog.clear()
        await open_and_close(dsn)
        assert schema_lines(caplog) == []


async def test_a_job_is_read_from_each_of_its_fields_and_from_real_columns(tmp_path: Path) -> None:
    """JOB_FIELDS is Job's fields with its `message` as the four columns it is stored in, and
    each is a column of `jobs` (a field with a default, left out, would read as the default)."""
    names = [f.name for f in fields(Job)]
    at = names.index("message")
    assert list(JOB_FIELDS) == names[:at] + [f.name for f in fields(Message)] + names[at + 1:]
    await open_and_close(f"sqlite:{tmp_path / 'fresh.db'}")
    with closing(sqlite3.connect(tmp_path / "fresh.db")) as conn:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    assert set(JOB_FIELDS) <= columns


# ---------------------------------------------------------------- step 10 through `migrate`


def test_migrate_upgrades_a_version_9_sqlite_file_and_the_receivers_row_becomes_url_0s(
        tmp_path: Path) -> None:
    from tests.test_cli_errors import relay_config, run

    sqlite_at(tmp_path / "relay.db", 9)
    cfg = relay_config(tmp_path, "127.0.0.1:8080")  # sqlite:relay.db, beside the config
    done = run("migrate", "-c", str(cfg))
    assert done.returncode == 0, done.stderr
    assert "store schema is at version 11" in done.stdout
    with closing(sqlite3.connect(tmp_path / "relay.db")) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (11,)
        assert conn.execute(RECEIVER_VIEW).fetchall() == MIGRATED_RECEIVER
        assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (len(STATES),)


@pytest.mark.postgres
async def test_migrate_upgrades_a_version_9_postgres_schema_and_the_receivers_row_becomes_url_0s(
        tmp_path: Path) -> None:
    import asyncpg

    from tests.test_cli_errors import relay_config, run

    async with pgutil.fresh_schema(await pgutil.base_dsn()) as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await pg_at(conn, 9)
            done = run("migrate", "-c", str(relay_config(tmp_path, "127.0.0.1:8080", dsn)))
            assert done.returncode == 0, done.stderr
            assert "store schema is at version 11" in done.stdout
            assert await conn.fetchval("SELECT max(version) FROM schema_version") == 11
            assert [tuple(r) for r in await conn.fetch(RECEIVER_VIEW)] == MIGRATED_RECEIVER
            assert await conn.fetchval("SELECT count(*) FROM jobs") == len(STATES)
        finally:
            await conn.close()
