"""Config for less noise: `routes[].digest` and `receivers[].quiet_hours`, checked.

Kept apart from relay.config so that module stays about the relay's core
sections; every mistake is collected with its `file:line` and key path.
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass
from typing import Any

from relay.quiet import QuietHours, Window
from relay.schema import NOTIFY_TYPES, Checker, shown, shown_at
from relay.yamlfile import Source


@dataclass(frozen=True)
class DigestConfig:
    window: float
    group_by: tuple[str, ...] = ()
    max_events: int | None = None


def quiet_hours(data: Any, path: str, c: Checker) -> tuple[QuietHours | None, str]:
    """The receiver's quiet hours (None when they have a mistake) and its summary template."""
    values = c.section(data, path, "quiet_hours")
    zone = values.get("timezone", "")
    if not zone:
        if not c.reported(f"{path}.timezone"):
            c.error(f"{path}.timezone", "needed: the time zone the windows are in (e.g."
                    " Europe/Berlin)")
    elif not known_zone(zone):
        c.error(f"{path}.timezone", unknown_zone(c.source, f"{path}.timezone", zone))
    windows = tuple(w for i, item in enumerate(values.get("windows", []))
                    if (w := _quiet_window(item, f"{path}.windows[{i}]", c)))
    if not values.get("windows") and not c.reported(f"{path}.windows"):
        c.error(f"{path}.windows", 'needs at least one window like {days: [mon], from: "22:00",'
                ' to: "07:00"}')
    for i, kind in enumerate(values.get("urgent", ())):
        if kind not in NOTIFY_TYPES:
            c.error(f"{path}.urgent[{i}]", f"must be one of {', '.join(NOTIFY_TYPES)},"
                    f" got {shown(kind)}")
    if not windows or not known_zone(zone):
        return None, values.get("template", "")
    return QuietHours(zone, windows, frozenset(values.get("urgent", ()))), values.get("template", "")


def _quiet_window(data: Any, path: str, c: Checker) -> Window | None:
    before = len(c.issues)
    values = c.section(data, path, "quiet_window")
    for key in ("days", "from", "to"):
        if key not in values and len(c.issues) == before:
            c.error(f"{path}.{key}" if data else path, f'missing "{key}"')
    if len(c.issues) > before:
        return None
    if values["from"] == values["to"]:
        c.error(f"{path}.to", 'the same time as "from": write from "00:00" to "24:00" for a'
                " whole day")
        return None
    return Window(values["days"], values["from"], values["to"])


def unknown_zone(source: Source, path: str, zone: str) -> str:
    """The error for a zone name zoneinfo does not know, with the closest it does (unless
    the name came from `${VAR}`, which is never shown)."""
    return f"unknown time zone {shown_at(source, path, zone)}" + \
        ("" if source.env.get(path) else zone_hint(zone))


def zone_hint(zone: str) -> str:
    offset = re.fullmatch(r"(?:UTC|GMT)\s*([+-])\s*(\d{1,2})(?::00)?", zone.strip())
    if offset and known_zone(fixed := f"Etc/GMT{'-' if offset[1] == '+' else '+'}{int(offset[2])}"):
        return (f" (an offset, not a zone name: write a zone such as Europe/Berlin, which"
                f" follows daylight saving time, or {fixed} for a fixed {zone.strip()}: its sign"
                " is reversed)")
    if re.fullmatch(r"[A-Z]{2,5}[0-9]?[A-Z]{0,4}", zone):  # CEST, BST: not names zoneinfo has
        return (" (an abbreviation, not a zone name: write a name such as Europe/Berlin, which"
                " also follows its daylight saving time)")
    close = difflib.get_close_matches(zone, _zones(), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


@functools.cache
def _zones() -> list[str]:
    from zoneinfo import available_timezones

    return sorted(available_timezones())


def known_zone(name: str) -> bool:
    from zoneinfo import ZoneInfo

    try:
        ZoneInfo(name)
    except (ValueError, KeyError, OSError):  # ZoneInfoNotFoundError is a KeyError
        return False
    return True


def digest(data: Any, path: str, c: Checker) -> DigestConfig | None:
    values = c.section(data, path, "digest")
    if "window" not in values:
        if not c.reported(f"{path}.window"):
            c.error(f"{path}.window", "needed: how long a digest collects, e.g. 10m")
        return None
    if values["window"] <= 0:
        c.error(f"{path}.window", "must be longer than 0s")
        return None
    return DigestConfig(**values)
