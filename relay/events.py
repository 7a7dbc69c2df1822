"""Kourier events: parsing, validation, dotted-path lookup and the dedup key."""

from __future__ import annotations

import hashlib
import json
import math
import re
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
# Kourier's payloads are a few levels deep; json.loads itself recurses until RecursionError.
MAX_DEPTH = 64
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# Escapes that decode to what no store can keep: a lone surrogate (not UTF-8) or NUL
# (PostgreSQL text and jsonb refuse it). Only bodies with such an escape get the full check.
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


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
    data = decode_json(body)
    if not isinstance(data, dict):
        raise InvalidEvent("Invalid request data", "Body must be a JSON object")
    return event_from_dict(data)


def decode_json(body: bytes) -> Any:
    """`json.loads` that refuses (InvalidEvent, 400) where it would crash or let through
    what cannot be stored: deep nesting, huge numbers, NaN/Infinity, lone surrogates, NUL."""
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH and _depth(body) > MAX_DEPTH:
        raise InvalidEvent("Invalid JSON", f"nested deeper than {MAX_DEPTH} levels")
    try:
        # Decode first: json.loads(bytes) would also take UTF-16/32 and raw surrogates.
        data = _DECODER.decode(body.decode("utf-8-sig"))
    except RecursionError:
        raise InvalidEvent("Invalid JSON", f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, int digit limit, ours
        raise InvalidEvent("Invalid JSON", _reason(e)) from None
    if _SUSPECT_ESCAPE.search(body) and _has_unstorable(data):
        raise InvalidEvent("Invalid JSON", "strings must not hold NUL or unpaired surrogates")
    return data


def _depth(body: bytes) -> int:
    """Deepest nesting of arrays and objects, brackets inside strings not counted."""
    depth = deepest = 0
    for byte in _STRING.sub(b"", body).translate(None, _NOT_BRACKETS):
        depth += 1 if byte in b"[{" else -1
        if depth > deepest:
            deepest = depth
            if deepest > MAX_DEPTH:
                break
    return deepest


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as inf, which no JSON can carry back out
        raise ValueError("a number is out of range")
    return value


# One decoder for every request: json.loads with hooks would build a new one (and its
# scanner) per call.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def _reason(e: ValueError) -> str:
    if isinstance(e, (json.JSONDecodeError, UnicodeDecodeError)):
        return str(e)
    if "digits" in str(e):
        return "a number has too many digits"
    return str(e)


def unstorable(text: str) -> bool:
    """`text` holds what no store can keep: NUL or an unpaired surrogate."""
    return _UNSTORABLE.search(text) is not None


def _has_unstorable(value: Any) -> bool:
    if isinstance(value, str):  # unstorable(), inline: this runs for every string of an event
        return _UNSTORABLE.search(value) is not None
    if isinstance(value, dict):
        return any(_has_unstorable(k) or _has_unstorable(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_unstorable(v) for v in value)
    return False


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
        parse_timestamp(value).astimezone(UTC)  # out-of-range years fail here, not in a store
    except (ValueError, OverflowError):
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


# json.dumps with options would build this encoder again for every event.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def dedup_key(event: Event, fields: Iterable[str] | None = None) -> str:
    """Hash of the canonical event (or of the chosen fields): a Kourier retry maps to the same key."""
    subject: Any = event.payload
    if fields:
        subject = {f: lookup(event.payload, f) for f in fields}
    canonical = _CANONICAL.encode(subject)
    return hashlib.sha256(canonical.encode()).hexdigest()
