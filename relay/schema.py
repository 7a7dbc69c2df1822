"""The config's schema: the keys of every section and the converter of each value.

`Checker` reads a section against `SCHEMAS`, collecting every issue instead of
stopping at the first; the builders in `relay.config` turn its output into
the frozen dataclasses. `shown()` is how any config value may appear in a
message (never a URL, credentials or a token).
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from relay.confighints import (
    KEY_ALIASES,
    KEY_HINTS,
    SECTION_HINTS,
    SHAPE_HINTS,
    mapping_hint,
    quotes_hint,
)
from relay.errors import Issue
from relay.limits import RateLimit
from relay.quiet import parse_days, parse_time
from relay.yamlfile import Source, as_scalar

NOTIFY_TYPES = ("info", "success", "warning", "failure")
BODY_FORMATS = ("text", "markdown", "html")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|m|min|h|d)?\s*$")
_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0,
          "d": 86400.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_RATE_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600,
               "hour": 3600}


Conv = Callable[[Any], Any]


class WrongKind(ValueError):
    """A value of another kind than the key takes (`Checker` may add a hint that needs the
    key and how the value was written)."""

    def __init__(self, message: str, wanted: type | tuple[type, ...], hint: str = "") -> None:
        super().__init__(message + hint)
        self.plain = message  # without the hint about quotes
        self.wanted = wanted
        self.hint = hint


def _expect(kind: type | tuple[type, ...], label: str) -> Conv:
    def conv(v: Any) -> Any:
        if isinstance(v, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise WrongKind(f"expected {label}, got {kind_of(v)}", kind)
        if not isinstance(v, kind):
            raise WrongKind(f"expected {label}, got {kind_of(v)}", kind, quotes_hint(kind, v))
        return v
    return conv


def kind_of(v: Any) -> str:
    return {dict: "a mapping", list: "a list", bool: "a boolean", str: "a string",
            type(None): "nothing"}.get(type(v), "a number")


def _int(lo: int, hi: int | None = None) -> Conv:
    def conv(v: Any) -> int:
        _expect(int, "an integer")(v)
        if v < lo or (hi is not None and v > hi):
            raise ValueError(f"must be between {lo} and {hi}" if hi else f"must be at least {lo}")
        return int(v)
    return conv


MAX_DURATION = 3650 * 86400.0  # ten years: past it, times no longer fit a date


def duration(v: Any) -> float:
    """Seconds from a number or `500ms`, `5s`, `2m`, `1h`, `7d`."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        seconds = float(v)
    else:
        m = _DURATION.match(str(v)) if isinstance(v, str) else None
        if not m and isinstance(v, str) and _DURATION.match(v.strip().removeprefix("-")):
            raise ValueError("must not be negative")
        if not m:
            raise ValueError(f"expected a duration like 30s, 5m, 2h, got {shown(v)}")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if not math.isfinite(seconds):  # YAML's .nan and .inf are floats
        raise ValueError(f"must be a finite duration, got {seconds}")
    if seconds < 0:
        raise ValueError("must not be negative")
    if seconds > MAX_DURATION:  # digits and a unit: a duration is no secret
        raise ValueError(f"must be at most 3650d, got {v!r}")
    return seconds


def _positive_duration(v: Any) -> float:
    seconds = duration(v)
    if seconds <= 0:  # 0 would mean "no timeout", which is the hazard these keys exist for
        raise ValueError("must be more than 0")
    return seconds


MAX_HOLD = 3600.0


def _hold(v: Any) -> float:
    seconds = duration(v)
    if seconds > MAX_HOLD:  # a hold delays every notification of the route by this much
        raise ValueError(f"must be at most 1h, got {shown(v)}")
    return seconds


def rate(v: Any) -> RateLimit:
    """`1/s`, `30/min`, `100/5m` -> RateLimit."""
    m = _RATE.match(v) if isinstance(v, str) else None
    if not m or int(m.group(1)) < 1:
        raise ValueError(f"expected a rate like 1/s or 30/min, got {shown(v)}")
    per = float(m.group(2) or 1) * _RATE_UNITS[m.group(3)]
    if per <= 0:  # the token bucket divides by it
        raise ValueError(f"the period must be more than 0, got {shown(v)}")
    return RateLimit(int(m.group(1)), per)


