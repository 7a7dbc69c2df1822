"""Rows to records and back: the columns a Job and a Timer are read from, once for both stores."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

from relay.message import Message
from relay.store.records import Job, Timer

R = TypeVar("R")


# The jobs columns a Job is read from, in its fields' order; its `message` is four of them.
MESSAGE_FIELDS = ("title", "body", "type", "format")
JOB_FIELDS = ("id", "event_id", "receiver", "url_index", "route", *MESSAGE_FIELDS, "state",
              "attempts", "created_at", "next_attempt_at", "last_error", "claim_token",
              "delivery_id", "event_type", "live", "event_at", "finished_at")
JOB_COLUMNS = ", ".join(JOB_FIELDS)
_OTHER_FIELDS = tuple(name for name in JOB_FIELDS if name not in MESSAGE_FIELDS)
_OPTIONAL_TEXT = ("last_error", "claim_token")


def job_from_row(row: Mapping[str, Any]) -> Job:
    """A Job from a row selected with JOB_COLUMNS (sqlite3.Row and asyncpg.Record both fit)."""
    values = {name: row[name] for name in _OTHER_FIELDS}
    for name in _OPTIONAL_TEXT:
        values[name] = values[name] or ""
    values["live"] = bool(values["live"])  # SQLite keeps booleans as 0/1
    return Job(message=Message(row["title"], row["body"], row["type"], row["format"]), **values)


def job_columns(job: Job) -> dict[str, Any]:
    """A Job as its row: JOB_FIELDS to values, in that order (what the admin API shows)."""
    return {name: getattr(job.message if name in MESSAGE_FIELDS else job, name)
            for name in JOB_FIELDS}


TIMER_FIELDS = tuple(f.name for f in fields(Timer))
TIMER_COLUMNS = ", ".join(TIMER_FIELDS)


def timer_from_row(row: Mapping[str, Any]) -> Timer:
    """A Timer from a row selected with TIMER_COLUMNS (its context is JSON text)."""
    values = {name: row[name] for name in TIMER_FIELDS}
    values["context"] = json.loads(values["context"] or "{}")
    values["claim_token"] = values["claim_token"] or ""
    return Timer(**values)


def from_row(cls: type[R], row: Mapping[str, Any]) -> R:
    """A record from a row whose columns are named like the record's fields."""
    return cls(**{name: row[name] for name in _names(cls)})  # type: ignore[arg-type]


@functools.cache
def _names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))  # once per record type, not per row
