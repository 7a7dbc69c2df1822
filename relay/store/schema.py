"""The schema, described once and rendered for SQLite and PostgreSQL, with its migration steps.

Step N of `migrations(dialect)` takes a database from version N-1 to N. Step 1
is the schema every relay before numbered SQLite migrations created, so an
existing database (SQLite `user_version` 1, PostgreSQL `schema_version` 1)
only runs the steps after it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from relay.errors import SchemaTooNew, StoreError
from relay.store.records import JOB_STATES, TIMER_KINDS, TIMER_STATES

Dialect = Literal["sqlite", "postgres"]
SCHEMA_VERSION = 11
log = logging.getLogger(__name__)


def log_migrated(before: int) -> None:
    """One line for what a store's start-up did to its schema (`before`: the version it
    found, 0 for none): created it, upgraded it, or nothing (nothing logged)."""
    if before == 0:
        log.info("store schema created (version %d)", SCHEMA_VERSION)
    elif before < SCHEMA_VERSION:
        log.info("store schema upgraded from version %d to %d", before, SCHEMA_VERSION)


def check_version(version: int, where: str, *, create: bool) -> None:
    """Refuse a store whose schema (`version`, 0: none) this relay must not use as it is:
    a newer one; and, for a reader (`create` False), none or an older one. A reading
    command never creates or upgrades a schema: an older relay may still be running on it."""
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(f"{where} has schema version {version}; this relay knows up to"
                           f" {SCHEMA_VERSION}: upgrade the relay")
    if create or version == SCHEMA_VERSION:
        return
    if version == 0:
        raise StoreError(f"no relay schema in {where} (check store.url, or run migrate or"
                         " serve once)")
    raise StoreError(f"{where} has schema version {version}, this relay's is {SCHEMA_VERSION}:"
                     " a reading command does not upgrade it; run migrate (or serve) first")

# Column types: key (integer id), ref:<table> (its id, cascading deletes), text, int,
# real, bool. `pk` makes a non-key column the primary key.
TYPES: dict[Dialect, dict[str, str]] = {
    "sqlite": {"key": "INTEGER PRIMARY KEY", "ref": "INTEGER", "text": "TEXT",
               "int": "INTEGER", "real": "REAL", "bool": "INTEGER"},
    "postgres": {"key": "bigserial PRIMARY KEY", "ref": "bigint", "text": "text",
                 "int": "integer", "real": "double precision", "bool": "boolean"},
}
FALSE: dict[Dialect, str] = {"sqlite": "0", "postgres": "false"}


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    null: bool = False
    default: str | None = None  # an SQL literal; "false" is rendered per dialect
    extra: str = ""  # UNIQUE, PRIMARY KEY, CHECK (...)


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...] = ()  # a primary key of several columns


@dataclass(frozen=True)
class Index:
    name: str
    table: str
    columns: str
    where: str = ""
    unique: bool = False


def _c(name: str, type: str = "text", **kw: Any) -> Column:
    return Column(name, type, **kw)


def _state_check(states: tuple[str, ...]) -> str:
    return "CHECK (state IN (" + ", ".join(f"'{s}'" for s in states) + "))"


# Step 1 as it was: later steps widen the check (a migration must not change under a file).
STATES_1 = ("pending", "claimed", "sent", "dead", "suppressed")
STATE_CHECK = _state_check(STATES_1)


def _jobs(check: str, name: str = "jobs") -> Table:
    return Table(name, (
        _c("id", "key"), _c("event_id", "ref:events"), _c("receiver"), _c("url_index", "int"),
        _c("route"), _c("title"), _c("body"), _c("type"), _c("format"), _c("delivery_id"),
        _c("event_type"), _c("suppress_stale", "bool", default="false"),
        _c("state", default="'pending'", extra=check),
        _c("attempts", "int", default="0"), _c("created_at", "real"),
        _c("next_attempt_at", "real"), _c("lease_until", "real", null=True),
        _c("claim_token", null=True), _c("claimed_by", null=True),
        _c("last_error", default="''"), _c("finished_at", "real", null=True)))


TABLES_1 = (
    Table("events", (_c("id", "key"), _c("dedup_key", extra="UNIQUE"), _c("type"),
                     _c("delivery_id"), _c("received_at", "real"), _c("payload"))),
    _jobs(STATE_CHECK),
    Table("attempts", (_c("id", "key"), _c("job_id", "ref:jobs"), _c("at", "real"),
                       _c("outcome"), _c("error"), _c("duration", "real"))),
    Table("receivers", (_c("name", extra="PRIMARY KEY"), _c("tokens", "real", null=True),
                        _c("tokens_at", "real", null=True),
                        _c("failures", "int", default="0"),
                        _c("open_until", "real", default="0"),
                        _c("cooldown", "real", default="0"))),
    Table("deliveries", (_c("delivery_id", extra="PRIMARY KEY"), _c("newest", "real"),
                         _c("cancelled", "bool", default="false"))),
)
# An event's jobs and a job's attempts, alike on both dialects. The claim walks the
# others. SQLite: one index over (state, receiver, due); PostgreSQL: partial indexes
# per state, which its planner uses with SKIP LOCKED.
_BY_PARENT_1 = (Index("jobs_event", "jobs", "event_id"), Index("attempts_job", "attempts", "job_id"))
INDEXES_1: dict[Dialect, tuple[Index, ...]] = {
    "sqlite": (Index("jobs_due", "jobs", "state, receiver, next_attempt_at"),
               Index("jobs_delivery", "jobs", "delivery_id, state"),
               *_BY_PARENT_1),
    "postgres": (Index("events_received", "events", "received_at"),
                 Index("jobs_pending", "jobs", "receiver, next_attempt_at, id", "state = 'pending'"),
                 Index("jobs_claimed", "jobs", "receiver, lease_until", "state = 'claimed'"),
                 Index("jobs_dead", "jobs", "receiver, id", "state = 'dead'"),
                 Index("jobs_delivery", "jobs", "delivery_id", "state = 'pending'"),
                 *_BY_PARENT_1),
}
# Step 2: one row that `ping()` rewrites, so readiness proves a commit, not a read.
TABLES_2 = (Table("health", (_c("id", "int", extra="PRIMARY KEY"), _c("at", "real"))),)
# Step 3: live messages. One row per (delivery, route, receiver URL): the message ref, the
# event time the message shows, and who is sending to it now (a lease, so that the edits
# of one message never overlap, across processes and replicas).
TABLES_3 = (Table("live_messages", (
    _c("live_key", extra="PRIMARY KEY"), _c("delivery_id"), _c("ref", null=True),
    _c("shown", "real", null=True), _c("holder", null=True), _c("held_until", "real", null=True),
    _c("updated_at", "real"))),)
INDEXES_3 = (Index("live_messages_delivery", "live_messages", "delivery_id"),)
# Step 5: what the status page reads (relay/ui), so none of its queries scans a table.
# A delivery's events (its timeline, the recent list); the traffic chart's last hour;
# a receiver's last success and last failure. The partial indexes take only the rows
# they serve (sent jobs, failed attempts); each costs one index entry per write.
_READ_SIDE_5 = (Index("events_delivery", "events", "delivery_id"),
                Index("attempts_at", "attempts", "at"),
                Index("jobs_sent", "jobs", "receiver, finished_at", "state = 'sent'"),
                Index("attempts_failed", "attempts", "id", "outcome <> 'sent'"))
INDEXES_5: dict[Dialect, tuple[Index, ...]] = {
    "sqlite": (*_READ_SIDE_5, Index("events_received", "events", "received_at")),
    # SQLite's jobs_delivery covers every job; PostgreSQL's is partial (pending only).
    "postgres": (*_READ_SIDE_5, Index("jobs_delivery_all", "jobs", "delivery_id")),
}


# Step 4: timed work (watches, digests, quiet hours; see rules.TIMER_FROM) and, per
# delivery, its newest event (what a fired watch renders as `last`).
TIMER_STATE_CHECK = "CHECK (state IN (" + ", ".join(f"'{s}'" for s in TIMER_STATES) + "))"
TIMER_KIND_CHECK = "CHECK (kind IN (" + ", ".join(f"'{k}'" for k in TIMER_KINDS) + "))"
TABLES_4 = (
    Table("timers", (
        _c("id", "key"), _c("kind", extra=TIMER_KIND_CHECK), _c("key"), _c("delivery_id"),
        _c("event_id", "ref"), _c("due_at", "real"),
        _c("state", default="'armed'", extra=TIMER_STATE_CHECK),
        _c("lease_until", "real", null=True), _c("claim_token", null=True),
        _c("claimed_by", null=True), _c("armed_at", "real"), _c("ended_at", "real", null=True),
        _c("context", default="'{}'"))),
)
# A timer by its key and a delivery's timers, alike on both dialects. Claims walk the due
# index; a million armed timers cost ingest one index entry each and nothing else.
# `timers_event` keeps purge from scanning for live arming events.
_LOOKUPS_4 = (Index("timers_key", "timers", "kind, key", unique=True),
              Index("timers_delivery", "timers", "delivery_id"))
INDEXES_4: dict[Dialect, tuple[Index, ...]] = {
    "sqlite": (*_LOOKUPS_4, Index("timers_due", "timers", "state, due_at"),
               Index("timers_event", "timers", "event_id")),
    "postgres": (*_LOOKUPS_4, Index("timers_due", "timers", "due_at, id", "state = 'armed'"),
                 Index("timers_claimed", "timers", "lease_until", "state = 'claimed'"),
                 Index("timers_ended", "timers", "ended_at", "state IN ('fired', 'disarmed')"),
                 Index("timers_event", "timers", "event_id", "state IN ('armed', 'claimed')")),
}
# Step 6: what a job of a live route needs (whether it is live; the event's own time, which
# orders a live message's states and a hold's replacements), and purging quiet live messages.
COLUMNS_6 = (("jobs", _c("live", "bool", default="false")),
             ("jobs", _c("event_at", "real", null=True)))
INDEXES_6 = (Index("live_messages_updated", "live_messages", "updated_at"),)


# Step 7: digests and quiet hours. A digest window's events (`fired_at` NULL while they
# wait; `delivery_id` for the delivery's timeline), and two job states: `held` (quiet
# hours) and `summarised` (went out in the summary). SQLite cannot alter a CHECK: the
# jobs table is rebuilt (with foreign keys off, see `REBUILDS`); PostgreSQL swaps it.
TABLES_7 = (Table("digest_items", (
    _c("id", "key"), _c("timer_id", "ref:timers"), _c("event_id", "ref:events"),
    _c("delivery_id"), _c("added_at", "real"), _c("fired_at", "real", null=True))),)
_DIGEST_ITEMS_7 = (Index("digest_items_event", "digest_items", "event_id"),
                   Index("digest_items_delivery", "digest_items", "delivery_id"))
INDEXES_7: dict[Dialect, tuple[Index, ...]] = {
    "sqlite": (Index("digest_items_timer", "digest_items", "timer_id, fired_at, id"),
               *_DIGEST_ITEMS_7,
               Index("jobs_held", "jobs", "state, receiver, url_index, next_attempt_at")),
    "postgres": (Index("digest_items_waiting", "digest_items", "timer_id, id",
                       "fired_at IS NULL"),
                 *_DIGEST_ITEMS_7,
                 Index("jobs_held", "jobs", "receiver, url_index, next_attempt_at, id",
                       "state = 'held'")),
}
STATE_CHECK_7 = _state_check(JOB_STATES)
# Step 8: fewer index entries per event (issue 14, bench/README.md "Timers"). A delivery's
# watch timers are found through its events (`timers_event`, which grows in arrival order)
# instead of `timers_delivery`, which took one entry at a random place per armed timer:
# at a million armed timers that index outgrew SQLite's page cache and slowed ingest. On
# SQLite `jobs_held` becomes partial like PostgreSQL's: it took an entry for every job,
# for the few that wait out quiet hours; SQLite's `jobs_delivery` loses its `state`
# column, so a claim and a completion no longer move the job's entry in it (a
# delivery has a handful of jobs: the state is read from the rows); PostgreSQL's
# `timers_event` now covers ended timers too (the timeline shows them).
DROPS_8: dict[Dialect, tuple[str, ...]] = {
    "sqlite": ("timers_delivery", "jobs_held", "jobs_delivery"),
    "postgres": ("timers_delivery", "timers_event")}
INDEXES_8: dict[Dialect, tuple[Index, ...]] = {
    "sqlite": (Index("jobs_held", "jobs", "receiver, url_index, next_attempt_at, id",
                     "state = 'held'"),
               Index("jobs_delivery", "jobs", "delivery_id")),
    "postgres": (Index("timers_event", "timers", "event_id"),)}
# Step 9: a delivery's newest events (its status page, `sql.TIMELINE_SHOWN`: `WHERE
# delivery_id = ? ORDER BY id DESC LIMIT n`) walked in order: PostgreSQL's
# `events_delivery` on delivery_id alone made it fetch and sort all of the delivery's
# events. (delivery_id, id) replaces it under the same name. SQLite has nothing to do:
# its index ends with the rowid, which is `id`, so it already walks them in order.
INDEXES_9: dict[Dialect, tuple[Index, ...]] = {
    "sqlite": (),
    "postgres": (Index("events_delivery", "events", "delivery_id, id"),)}


# Step 10: a receiver URL (receiver name, url_index) is the unit of sending isolation: its
# own circuit and token bucket. `receivers` is keyed by both; a row an older relay kept
# becomes URL 0's. The claim's indexes name the URL too, so a healthy URL's claim never
# walks the due jobs of its receiver's failing one (and the status page's last success per
# URL reads one index entry). SQLite cannot change a primary key: it rebuilds the table
# (no foreign keys point at it); PostgreSQL alters it.
URL_INDEX_10 = _c("url_index", "int", default="0")
RECEIVERS_10 = Table("receivers", (
    _c("name"), URL_INDEX_10, _c("tokens", "real", null=True), _c("tokens_at", "real", null=True),
    _c("failures", "int", default="0"), _c("open_until", "real", default="0"),
    _c("cooldown", "real", default="0")), key=("name", "url_index"))
DROPS_10: dict[Dialect, tuple[str, ...]] = {
    "sqlite": ("jobs_due", "jobs_sent"), "postgres": ("jobs_pending", "jobs_claimed", "jobs_sent")}
INDEXES_10: dict[Dialect, tuple[Index, ...]] = {
    "sqlite": (Index("jobs_due", "jobs", "state, receiver, url_index, next_attempt_at"),
               Index("jobs_sent", "jobs", "receiver, url_index, finished_at", "state = 'sent'")),
    "postgres": (Index("jobs_pending", "jobs", "receiver, url_index, next_attempt_at, id",
                       "state = 'pending'"),
                 Index("jobs_claimed", "jobs", "receiver, url_index, lease_until",
                       "state = 'claimed'"),
                 Index("jobs_sent", "jobs", "receiver, url_index, finished_at",
                       "state = 'sent'"))}

# Step 11: the relays serving from this store, each with the receiver URLs its config sends
# for (`places`: a JSON list of [name, url_index]) and when it last said so. The orphan pass
# buries a job only when no live relay's config has its URL: during a rolling config change
# another replica may still send for a receiver this one's config dropped, or already for
# one it does not have yet. A table only: relays of schema 10 run on beside it.
TABLES_11 = (Table("relays", (_c("owner", extra="PRIMARY KEY"), _c("places"),
                              _c("seen_at", "real"))),)

# Steps that SQLite runs with foreign keys off (a table rebuild; see sqlite.org/lang_altertable).
REBUILDS = frozenset({7, 10})


def _jobs_7(name: str = "jobs") -> Table:
    """The jobs table as steps 1-6 left it (step 6 added its columns last), with the wider check."""
    base = _jobs(STATE_CHECK_7, name)
    added = tuple(column for table, column in COLUMNS_6 if table == "jobs")
    return Table(name, base.columns + added)


def _rebuild_jobs_sqlite() -> str:
    columns = ", ".join(c.name for c in _jobs_7().columns)
    return (render((_jobs_7("jobs_new"),), (), "sqlite")
            + f"INSERT INTO jobs_new ({columns}) SELECT {columns} FROM jobs;\n"
            + "DROP TABLE jobs;\nALTER TABLE jobs_new RENAME TO jobs;\n"
            + render((), _jobs_indexes(), "sqlite"))


def _jobs_indexes() -> tuple[Index, ...]:
    """Every index steps 1-6 made on jobs: the rebuild drops them with the old table.

    Taken from every earlier step's list, so an index a later step adds on jobs cannot be
    forgotten here (tests/test_schema_steps.py compares a migrated file with a fresh one)."""
    earlier = (*INDEXES_1["sqlite"], *INDEXES_3, *INDEXES_4["sqlite"], *INDEXES_5["sqlite"],
               *INDEXES_6)
    return tuple(i for i in earlier if i.table == "jobs")


def _step_7(dialect: Dialect) -> str:
    if dialect == "sqlite":
        jobs = _rebuild_jobs_sqlite()
    else:
        jobs = ("ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_state_check;\n"
                f"ALTER TABLE jobs ADD CONSTRAINT jobs_state_check {STATE_CHECK_7};\n")
    return jobs + render(TABLES_7, INDEXES_7[dialect], dialect)


def _step_10(dialect: Dialect) -> str:
    if dialect == "sqlite":
        old = ", ".join(c.name for c in RECEIVERS_10.columns if c is not URL_INDEX_10)
        new = Table("receivers_new", RECEIVERS_10.columns, RECEIVERS_10.key)
        receivers = (render((new,), (), "sqlite")
                     + f"INSERT INTO receivers_new (url_index, {old}) SELECT 0, {old}"
                     " FROM receivers;\nDROP TABLE receivers;\n"
                     "ALTER TABLE receivers_new RENAME TO receivers;\n")
    else:
        receivers = (add_columns((("receivers", URL_INDEX_10),), dialect)
                     + "ALTER TABLE receivers DROP CONSTRAINT receivers_pkey;\n"
                     "ALTER TABLE receivers ADD PRIMARY KEY (name, url_index);\n")
    return receivers + _drop(DROPS_10[dialect]) + render((), INDEXES_10[dialect], dialect)


def render_column(column: Column, dialect: Dialect) -> str:
    kind, _, target = column.type.partition(":")
    parts = [column.name, TYPES[dialect][kind]]
    if kind != "key" and not column.null and "PRIMARY KEY" not in column.extra:
        parts.append("NOT NULL")
    if target:
        parts.append(f"REFERENCES {target} (id) ON DELETE CASCADE")
    if column.default is not None:
        default = FALSE[dialect] if column.default == "false" else column.default
        parts.append(f"DEFAULT {default}")
    if column.extra:
        parts.append(column.extra)
    return " ".join(parts)


def render(tables: tuple[Table, ...], indexes: tuple[Index, ...], dialect: Dialect) -> str:
    """CREATE statements for the tables and indexes, `;`-separated."""
    out = [f"CREATE TABLE IF NOT EXISTS {t.name} (\n    "
           + ",\n    ".join([*(render_column(c, dialect) for c in t.columns),
                              *([f"PRIMARY KEY ({', '.join(t.key)})"] if t.key else [])])
           + "\n)" for t in tables]
    out += [f"CREATE {'UNIQUE ' if i.unique else ''}INDEX IF NOT EXISTS {i.name}"
            f" ON {i.table} ({i.columns})"
            + (f" WHERE {i.where}" if i.where else "") for i in indexes]
    return ";\n".join(out) + ";\n" if out else ""


def add_columns(columns: tuple[tuple[str, Column], ...], dialect: Dialect) -> str:
    """ALTER TABLE statements adding each (table, column), `;`-separated."""
    return "".join(f"ALTER TABLE {table} ADD COLUMN {render_column(column, dialect)};\n"
                   for table, column in columns)


def migrations(dialect: Dialect) -> dict[int, str]:
    """The SQL of each migration step for this dialect."""
    last_event = f"ALTER TABLE deliveries ADD COLUMN last_event_id {TYPES[dialect]['ref']};\n"
    return {1: render(TABLES_1, INDEXES_1[dialect], dialect),
            2: render(TABLES_2, (), dialect),
            3: render(TABLES_3, INDEXES_3, dialect),
            4: render(TABLES_4, INDEXES_4[dialect], dialect) + last_event,
            5: render((), INDEXES_5[dialect], dialect),
            6: add_columns(COLUMNS_6, dialect) + render((), INDEXES_6, dialect),
            7: _step_7(dialect),
            8: _drop(DROPS_8[dialect]) + render((), INDEXES_8[dialect], dialect),
            9: _drop(tuple(i.name for i in INDEXES_9[dialect]))
            + render((), INDEXES_9[dialect], dialect),
            10: _step_10(dialect),
            11: render(TABLES_11, (), dialect)}


def _drop(names: tuple[str, ...]) -> str:
    return "".join(f"DROP INDEX IF EXISTS {name};\n" for name in names)
