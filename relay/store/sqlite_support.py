"""SQLite primitives beside the store: a held notification at ingest, replays and retries
an operator asks for, and what processes of this host that died left claimed or held.

Plain functions of a connection, run on the writer thread inside a batch's
transaction; the rules are `rules`, the statements `sql`.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sqlite3
from collections.abc import Collection

from relay.errors import StoreError
from relay.events import Event
from relay.store import rules, sql
from relay.store.records import Notification
from relay.store.relays import (
    ANNOUNCED_FOR,
    Place,
    here,
    live_places,
    owner_gone,
    places_text,
    relay_gone,
)
from relay.store.rows import from_row


def hold(conn: sqlite3.Connection, event_id: int, event: Event, spec: Notification, ts: float,
         now: float) -> tuple[sql.Queued, int]:
    """The job a notification becomes, and how many waiting jobs it replaced."""
    key = sql.waiting_key(event, spec)
    waiting = [] if key is None else [from_row(rules.Waiting, r)
                                      for r in conn.execute(sql.WAITING, key)]
    coalesced = rules.coalesce(ts, now, spec.hold, waiting)
    replaced = sum(conn.execute(sql.REPLACE, args).rowcount
                   for args in sql.replace_args(coalesced.replaces, event_id, now))
    return sql.queued(spec, coalesced), replaced


def replay(conn: sqlite3.Connection, job_ids: list[int] | None, receiver: str | None,
           now: float) -> int:
    """Dead jobs (these ids, this receiver's, or all) pending again, on a fresh schedule:
    attempts reset, history kept."""
    where, params = "state='dead'", list[object]()
    if job_ids:
        where += f" AND id IN ({','.join('?' * len(job_ids))})"
        params += job_ids
    if receiver:
        where += " AND receiver=?"
        params.append(receiver)
    return conn.execute(f"UPDATE jobs SET state='pending', attempts=0, next_attempt_at=?,"
                        f" created_at=?, finished_at=NULL WHERE {where}",
                        [now, now, *params]).rowcount


def retry_now(conn: sqlite3.Connection, receiver: str, url_index: int, now: float) -> int:
    conn.execute(sql.CLOSE_CIRCUIT, sql.close_args(receiver, url_index))
    return conn.execute(sql.RETRY_NOW, (now, now, receiver, url_index)).rowcount


def announce(conn: sqlite3.Connection, owner: str, places: Collection[Place],
             now: float) -> set[Place]:
    """Store.announce's transaction (see relay.store.relays)."""
    here(owner, serving=True)
    conn.execute(sql.ANNOUNCE, (owner, places_text(places), now))
    conn.execute(sql.FORGET_RELAYS, (now - ANNOUNCED_FOR,))
    host = socket.gethostname()
    live = live_places(places, conn.execute(sql.LIVE_RELAYS).fetchall(), owner,
                       lambda o: relay_gone(o, host, one_process=True))
    conn.executemany(sql.FORGET_CIRCUIT, [(*p, *p) for p in map(tuple, conn.execute(
        sql.CIRCUIT_ROWS).fetchall()) if p not in live])
    return live


def withdraw(conn: sqlite3.Connection, owner: str) -> None:
    here(owner, serving=False)
    conn.execute(sql.WITHDRAW, (owner,))


def release_dead_owners(conn: sqlite3.Connection) -> int:
    """Claims of crashed processes on this host go back to pending at once."""
    host = socket.gethostname()
    owners = [r[0] for r in conn.execute(
        "SELECT DISTINCT claimed_by FROM jobs WHERE state='claimed'")]
    dead = [o for o in owners if owner_gone(o, host)]
    for owner in dead:
        conn.execute("UPDATE jobs SET state='pending', claim_token=NULL, claimed_by=NULL,"
                     " lease_until=NULL WHERE state='claimed' AND claimed_by=?", (owner,))
    timer_owners = [r[0] for r in conn.execute(
        "SELECT DISTINCT claimed_by FROM timers WHERE state='claimed'")]
    for owner in (o for o in timer_owners if owner_gone(o, host)):
        conn.execute("UPDATE timers SET state='armed', claim_token=NULL, claimed_by=NULL,"
                     " lease_until=NULL WHERE state='claimed' AND claimed_by=?", (owner,))
    # Live messages they held, likewise (else their next edit waits out the lease).
    holders = [r[0] for r in conn.execute(sql.LIVE_HOLDERS)]
    conn.executemany(sql.FREE_LIVE, [(h,) for h in holders if owner_gone(h, host)])
    return len(dead)


def lock_exclusively(path: str) -> int:
    """Take the file's exclusive lock for a serving relay (an fd to close when it stops).

    Two relays on one SQLite file would each count the backlog, group commits and claim
    as if alone; the second is refused at its start. `flock`, not SQLite's own `fcntl`
    locks, which it does not touch (Linux keeps the two apart); the kernel drops it when
    the process dies, so a relay killed with -9 leaves no stale lock."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise StoreError(f"cannot open {path}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(f"another relay is serving from {path}: stop it first, or give this"
                         " one a store.url of its own (several relays on one store need"
                         " PostgreSQL)") from None
    except OSError as e:  # no locks left (ENOLCK), a filesystem without them
        os.close(fd)
        raise StoreError(f"cannot lock {path}: {e.strerror}") from None
    return fd


def relock(path: str, fd: int) -> int:
    """The lock for the file the path names now (an fd): the writer reopens the path on a
    new file when the old one was removed, and a lock left on that one would let a second
    relay serve from the new one. The old file's connection is closed by then (closing an
    fd of a file drops the process's `fcntl` locks on it, SQLite's included)."""
    held = os.fstat(fd)
    try:
        now = os.stat(path)
    except OSError:
        now = None
    if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
        return fd
    new = lock_exclusively(path)
    os.close(fd)
    return new