def _choice(options: tuple[str, ...]) -> Conv:
    def conv(v: Any) -> str:
        if v not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {shown(v)}")
        return str(v)
    return conv


def _str_list(v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list):
        raise ValueError(f"expected a list of strings, got {kind_of(v)}{quotes_hint(str, v)}")
    for i, x in enumerate(v):
        if not isinstance(x, str):
            raise ValueError(f"expected a list of strings, but item {i} is {kind_of(x)}"
                             + (" (write the value itself, not a mapping)"
                                if isinstance(x, dict) else ""))
    return tuple(v)


def _field_names(v: Any) -> tuple[str, ...]:
    """Top-level payload field names (`deliveries.extra_fields`): `customer`, not `customer.tier`."""
    names = _str_list(v)
    for i, name in enumerate(names):
        if not name or "." in name or any(c.isspace() for c in name):
            raise ValueError(f"item {i} ({shown(name)}) is not a field name: name the field at"
                             " the top of the event (customer, not customer.tier)")
    return names


def _field_paths(v: Any) -> tuple[str, ...]:
    """Payload field paths (`digest.group_by`, `store.dedup_fields`): `hub`, `customer.tier`."""
    paths = _str_list(v)
    for i, path in enumerate(paths):
        if "{" in path:
            raise ValueError(f"item {i} is a template: name the field itself (hub, not"
                             " {{ hub }})")
        if not all(step and not any(c.isspace() for c in step) for step in path.split(".")):
            raise ValueError(f"item {i} ({shown(path)}) is not a field path: name a field of"
                             " the event, or a dotted path into one (hub, customer.tier)")
    return paths


_CREDENTIALS = re.compile(r"[^\s/:@]+:[^\s/@]+@")
_TOKENISH = re.compile(r"(?=.*[A-Za-z])(?=.*\d)[^\s]{16,}")


def shown(v: Any) -> str:
    """A config value as an error message may echo it: never a URL, credentials or a token.

    Config values may be secrets (an Apprise URL pasted in the wrong key, a token):
    a URL shows only its scheme, credentials and long token-like strings are not shown.
    """
    if isinstance(v, (bool, int, float)) or v is None:
        return repr(v)
    if not isinstance(v, str):
        return kind_of(v)
    if "://" in v:
        return repr(_URL_SCHEME.sub(lambda m: f"{m.group(1)}://***", v))
    if _CREDENTIALS.search(v) or _TOKENISH.search(v) or len(v) > 40:
        return f"a string of {len(v)} characters (not shown: it may hold a secret)"
    return repr(v)


def shown_at(source: Source, path: str, v: Any) -> str:
    """`shown(v)`, except that a value made with `${VAR}` is named by its variable."""
    name = source.env.get(path)
    return f"a value from ${{{name}}} (not shown)" if name else shown(v)


_URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://\S*")


def _listen(v: Any) -> str:
    host, sep, port = str(v).rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port, got {shown(v)}")
    try:  # a name, or no host (all addresses), is left to the bind
        ip = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return str(v)
    if ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
        # Linux lets a TCP socket bind an IPv4 multicast address: the relay would start,
        # and no connection could ever reach it.
        raise ValueError(f"{shown(v)} is a multicast or broadcast address, which takes no"
                         " connections: use one of this machine's addresses, or 0.0.0.0 for all")
    return str(v)


# Path prefixes the relay serves itself (relay.web.create_app): a webhook path under one
# of them would never be reached.
RESERVED_PATHS = {"/-/": "the relay's own admin API", "/ui/": "the relay's own status page"}


def _path(v: Any) -> str:
    if not isinstance(v, str) or not v.startswith("/"):
        raise ValueError("must start with /")
    if "{" in v or "}" in v:  # aiohttp reads them as a pattern
        raise ValueError("must not hold { or }")
    if any(c.isspace() for c in v):
        raise ValueError("must not hold spaces")
    for prefix, what in RESERVED_PATHS.items():
        if f"{v}/".startswith(prefix):
            raise ValueError(f"is under {prefix}, {what}: choose another path")
    return v


