"""PostgreSQL plumbing: errors, DSN redaction, the LISTEN connection, claim primitives, the
relays' announcements."""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections.abc import Callable, Collection
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from relay.store import rules, sql
from relay.store.records import Circuit, Job
from relay.store.relays import ANNOUNCED_FOR, Place, live_places, places_text, relay_gone
from relay.store.rows import JOB_COLUMNS, from_row, job_from_row
from relay.store.sql import numbered as q

log = logging.getLogger("relay.store.postgres")
CHANNEL = "kourier_relay_jobs"
CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 10.0  # bounds a query on a connection whose server vanished silently
KEEPALIVE = 5.0
# InternalClientError: asyncpg's protocol state after the server dropped mid-command.
ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError,
          asyncio.TimeoutError)
# What connecting may raise besides: ValueError for a malformed DSN, OverflowError for a
# port over 65535 (the socket's own check).
CONNECT_ERRORS = (*ERRORS, ValueError, OverflowError)


def redact(url: str) -> str:
    """The DSN with its password (in the netloc or the query) replaced by `***`."""
    try:
        parts = urlsplit(url)
    except ValueError:  # unparseable: say nothing of it but the scheme
        return url.split(":", 1)[0] + "://***"
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    query = urlencode([(k, "***" if k == "password" else v)
                       for k, v in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{hosts}", query=query))


def rows_touched(status: str) -> int:
    """Rows touched, from a command status such as `UPDATE 3`."""
    return int(status.rsplit(" ", 1)[-1])


_TABLES = ("the relay's user needs to read and write its tables (GRANT SELECT, INSERT, UPDATE,"
           " DELETE ON ALL TABLES IN SCHEMA name TO user; GRANT USAGE ON ALL SEQUENCES IN SCHEMA"
           " name TO user)")
# What to do about an error of the database: (asyncpg's class, a part of its text, advice).
_ADVICE: tuple[tuple[type[Exception], str, str], ...] = (
    (asyncpg.InsufficientPrivilegeError, " for schema ",
     "the relay creates its tables itself, so its user needs CREATE on that schema (GRANT"
     " CREATE ON SCHEMA name TO user; PostgreSQL 15 no longer grants it on public), or run"
     " migrate once as the schema's owner"),
    # Tables another user made (migrate run as the owner): CREATE would not help.
    (asyncpg.InsufficientPrivilegeError, " for table ", _TABLES),
    (asyncpg.InsufficientPrivilegeError, " for sequence ", _TABLES),
    (asyncpg.InsufficientPrivilegeError, "must be owner of",
     "a schema upgrade alters the relay's tables, which only their owner may do: run migrate"
     " once as that user"),
)


def describe(error: BaseException) -> str:
    """An error of the database in words an operator can act on (asyncpg's own otherwise)."""
    if isinstance(error, asyncpg.InvalidSchemaNameError):  # "no schema has been selected …"
        # PostgreSQL leaves a schema the user has no USAGE on out of its search_path too.
        return ("no schema to create the relay's tables in: the schemas of the search_path"
                " do not exist in this database, or its user may not use them: create one"
                " (CREATE SCHEMA name), or name one that exists in the URL's"
                " options=-csearch_path%3Dname, and give the user USAGE and CREATE on it"
                " (GRANT USAGE, CREATE ON SCHEMA name TO user)")
    for kind, part, advice in _ADVICE:
        if isinstance(error, kind) and part in str(error):
            return f"{error}: {advice}"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


async def listen_forever(url: str, notified: Callable[..., None],
                     connected: Callable[[], None]) -> None:
    """Keep one LISTEN connection up, reconnecting with backoff when it drops."""
    backoff = 0.5
    while True:
        try:
            conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT,
                                         command_timeout=COMMAND_TIMEOUT)
        except CONNECT_ERRORS as e:
            log.warning("LISTEN connection failed, retrying in %.1fs: %s", backoff,
                        describe(e))
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
            continue
        backoff = 0.5
        try:
            await _listen(conn, notified, connected)
            log.warning("LISTEN connection lost; reconnecting")
        except ERRORS as e:
            log.warning("LISTEN connection lost: %s", describe(e))
        finally:
            conn.terminate()
        await asyncio.sleep(backoff)

async def _listen(conn: Any, notified: Callable[..., None], connected: Callable[[], None],
              ) -> None:
    lost = asyncio.Event()
    conn.add_termination_listener(lambda _conn: lost.set())
    await conn.add_listener(CHANNEL, notified)
    connected()  # jobs may have arrived while nobody was listening
    while not lost.is_set():
        try:
            await asyncio.wait_for(lost.wait(), KEEPALIVE)
        except TimeoutError:
            await conn.execute("SELECT 1", timeout=KEEPALIVE)


async def announce(conn: Any, owner: str, places: Collection[Place], now: float,
                   ) -> set[Place]:
    """Store.announce's transaction (see relay.store.relays)."""
    await conn.execute(q(sql.ANNOUNCE), owner, places_text(places), now)
    await conn.execute(q(sql.FORGET_RELAYS), now - ANNOUNCED_FOR)
    host = socket.gethostname()
    live = live_places(places, [tuple(r) for r in await conn.fetch(sql.LIVE_RELAYS)], owner,
                       lambda o: relay_gone(o, host, one_process=False))
    rows = [(r[0], r[1]) for r in await conn.fetch(sql.CIRCUIT_ROWS)]
    await conn.executemany(q(sql.FORGET_CIRCUIT), [(*p, *p) for p in rows if p not in live])
    return live


async def lock_receiver(conn: Any, url: tuple[str, int], circuit: Circuit | None,
                        ) -> rules.ReceiverRow:
    """The receiver URL's row (name, url_index), locked until the transaction ends (created
    on first use): claims of one URL queue here, claims of its receiver's other URLs do not."""
    row = await conn.fetchrow(q(sql.RECEIVER) + " FOR UPDATE", *url)
    while row is None:  # a row another claim inserted first may be forgotten (`announce`)
        # before we read it: then our INSERT is the one, and a row we inserted stays ours
        await conn.execute(q(sql.INSERT_RECEIVER), *url, circuit.cooldown if circuit else 0.0)
        row = await conn.fetchrow(q(sql.RECEIVER) + " FOR UPDATE", *url)
    return from_row(rules.ReceiverRow, row)


async def take(conn: Any, url: tuple[str, int], limit: int, now: float, lease: float, owner: str,
                ) -> list[Job]:
    """Claim up to `limit` due jobs of one receiver URL: expired leases first, then pending
    by due time."""
    ids = [r[0] for r in await conn.fetch(
        "SELECT id FROM jobs WHERE receiver = $1 AND url_index = $2 AND state = 'claimed'"
        " AND lease_until < $3 ORDER BY lease_until LIMIT $4 FOR UPDATE SKIP LOCKED",
        *url, now, limit)]
    if len(ids) < limit:
        ids += [r[0] for r in await conn.fetch(
            "SELECT id FROM jobs WHERE receiver = $1 AND url_index = $2 AND state = 'pending'"
            " AND next_attempt_at <= $3 ORDER BY next_attempt_at, id LIMIT $4"
            " FOR UPDATE SKIP LOCKED", *url, now, limit - len(ids))]
    if not ids:
        return []
    rows = await conn.fetch(
        f"UPDATE jobs SET state = 'claimed', claim_token = $1, claimed_by = $2,"
        f" lease_until = $3 WHERE id = ANY($4::bigint[]) RETURNING {JOB_COLUMNS}",
        uuid.uuid4().hex, owner, now + lease, ids)
    return sorted((job_from_row(r) for r in rows), key=lambda j: j.id)

