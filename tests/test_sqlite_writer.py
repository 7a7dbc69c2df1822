"""The SQLite writer thread's group commit on a real file: what one operation's refusal
(or bug) does to the others in its batch."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from relay.errors import RelayError
from relay.store.sqlite_writer import Writer


class Refused(RelayError):
    pass


async def test_an_operation_that_raises_undoes_only_itself_and_the_batch_commits_once(
        tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    failures: list[int] = []
    commits: list[str] = []

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
        return conn

    def prepare(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")

    writer = Writer(str(path), connect, prepare, lambda conn: failures.append(1))
    await writer.start()
    gate, started = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:  # keeps the thread busy: the rest queue up
        started.set()
        gate.wait()

    def insert(conn: sqlite3.Connection, x: int, then: BaseException | None = None) -> int:
        conn.execute("INSERT INTO t VALUES (?)", (x,))
        if then is not None:
            raise then
        return x

    first = asyncio.ensure_future(writer.call(hold))
    await asyncio.get_running_loop().run_in_executor(None, started.wait)
    calls = [asyncio.ensure_future(writer.call(insert, 1)),
             asyncio.ensure_future(writer.call(insert, 2, Refused("stale claim"))),
             asyncio.ensure_future(writer.call(insert, 3)),
             asyncio.ensure_future(writer.call(insert, 4, ValueError("a bug")))]
    await asyncio.sleep(0)  # one loop pass, not a wait: each call's task runs up to its enqueue
    gate.set()
    await first
    results = await asyncio.gather(*calls, return_exceptions=True)
    await writer.stop()

    assert results[0] == 1 and results[2] == 3
    assert isinstance(results[1], Refused) and isinstance(results[3], ValueError)
    with closing(sqlite3.connect(path)) as conn:
        assert [r[0] for r in conn.execute("SELECT x FROM t ORDER BY x")] == [1, 3]
    assert failures == [1]  # the undone straight run is accounted for once
    assert len(commits) == 2  # the gate's batch, then one commit for the four calls


@pytest.mark.parametrize("fault", [Refused("stale"), ValueError("bug")])
async def test_a_batch_of_one_that_raises_writes_nothing(tmp_path: Path,
                                                         fault: BaseException) -> None:
    path = tmp_path / "w.db"
    writer = Writer(str(path), lambda: sqlite3.connect(path, isolation_level=None,
                                                        check_same_thread=False),
                    lambda conn: conn.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)"),
                    lambda conn: None)
    await writer.start()

    def insert(conn: sqlite3.Connection) -> Any:
        conn.execute("INSERT INTO t VALUES (1)")
        raise fault

    with pytest.raises(type(fault)):
        await writer.call(insert)
    await writer.stop()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
