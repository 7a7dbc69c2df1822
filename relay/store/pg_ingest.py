"""PostgreSQL ingest primitives, each a step of the accept transaction: the event row, the
delivery's ordering state (under its row lock), a held notification's replacements."""

from __future__ import annotations

from typing import Any

from relay.errors import StoreError
from relay.events import Event
from relay.store import rules, sql
from relay.store.pg_support import rows_touched
from relay.store.records import Notification
from relay.store.rows import from_row
from relay.store.sql import numbered as q


async def insert_event(conn: Any, event: Event, key: str, now: float) -> int:
    """The new event's id, or minus the id of the event that already has this key."""
    for _ in range(3):  # the holder of the key may be purged between the two statements
        new = await conn.fetchval(q(sql.INSERT_EVENT_RETURNING_ID),
                                  *sql.event_args(event, key, now))
        if new is not None:
            return int(new)
        old = await conn.fetchval(q(sql.EVENT_BY_KEY), key)
        if old is not None:
            return -int(old)
    raise StoreError(f"dedup key {key!r} keeps changing hands; retry later")


async def track_delivery(conn: Any, event: Event, event_id: int, ts: float) -> tuple[str, int]:
    """Record the delivery's ordering state; say why an update is stale, if it is."""
    if not event.delivery_id:  # a relay-internal event (a notice): about no delivery
        return "", 0
    # A placeholder row first, so that concurrent events of one delivery queue on its lock.
    await conn.execute("INSERT INTO deliveries (delivery_id, newest) VALUES ($1, '-Infinity')"
                       " ON CONFLICT (delivery_id) DO NOTHING", event.delivery_id)
    row = await conn.fetchrow(q(sql.DELIVERY) + " FOR UPDATE", event.delivery_id)
    newest, cancelled = row["newest"], row["cancelled"]
    await conn.execute(q(sql.UPSERT_DELIVERY), event.delivery_id,
                       *rules.delivery_after(event.type, ts, newest, cancelled),
                       rules.last_event_after(ts, newest, event_id, row["last_event_id"]))
    suppressed = 0
    if rules.cancels(event.type):
        suppressed = rows_touched(await conn.execute(q(sql.SUPPRESS_UPDATES), event.delivery_id))
    return rules.stale_reason(event.type, ts, newest, cancelled), suppressed


async def hold(conn: Any, event_id: int, event: Event, spec: Notification, ts: float, now: float,
               ) -> tuple[sql.Queued, int]:
    """The job a notification becomes, and how many waiting jobs it replaced. The waiting
    rows are locked (a claim skips them) under the delivery's lock `track_delivery` took."""
    key = sql.waiting_key(event, spec)
    waiting = [] if key is None else [
        from_row(rules.Waiting, r) for r in await conn.fetch(q(sql.WAITING) + " FOR UPDATE",
                                                             *key)]
    coalesced = rules.coalesce(ts, now, spec.hold, waiting)
    replaced = 0
    for args in sql.replace_args(coalesced.replaces, event_id, now):
        replaced += rows_touched(await conn.execute(q(sql.REPLACE), *args))
    return sql.queued(spec, coalesced), replaced
