"""Kourier events: parsing, validation, dotted-path lookup and the dedup key."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from relay.errors import InvalidEvent

KNOWN_TYPES = frozenset({"delivery.created", "delivery.updated", "delivery.cancelled"})
# Field name -> the type Kourier documents for it.
REQUIRED = {"event": str, "delivery_id": str, "timestamp": str}
OPTIONAL = {"status": str}
# Every field Kourier documents; `check` warns about templates using others.
DOCUMENTED_FIELDS = frozenset(REQUIRED) | frozenset(OPTIONAL)
_MISSING = object()


@dataclass(frozen=True)
class Event:
    """One inbound Kourier webhook body, validated; `payload` keeps every field."""

    type: str
    delivery_id: str
    timestamp: str
    status: str | None
    payload: Mapping[str, Any] = field(repr=False)

    @property
    def known(self) -> bool:
        return self.type in KNOWN_TYPES

    def get(self, path: str, default: Any = None) -> Any:
        return lookup(self.payload, path, default)


def parse_event(body: bytes) -> Event:
    """Decode and validate a request body; raise InvalidEvent with the JSON error shape."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidEvent("Invalid JSON", str(e)) from None
    if not isinstance(data, dict):
        raise InvalidEvent("Invalid request data", "Body must be a JSON object")
    return event_from_dict(data)


def event_from_dict(data: Mapping[str, Any]) -> Event:
    """Validate an already-decoded payload."""
    for name, kind in REQUIRED.items():
        _check_field(data, name, kind, required=True)
    for name, kind in OPTIONAL.items():
        _check_field(data, name, kind, required=False)
    _check_timestamp(data["timestamp"])
    return Event(
        type=data["event"],
        delivery_id=data["delivery_id"],
        timestamp=data["timestamp"],
        status=data.get("status"),
        payload=dict(data),
    )


def _check_field(data: Mapping[str, Any], name: str, kind: type, required: bool) -> None:
    value = data.get(name, _MISSING)
    if value is _MISSING:
        if required:
            raise InvalidEvent("Invalid request data", f"Missing {name}")
        return
    if not isinstance(value, kind) or (isinstance(value, str) and not value.strip()):
        raise InvalidEvent("Invalid request data", f"{name} must be a non-empty string")


def _check_timestamp(value: str) -> None:
    try:
        parse_timestamp(value)
    except ValueError:
        raise InvalidEvent(
            "Invalid request data", "timestamp must be ISO 8601, e.g. 2024-09-14T14:30:00Z"
        ) from None


def parse_timestamp(value: str) -> datetime:
    """Parse Kourier's ISO 8601 timestamp; naive values are taken as UTC."""

    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def lookup(data: Any, path: str, default: Any = None) -> Any:
    """Follow a dotted path (`items.0.sku`) through dicts and lists."""
    current = data
    for part in path.split("."):
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return default
    return current


def dedup_key(event: Event, fields: Iterable[str] | None = None) -> str:
    """Hash of the canonical event (or of the chosen fields): a Kourier retry maps to the same key."""
    subject: Any = event.payload
    if fields:
        subject = {f: lookup(event.payload, f) for f in fields}
    canonical = json.dumps(subject, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
