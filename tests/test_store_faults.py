"""Store faults under a running relay: the SQLite file removed or moved away, then back.

Real files and directories, a real relay server and a real HTTP sink; nothing mocked.
"""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from relay.errors import StoreError
from relay.store import open_store
from relay.store.sqlite_writer import identity
from tests.conftest import wait_for
from tests.test_ingest import ROUTES, STORE_DOWN, counts, event


async def _relay(running: Any, sink: Any, db: Path) -> Any:
    return await running(ROUTES, db=db, ops=sink.url("ops"), refunds=sink.url("r"),
                         vip=sink.url("v"))


async def _ready(r: Any) -> tuple[int, Any]:
    async with r.session.get(r.url + "/readyz") as resp:
        return resp.status, await resp.json()


async def _refused(r: Any, delivery_id: str) -> None:
    """The event is answered 503 JSON and /readyz says the store is not ready."""
    status, body, headers = await r.post(event(delivery_id=delivery_id))
    assert (status, body, headers["Retry-After"]) == (503, STORE_DOWN, "5")
    ready, checks = await _ready(r)
    assert ready == 503 and checks["checks"]["store"] is False


async def test_a_removed_database_directory_refuses_writes_and_recovers_with_nothing_lost(
        running, sink, tmp_path):
    data = tmp_path / "data"
    db = data / "relay.db"
    r = await _relay(running, sink, db)
    assert (await r.post(event(delivery_id="before")))[0] == 202
    await wait_for(lambda: len(sink.messages("ops")) == 1, message="the first notification")

    shutil.rmtree(data)
    await _refused(r, "during")

    data.mkdir()  # the volume is back, empty: the removed file's content is copied in
    assert (await r.post(event(delivery_id="after")))[0] == 202
    assert (await _ready(r))[0] == 200
    assert counts(db) == (2, 2)  # the acknowledged event survived; the refused one is not there
    with closing(sqlite3.connect(db)) as conn:
        ids = [row[0] for row in conn.execute("SELECT delivery_id FROM events ORDER BY id")]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    assert ids == ["before", "after"] and version >= 2
    await wait_for(lambda: len(sink.messages("ops")) == 2, message="the notification after")


async def test_a_directory_moved_away_and_back_is_used_again(running, sink, tmp_path):
    data = tmp_path / "data"
    db = data / "relay.db"
    r = await _relay(running, sink, db)
    assert (await r.post(event(delivery_id="before")))[0] == 202
    opened = identity(str(db))

    away = data.rename(tmp_path / "elsewhere")  # what an unmounted volume looks like
    await _refused(r, "during")
    away.rename(data)

    assert (await r.post(event(delivery_id="after")))[0] == 202
    assert identity(str(db)) == opened and counts(db) == (2, 2)
    assert list(data.glob("*.recovered-*")) == []


async def test_a_file_replaced_while_open_is_opened_and_the_old_content_kept_beside_it(
        tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    store = open_store(f"sqlite:{db}")
    await store.open()
    try:
        await store.ping()
        db.unlink()
        db.write_bytes(b"")  # someone else's (empty) file at the path
        with pytest.raises(StoreError, match="removed or replaced"):
            await store.ping()
        await store.ping()  # reopened: the new file is migrated and written
        [kept] = list(tmp_path.glob("relay.db.recovered-*"))
        with closing(sqlite3.connect(kept)) as conn:
            assert conn.execute("SELECT count(*) FROM health").fetchone()[0] == 1
    finally:
        await store.close()


async def test_a_serving_store_reopened_on_a_new_file_still_refuses_a_second_relay(
        tmp_path: Path) -> None:
    """The exclusive lock is on the file a serving relay writes: once its folder was
    removed and the relay reopened the path (a new file, the old content copied in), a
    second relay on that path is still refused; it would otherwise serve from it too."""
    data = tmp_path / "data"
    db = data / "relay.db"
    first = open_store(f"sqlite:{db}", exclusive=True)
    await first.open()
    try:
        await first.ping()
        shutil.rmtree(data)
        with pytest.raises(StoreError, match="removed or replaced"):
            await first.ping()
        data.mkdir()
        await first.ping()  # reopened at the path: a new file
        second = open_store(f"sqlite:{db}", exclusive=True)
        with pytest.raises(StoreError, match="another relay is serving from"):
            await second.open()
        await first.ping()
    finally:
        await first.close()
    third = open_store(f"sqlite:{db}", exclusive=True)
    await third.open()  # the lock went with the store that held it
    await third.close()