_STR = _expect(str, "a string")
_BOOL = _expect(bool, "true or false")
_MAP = _expect(dict, "a mapping")

SCHEMAS: dict[str, dict[str, Conv]] = {
    "": {"server": _MAP, "store": _MAP, "sending": _MAP, "deliveries": _MAP,
         "receivers": _expect(list, "a list"), "templates": _MAP, "routes": _expect(list, "a list"),
         "default_receiver": _STR, "timezone": _STR, "delivery": _MAP,
         "watches": _expect(list, "a list")},
    "server": {"listen": _listen, "path": _path, "tokens": _str_list, "admin_token": _STR,
               "viewer_token": _STR,
               "max_body_bytes": _int(256, 64 * 1024 * 1024), "watch_config": _BOOL,
               "header_timeout": _positive_duration, "body_timeout": _positive_duration,
               "keepalive_timeout": _positive_duration, "max_connections": _int(0, 1_000_000)},
    "store": {"url": _STR, "dedup_fields": _field_paths, "retention": duration,
              "max_backlog": _int(1), "busy_timeout": duration},
    "sending": {"concurrency": _int(1, 512), "attempt_timeout": _positive_duration,
                "grace_period": duration, "lease": duration, "retry": _MAP, "circuit": _MAP,
                "fallback_receiver": _STR, "processes": _int(1, 32)},
    "deliveries": {"suppress_stale": _BOOL, "extra_fields": _field_names},
    "retry": {"schedule": _expect(list, "a list of durations"), "jitter": _expect((int, float), "a number"),
              "max_age": duration},
    "circuit": {"failures": _int(1, 1000), "cooldown": duration, "max_cooldown": duration},
    "receiver": {"name": _STR, "urls": _str_list, "concurrency": _int(1, 64), "rate_limit": rate,
                 "retry": _MAP, "quiet_hours": _MAP},
    "quiet_hours": {"timezone": _STR, "windows": _expect(list, "a list of windows"),
                    "urgent": _str_list, "template": _STR},
    "quiet_window": {"days": parse_days, "from": lambda v: parse_time(v, end=False),
                     "to": lambda v: parse_time(v, end=True)},
    "digest": {"window": duration, "group_by": _field_paths, "max_events": _int(1, 1000)},
    "template": {"title": _STR, "body": _STR, "type": _choice(NOTIFY_TYPES),
                 "format": _choice(BODY_FORMATS)},
    "route": {"name": _STR, "match": _MAP, "receivers": _str_list, "template": _STR,
              "title": _STR, "body": _STR, "type": _choice(NOTIFY_TYPES),
              "format": _choice(BODY_FORMATS), "continue": _BOOL, "suppress_stale": _BOOL,
              "live": _BOOL, "hold": _hold, "digest": _MAP},
    "watch": {"name": _STR, "start": _MAP, "stop": lambda v: _stops(v), "after": duration,
              "receivers": _str_list, "title": _STR, "body": _STR, "type": _choice(NOTIFY_TYPES),
              "format": _choice(BODY_FORMATS)},
}


def _stops(v: Any) -> tuple[dict[str, Any], ...]:
    """A watch's `stop`: one set of matchers, or a list of them (any one disarms)."""
    items = v if isinstance(v, list) else [v]
    if not items or not all(isinstance(i, dict) and i for i in items):
        raise ValueError("expected matchers (a mapping) or a list of them, e.g."
                         " [{event: delivery.cancelled}]")
    return tuple(items)


# Top-level sections that may be left with nothing under them (`watches:` with every
# watch commented out): like leaving the key out, as `server:` with nothing always was.
_SECTIONS = frozenset({"server", "store", "sending", "deliveries", "delivery", "receivers",
                       "templates", "routes", "watches"})


