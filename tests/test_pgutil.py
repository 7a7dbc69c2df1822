"""The pool of migrated PostgreSQL schemas (tests/pgutil.py): a schema comes back to the
next test as migration left it, or not at all."""

from __future__ import annotations

import pytest

from relay.store import SCHEMA_VERSION, open_store
from tests import pgutil
from tests.test_store_contract import T0, claim, event, job

pytestmark = pytest.mark.postgres


async def run(dsn: str, *statements: str) -> list[list[tuple[object, ...]]]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return [[tuple(r) for r in await conn.fetch(s)] for s in statements]
    finally:
        await conn.close()


async def test_a_used_schema_comes_back_empty_with_its_sequences_restarted() -> None:
    base = await pgutil.base_dsn()
    async with pgutil.migrated_schema(base) as used:
        store = open_store(used)
        await store.open()
        await store.accept(event(), "k", [job(), job(receiver="other")], now=T0)
        await claim(store)
        await store.ping()
        await store.close()
    async with pgutil.migrated_schema(base) as dsn:
        assert dsn == used  # the same schema, reused
        tables = [r[0] for r in (await run(dsn, "SELECT tablename FROM pg_tables WHERE"
                                           " schemaname = current_schema()"))[0]]
        assert "schema_version" in tables and len(tables) == 11
        counts = await run(dsn, *(f"SELECT count(*) FROM {t}" for t in tables
                                  if t != "schema_version"))
        assert counts == [[(0,)]] * (len(tables) - 1)
        assert (await run(dsn, "SELECT version FROM schema_version ORDER BY 1"))[0] == \
            [(v,) for v in range(1, SCHEMA_VERSION + 1)]
        store = open_store(dsn)
        await store.open()
        accepted = await store.accept(event(), "k", [job()], now=T0)
        await store.close()
        assert accepted.event_id == 1  # as in a new schema
        assert (await run(dsn, "SELECT id FROM jobs"))[0] == [(1,)]


# What a test may leave behind; each makes the schema unfit for the next test.
LEFTOVERS = {
    "a trigger and its function": (
        "CREATE FUNCTION fault() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN RAISE EXCEPTION 'injected fault'; END $$",
        "CREATE TRIGGER fault_jobs BEFORE UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION fault()"),
    "a function": ("CREATE FUNCTION helper() RETURNS int LANGUAGE sql AS 'SELECT 1'",),
    "a column": ("ALTER TABLE jobs ADD COLUMN extra text",),
    "a column dropped and added again": ("ALTER TABLE jobs DROP COLUMN event_at",
                                         "ALTER TABLE jobs ADD COLUMN event_at double precision"),
    "a schema version row": (f"INSERT INTO schema_version (version) VALUES ({SCHEMA_VERSION + 1})",),
    "a dropped index": ("DROP INDEX jobs_held",),
    "a changed constraint": ("ALTER TABLE jobs DROP CONSTRAINT jobs_state_check",
                             "ALTER TABLE jobs ADD CONSTRAINT jobs_state_check"
                             " CHECK (state IN ('pending', 'sent'))"),
    "foreign keys switched off": ("ALTER TABLE attempts DISABLE TRIGGER ALL",),
    "a rule that keeps rows": ("CREATE RULE keep AS ON DELETE TO events DO INSTEAD NOTHING",),
}


async def test_a_schema_left_different_is_not_as_migrated() -> None:
    import asyncpg

    async with pgutil.migrated_schema(await pgutil.base_dsn()) as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            assert await pgutil.as_migrated(conn)
            for leftover, statements in LEFTOVERS.items():
                tx = conn.transaction()  # rolled back: the schema goes back to the pool as it was
                await tx.start()
                for statement in statements:
                    await conn.execute(statement)
                assert not await pgutil.as_migrated(conn), leftover
                await tx.rollback()
                assert await pgutil.as_migrated(conn), leftover
        finally:
            await conn.close()


async def test_a_schema_left_with_a_fault_trigger_is_dropped_and_the_next_test_gets_another(
        ) -> None:
    base = await pgutil.base_dsn()
    async with pgutil.migrated_schema(base) as changed:
        await run(changed, *LEFTOVERS["a trigger and its function"])
    schema = changed.rsplit("search_path%3D", 1)[1].split("%20", 1)[0]
    assert (await run(base, f"SELECT count(*) FROM pg_namespace WHERE nspname = '{schema}'")
            ) == [[(0,)]]
    async with pgutil.migrated_schema(base) as dsn:
        assert dsn != changed
        assert (await run(dsn, "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON"
                          " c.oid = t.tgrelid WHERE c.relnamespace ="
                          " current_schema()::regnamespace AND NOT t.tgisinternal",
                          "SELECT count(*) FROM pg_proc WHERE pronamespace ="
                          " current_schema()::regnamespace")) == [[(0,)], [(0,)]]
