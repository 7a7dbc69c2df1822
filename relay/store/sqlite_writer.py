"""The SQLite store's one writer thread: group commit, and the file it writes must stay put.

The thread takes whatever operations are queued, runs them in one transaction
and commits once, so under load many requests share one
`fsync` and none is answered before its commit. An environmental error (disk
full, read-only file, lock timeout) fails the whole batch with StoreError and
nothing of it is written. An operation that refuses (StaleClaim, say) or fails
with a bug undoes only itself: the batch is then run again with a savepoint
around each operation (the usual batch, where none refuses, pays for none).

An open SQLite file keeps working after it is unlinked (its directory
removed, the volume gone): commits "succeed" into a deleted inode and are lost
at the next start. So before each commit the thread checks that the path
still names the file it opened (one `stat`), refuses the batch if not, and
from then on tries to reopen the path before each batch. A file that comes
back as it was (the directory moved back, the volume remounted) is simply
used again; if the path holds no file, the old file's content is copied
there first (SQLite's backup API reads it through the still-open
connection), so nothing acknowledged is lost.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

from relay.errors import RelayError, StoreError

log = logging.getLogger("relay.store.sqlite")
T = TypeVar("T")
MAX_BATCH = 512
Identity = tuple[int, int]
Result = tuple[Any, Any, BaseException | None]


def identity(path: str) -> Identity | None:
    """The (device, inode) the path names now; None when it names nothing reachable."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class FileGone(StoreError):
    """The configured path no longer names the file the store has open."""


class Writer:
    """Runs `fn(conn, *args)` operations on one thread, batched into shared commits."""

    def __init__(self, path: str, connect: Callable[[], sqlite3.Connection],
                 prepare: Callable[[sqlite3.Connection], None],
                 on_failure: Callable[[sqlite3.Connection], object]) -> None:
        self.path = path
        self._connect = connect
        self._prepare = prepare  # migrations: run on every file the writer opens
        self._on_failure = on_failure
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._identity: Identity | None = None
        self.lost = False  # the file was removed or replaced under us

    @property
    def running(self) -> bool:
        return self._thread is not None

    async def start(self) -> None:
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="sqlite-store",
                                        daemon=True)
        self._thread.start()
        try:
            await ready
        except BaseException:
            self._thread = None
            raise

    async def stop(self) -> None:
        if self._thread:
            self._queue.put(None)
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
            self._thread = None

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        if not self._thread:
            raise StoreError("store is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put((fn, args, future, loop))
        return await future

    # ------------------------------------------------------------ the thread

    def _open_file(self) -> sqlite3.Connection:
        conn = self._connect()
        try:
            self._prepare(conn)
        except BaseException:
            conn.close()
            raise
        self._identity = identity(self.path)
        return conn

    def _run(self, ready: asyncio.Future[None]) -> None:
        loop = ready.get_loop()
        try:
            self._conn = self._open_file()
        except (sqlite3.Error, RelayError, OSError) as e:
            err = e if isinstance(e, RelayError) else StoreError(f"cannot open {self.path}: {e}")
            loop.call_soon_threadsafe(_settle, ready, None, err)
            return
        loop.call_soon_threadsafe(_settle, ready, None, None)
        while True:
            batch = [self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            stop = None in batch
            self._execute([op for op in batch if op is not None])
            if stop:
                self._conn.close()
                return

    def _execute(self, batch: list[Any]) -> None:
        if not batch:
            return
        try:
            results = self._commit(batch)
        except (sqlite3.Error, StoreError) as e:
            error = e if isinstance(e, StoreError) else StoreError(f"store unavailable: {e}")
            log.error("store write failed: %s", e)
            results = [(op[2], None, error) for op in batch]
        by_loop: dict[Any, list[Result]] = {}
        for result, op in zip(results, batch, strict=True):
            by_loop.setdefault(op[3], []).append(result)
        for loop, settled in by_loop.items():  # one wake-up of each loop per batch
            loop.call_soon_threadsafe(_settle_all, settled)

    def _commit(self, batch: list[Any]) -> list[Result]:
        if self.lost:
            self._recover()
        conn = self._conn
        assert conn is not None
        try:
            conn.execute("BEGIN IMMEDIATE")
            results = _straight(conn, batch)
            if results is None:  # one refused: again, each in a savepoint, to undo only it
                _rollback(conn)
                self._on_failure(conn)  # the estimate's changes of the undone run
                conn.execute("BEGIN IMMEDIATE")
                results = [_one(conn, fn, args, future) for fn, args, future, _loop in batch]
            if identity(self.path) != self._identity:
                self.lost = True
                raise FileGone(f"store unavailable: {self.path} was removed or replaced"
                               " while open; writes are refused until it is back")
            conn.execute("COMMIT")
        except (sqlite3.Error, StoreError):
            _rollback(conn)
            try:
                self._on_failure(conn)  # undo the estimate's changes from the lost batch
            except sqlite3.Error:
                pass
            raise
        return results

    def _recover(self) -> None:
        """Reopen the configured path, or raise FileGone while that is not possible."""
        old = self._conn
        assert old is not None
        now = identity(self.path)
        if now is None and not Path(self.path).parent.is_dir():
            raise FileGone(f"store unavailable: the directory of {self.path} is gone")
        try:
            if now == self._identity:
                log.warning("store file %s is back; writing again", self.path)
            else:
                self._salvage(old, now is not None)
                old.close()
                self._conn = self._open_file()
                log.warning("store reopened at %s", self.path)
        except (sqlite3.Error, OSError, RelayError) as e:
            raise FileGone(f"store unavailable: cannot reopen {self.path}: {e}") from e
        self.lost = False

    def _salvage(self, old: sqlite3.Connection, occupied: bool) -> None:
        """Copy the removed file's content to the path, or beside a file now there."""
        target = f"{self.path}.recovered-{int(time.time())}" if occupied else self.path
        with closing(sqlite3.connect(target)) as copy:
            old.backup(copy)
        if occupied:
            log.error("store file %s was replaced while open; the content of the removed"
                      " file is kept in %s", self.path, target)


def _straight(conn: sqlite3.Connection, batch: list[Any]) -> list[Result] | None:
    """Every operation of the batch in the one transaction, without a savepoint each (the
    savepoint and its release cost about a tenth of an accept); None as soon as one raises
    anything but sqlite3.Error, and the caller runs the batch again the careful way."""
    results: list[Result] = []
    for fn, args, future, _loop in batch:
        try:
            results.append((future, fn(conn, *args), None))
        except sqlite3.Error:
            raise
        except Exception:
            return None
    return results


def _one(conn: sqlite3.Connection, fn: Callable[..., Any], args: tuple[Any, ...],
         future: Any) -> Result:
    conn.execute("SAVEPOINT op")
    try:
        value = fn(conn, *args)
    except sqlite3.Error:
        raise
    except Exception as e:  # a refusal (or a bug) undoes only this operation
        if not isinstance(e, RelayError):
            log.exception("store operation %s failed", getattr(fn, "__name__", fn))
        conn.execute("ROLLBACK TO op")
        conn.execute("RELEASE op")
        return future, None, e
    conn.execute("RELEASE op")
    return future, value, None


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass


def _settle_all(results: list[Result]) -> None:
    for future, value, error in results:
        _settle(future, value, error)


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
