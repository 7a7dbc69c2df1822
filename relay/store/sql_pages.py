"""The status page's reads that only it makes (relay/ui): recent deliveries and traffic per minute.

Written once with `?` placeholders like `sql`; PostgreSQL numbers them (`sql.numbered`).
Each walks an index: events_delivery, jobs_delivery (jobs_delivery_all in PostgreSQL),
digest_items_delivery, events_received, attempts_at.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Literal, assert_never

from relay.store.records import JOB_STATES, DeliverySummary, JobState, Minute

# How the deliveries list counts a job, by state. A state the match does not name fails
# mypy, so no job state can be left out of the list (it once showed "none" for jobs
# that went out in a summary).
Count = Literal["sent", "waiting", "summarised", "suppressed", "dead"]


def counted_as(state: JobState) -> Count:
    match state:
        case "pending" | "claimed" | "held":  # held: waits for quiet hours' summary
            return "waiting"
        case "sent" | "summarised" | "suppressed" | "dead":
            return state
        case _:
            assert_never(state)


def _count_jobs(count: Count) -> str:
    states = ", ".join(f"'{s}'" for s in JOB_STATES if counted_as(s) == count)
    return (f"(SELECT count(*) FROM jobs j WHERE j.delivery_id = d.delivery_id"
            f" AND j.state IN ({states})) AS {count}")


# A delivery's events in digest windows: still collecting (fired_at NULL) or sent in one.
_COUNT_ITEMS = ("(SELECT count(*) FROM digest_items i WHERE i.delivery_id = d.delivery_id"
                " AND i.fired_at IS {}) AS {}")
RECENT_WINDOW = 20  # events looked at per delivery asked for
# The newest deliveries among the newest `?` events (a walk down the primary key).
RECENT_DELIVERIES = (
    "SELECT d.delivery_id, e.type AS last_type, e.received_at AS last_at, e.payload,"
    " (SELECT count(*) FROM events x WHERE x.delivery_id = d.delivery_id) AS events, "
    + ", ".join(_count_jobs(c) for c in dict.fromkeys(map(counted_as, JOB_STATES))) + ", "
    + _COUNT_ITEMS.format("NULL", "collecting") + ", "
    + _COUNT_ITEMS.format("NOT NULL", "digested") +
    " FROM (SELECT w.delivery_id, max(w.id) AS last FROM (SELECT id, delivery_id FROM events"
    " ORDER BY id DESC LIMIT ?) AS w GROUP BY w.delivery_id ORDER BY last DESC LIMIT ?) AS d"
    " JOIN events e ON e.id = d.last ORDER BY d.last DESC")
# `{minute}` is the dialect's whole minutes since the first parameter (see per_minute).
EVENTS_PER_MINUTE = ("SELECT {minute} AS minute, count(*) AS n FROM events"
                     " WHERE received_at >= ? GROUP BY 1")
ATTEMPTS_PER_MINUTE = ("SELECT {minute} AS minute, outcome, count(*) AS n FROM attempts"
                       " WHERE at >= ? GROUP BY 1, 2")
_MINUTE = {"sqlite": "CAST(({} - ?) / 60 AS INTEGER)",  # truncates: the values are >= 0
           "postgres": "floor(({} - ?) / 60)::bigint"}  # a cast would round


def per_minute(dialect: str) -> tuple[str, str]:
    """EVENTS_PER_MINUTE and ATTEMPTS_PER_MINUTE for a dialect; parameters: (since, since)."""
    return (EVENTS_PER_MINUTE.format(minute=_MINUTE[dialect].format("received_at")),
            ATTEMPTS_PER_MINUTE.format(minute=_MINUTE[dialect].format("at")))


def recent(rows: Iterable[Mapping[str, Any]]) -> list[DeliverySummary]:
    """DeliverySummary values from the rows of RECENT_DELIVERIES."""
    out = []
    for r in rows:
        status = json.loads(r["payload"]).get("status")
        out.append(DeliverySummary(
            r["delivery_id"], r["last_type"], status if isinstance(status, str) else None,
            r["last_at"], r["events"], r["sent"], r["waiting"], r["dead"],
            summarised=r["summarised"], suppressed=r["suppressed"],
            collecting=r["collecting"], digested=r["digested"]))
    return out


def minutes(since: float, count: int, events: Iterable[Mapping[str, Any]],
            attempts: Iterable[Mapping[str, Any]]) -> list[Minute]:
    """`count` minutes from `since`, oldest first, from the per-minute rows (gaps are zeros)."""
    table = {i: [0, 0, 0] for i in range(count)}
    for e in events:
        if int(e["minute"]) in table:
            table[int(e["minute"])][0] += e["n"]
    for a in attempts:
        if int(a["minute"]) in table:
            table[int(a["minute"])][1 if a["outcome"] == "sent" else 2] += a["n"]
    return [Minute(since + 60 * i, *table[i]) for i in range(count)]