class Checker:
    """Reads sections against SCHEMAS, collecting issues instead of stopping at the first."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.issues: list[Issue] = []
        self.warnings: list[Issue] = []
        self.suggested: set[str] = set()  # key paths an unknown key's "did you mean" named

    def error(self, path: str, message: str) -> None:
        self.issues.append(self.source.issue(path, message))

    def broken(self, path: str) -> bool:
        """Whether the value at `path` itself is in error (a section of the wrong kind)."""
        return any(i.path == path for i in self.issues)

    def reported(self, path: str) -> bool:
        """Whether an issue is already about `path` (or under it), or an unknown key was
        taken for a misspelling of it: a "missing" error there would say it twice."""
        return path in self.suggested or any(
            i.path == path or i.path.startswith((f"{path}.", f"{path}[")) for i in self.issues)

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(self.source.issue(path, message, "warning"))

    def section(self, data: Any, path: str, schema: str) -> dict[str, Any]:
        if data is None:
            return {}
        if not isinstance(data, dict):
            self.error(path, f"expected a mapping, got {kind_of(data)}"
                       + SECTION_HINTS.get(schema, "") * isinstance(data, str))
            return {}
        fields = SCHEMAS[schema]
        out: dict[str, Any] = {}
        for key, value in data.items():
            sub = f"{path}.{key}" if path else key
            if sub in self.source.unread:  # `key: {{ x }}`, reported as the file was read
                continue
            if value is None and not path and key in _SECTIONS:  # every entry commented out
                continue
            if key not in fields:  # a key that may be a secret is not shown in the path either
                alias = KEY_ALIASES.get(schema, {}).get(key)
                meant = (alias if alias not in data else None) or _closest(key, fields)
                if meant and shown(key) == repr(key):
                    self.suggested.add(f"{path}.{meant}" if path else meant)
                self.error(sub if shown(key) == repr(key) else path,
                           unknown_key(key, fields, meant) + KEY_HINTS.get((schema, key), ""))
                continue
            try:
                out[key] = self._convert(fields[key], value, sub)
            except ValueError as e:
                self.error(sub, self._message(e, sub, value))
        return out

    def _message(self, e: ValueError, path: str, value: Any) -> str:
        """The error, with a value made with `${VAR}` named by its variable, never shown."""
        name = self.source.env.get(path)
        message = str(e).replace(shown(value), shown_at(self.source, path, value))
        if isinstance(e, WrongKind):  # one hint, for what was written (quotes are not, in ${VAR})
            message = e.plain + ("" if name else e.hint or self._shape_hint(e, path, value))
        if name and f"${{{name}}}" not in message:  # the message did not quote the value
            message += f" (a value from ${{{name}}}, not shown)"
        return message

    def _shape_hint(self, e: WrongKind, path: str, value: Any) -> str:
        if e.wanted is str and isinstance(value, dict):
            return mapping_hint(self.source, path)
        return SHAPE_HINTS.get((path.rpartition(".")[2], type(value)), "")

    def _convert(self, conv: Conv, value: Any, path: str) -> Any:
        """`conv(value)`; a value made with `${VAR}` may also be the number or boolean it spells."""
        try:
            return conv(value)
        except ValueError:
            typed = as_scalar(value) if path in self.source.env else value
            if typed is value:
                raise
        try:
            return conv(typed)
        except ValueError:
            return conv(value)  # the first error is the one to show


def undefined_receiver(name: str, receivers: Mapping[str, Any]) -> str:
    if "://" in name:  # an Apprise URL pasted where a name belongs: never print its secrets
        return (f"expected a receiver name, got a URL ({name.split('://')[0]}://***): put the URL"
                ' in a receiver under "receivers:" and use that receiver\'s name here')
    return f'undefined receiver "{name}"{did_you_mean(name, receivers)}'


def unknown_key(key: str, fields: Mapping[str, Any], meant: str | None = None) -> str:
    if shown(key) != repr(key):  # a secret pasted as a key
        return f"unknown key ({shown(key)})"
    meant = meant or _closest(key, fields)
    return f'unknown key "{key}"' + (f' (did you mean "{meant}"?)' if meant else "")


def _closest(name: str, options: Mapping[str, Any], cutoff: float = 0.6) -> str | None:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=cutoff)
    return close[0] if close else None


def did_you_mean(name: str, options: Mapping[str, Any], cutoff: float = 0.6) -> str:
    close = _closest(name, options, cutoff)
    return f' (did you mean "{close}"?)' if close else ""
