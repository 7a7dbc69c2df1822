"""Quiet hours: is a moment quiet for a receiver, and when does its quiet time end; pure.

A window is `days` plus local wall times `from` and `to` in the receiver's
time zone. `to` at or before `from` crosses midnight (the window ends on the
next day); `24:00` is the end of the day. A wall time names the first instant
the zone's clock shows it or later, so on a spring-forward night a window
from 02:30 starts at 03:00 (02:30 never shows), and on a fall-back night a
window to 02:30 ends the first time the clock reads 02:30. A window therefore
lasts one hour less or more in real time across a DST change, like the wall
clock it follows. Windows that touch or overlap merge into one quiet time.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY_ALIASES = {"weekdays": "mon-fri", "weekend": "sat-sun", "daily": "mon-sun"}
END_OF_DAY = 24 * 60
# A week of windows that never ends still releases a summary once a week.
MAX_QUIET = timedelta(days=7)
_TIME = re.compile(r"^([01]\d|2[0-4]):([0-5]\d)$")


@dataclass(frozen=True)
class Window:
    """One quiet window: ISO weekdays (0 = Monday) and minutes since local midnight."""

    days: frozenset[int]
    start: int  # minutes, 0..1439
    end: int  # minutes, 1..1440; at or before `start`: ends on the next day

    @property
    def crosses_midnight(self) -> bool:
        return self.end <= self.start

    def describe(self) -> str:
        return f"{clock_text(self.start)}-{clock_text(self.end)}"


@dataclass(frozen=True)
class QuietHours:
    timezone: str
    windows: tuple[Window, ...]
    urgent: frozenset[str] = frozenset()

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def parse_time(value: object, *, end: bool) -> int:
    """`"07:00"` -> minutes since midnight; `"24:00"` only as an end. ValueError otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 22:00 as the base-60 number 1320
        raise ValueError('expected a time like "07:00" in quotes (unquoted, YAML reads it'
                         " as a number)")
    m = _TIME.match(value) if isinstance(value, str) else None
    if not m and isinstance(value, str) and re.fullmatch(r"\d:[0-5]\d", value.strip()):
        raise ValueError(f'write the hour with two digits: "0{value.strip()}", got {value!r}')
    minutes = int(m.group(1)) * 60 + int(m.group(2)) if m else -1
    if not m or minutes > END_OF_DAY:
        raise ValueError(f"expected a time from 00:00 to {'24:00' if end else '23:59'},"
                         f" got {value!r}" if isinstance(value, str) and len(value) < 12
                         else 'expected a time like "07:00"')
    if minutes == END_OF_DAY and not end:
        raise ValueError('"24:00" is only allowed as the end ("to") of a window')
    return minutes


def parse_days(value: object) -> frozenset[int]:
    """`[mon, tue]`, `mon-fri`, `weekdays`, `weekend`, `daily` -> ISO weekday numbers."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ValueError("expected a list of days such as [mon, tue] or mon-fri")
    out: set[int] = set()
    for item in items:
        out |= _day_range(item)
    return frozenset(out)


def _day_range(item: object) -> set[int]:
    text = DAY_ALIASES.get(str(item).lower(), str(item).lower()) if isinstance(item, str) else ""
    first, _, last = text.partition("-")
    if first not in DAYS or (last and last not in DAYS):
        shown = repr(item) if isinstance(item, str) and len(item) < 12 else "this value"
        raise ValueError(f"unknown day {shown}{_meant_day(text)}: use {', '.join(DAYS)}, a range"
                         " like mon-fri, weekdays, weekend or daily")
    a, b = DAYS.index(first), DAYS.index(last or first)
    return {d % 7 for d in range(a, b + 1 if b >= a else b + 8)}


def _meant_day(text: str) -> str:
    """`monday` -> mon, `weekends` -> weekend (the words days are written in here)."""
    meant = [d for d in DAYS if text.startswith(d)] if len(text) > 3 and "-" not in text \
        else []
    meant += difflib.get_close_matches(text, list(DAY_ALIASES), n=1, cutoff=0.8)
    return f' (did you mean "{meant[0]}"?)' if meant else ""


def clock_text(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def local_instant(day: date, minutes: int, zone: ZoneInfo) -> datetime:
    """The first instant the zone's clock shows `minutes` on `day` or later (DST-safe)."""
    wall = datetime(day.year, day.month, day.day) + timedelta(minutes=minutes)
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        return first  # the clock shows it (the first time, if it shows twice)
    # In a gap: the clock jumps over `wall`; the jump itself is the first instant after.
    lo = int(wall.replace(tzinfo=zone, fold=1).timestamp())
    hi = int(first.timestamp())
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).replace(tzinfo=None) >= wall:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


def spans(hours: QuietHours, around: datetime) -> Iterator[tuple[datetime, datetime]]:
    """Every window's instances from the day before `around`'s local date to a week after."""
    zone = hours.zone
    today = around.astimezone(zone).date()
    for offset in range(-1, 8):
        day = today + timedelta(days=offset)
        for w in hours.windows:
            if day.weekday() in w.days:
                end_day = day + timedelta(days=1) if w.crosses_midnight else day
                yield local_instant(day, w.start, zone), local_instant(end_day, w.end, zone)


def is_quiet(hours: QuietHours, moment: datetime) -> bool:
    return any(start <= moment < end for start, end in spans(hours, moment))


def quiet_until(hours: QuietHours, moment: datetime) -> datetime | None:
    """When the quiet time holding `moment` ends (merged windows), or None if not quiet."""
    end: datetime | None = None
    probe = moment
    while probe - moment < MAX_QUIET:
        ends = [e for s, e in spans(hours, probe) if s <= probe < e]
        if not ends:
            break
        end = probe = max(ends)
    return min(end, moment + MAX_QUIET) if end is not None else None


def until_epoch(hours: QuietHours, now: float) -> float | None:
    """`quiet_until` for epoch seconds, as the store and the planner use them."""
    end = quiet_until(hours, datetime.fromtimestamp(now, UTC))
    return end.timestamp() if end is not None else None


def held(hours: QuietHours | None, notification_type: str, now: float) -> float | None:
    """The end of the quiet time a notification of this type waits for, or None to send it."""
    if hours is None or notification_type in hours.urgent:
        return None
    return until_epoch(hours, now)


def summary_due(hours: QuietHours | None, now: float, oldest: float) -> float | None:
    """When a summary that fell due by `now` goes out instead of now, or None to send it.

    A summary falls due when its quiet time ends; one found due only later (the relay
    was down, or busy, when it ended) inside a new quiet time waits until that one ends,
    and then also carries what this one holds. `oldest`: when its oldest notification
    was held; none waits more than `MAX_QUIET` (the weekly summary of a receiver quiet
    all week, or a relay down for a week, goes out now).
    """
    until = until_epoch(hours, now) if hours is not None else None
    latest = oldest + MAX_QUIET.total_seconds()
    return None if until is None or latest <= now else min(until, latest)
