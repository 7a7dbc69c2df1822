"""Digests: which group an event joins, when a window closes, and cutting to a channel; pure.

The first matching event of a group opens a window for each receiver URL of
the route; later events of the group join it (they do not move its close
time); `max_events` closes it early. When it closes, the URL gets one
message with every event of the group in arrival order, cut to the channel's
limit with "… and N more". A quiet-hours summary is cut the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from relay.events import lookup

# However large `max_events` (or none), a window closes at this many events: one
# message of 100,000 lines helps nobody, and rendering it would hold the worker.
CEILING = 1000
@dataclass(frozen=True)
class Group:
    """The values of a route's `group_by` fields for one event (missing fields are empty)."""

    values: tuple[tuple[str, str], ...]

    def as_dict(self) -> dict[str, str]:
        return dict(self.values)

    def describe(self) -> str:
        """`hub=Hub 3`; a field the event lacks (or holds empty) groups as "", shown `(none)`."""
        return " ".join(f"{k}={v or '(none)'}" for k, v in self.values) or "(one group)"


def group_of(payload: Mapping[str, Any], group_by: Sequence[str]) -> Group:
    return Group(tuple((path, _text(lookup(payload, path, ""))) for path in group_by))


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return str(value)


def timer_key(route: str, group: Group, receiver: str, url_index: int) -> str:
    """The window's key: one open window per route, group and receiver URL."""
    canon = json.dumps([route, group.values, receiver, url_index], ensure_ascii=False)
    return hashlib.sha256(canon.encode()).hexdigest()[:32]


def closes_at(opened_at: float, window: float) -> float:
    return opened_at + window


def full(count: int, max_events: int | None) -> bool:
    """The window holds enough events to close now (`count` includes the newest)."""
    return count >= min(max_events or CEILING, CEILING)


def more_line(n: int) -> str:
    return f"… and {n} more"


def fit(render: Callable[[int], str], total: int, limit: int) -> tuple[str, int]:
    """The longest body that fits `limit`: the first k items, then "… and N more".

    `render(k)` renders the body with the first k items (its length grows with k);
    it is called O(log total) times. Returns the body and how many items it shows.
    A limit of 0 is none.
    """
    whole = render(total)
    if not limit or len(whole) <= limit:
        return whole, total
    lo, hi, shown = 0, total - 1, 0
    while lo <= hi:
        mid = (lo + hi) // 2
        if len(_with_more(render(mid), total - mid)) <= limit:
            shown, lo = mid, mid + 1
        else:
            hi = mid - 1
    body = _with_more(render(shown), total - shown)
    return (body if len(body) <= limit else body[: max(0, limit - 1)] + "…"), shown


def _with_more(body: str, hidden: int) -> str:
    return f"{body.rstrip()}\n{more_line(hidden)}".lstrip("\n")


# The keys of `window`; `check` warns about others.
WINDOW_FIELDS = frozenset({"opened", "closes", "closed", "seconds"})


def window_context(opened_at: float, closes: float, closed_at: float) -> dict[str, Any]:
    """What templates see as `window`: ISO times (UTC) usable with `localtime`."""
    return {"opened": iso(opened_at), "closes": iso(closes), "closed": iso(closed_at),
            "seconds": round(closed_at - opened_at)}


def iso(at: float) -> str:
    """A moment as templates see it: ISO 8601 in UTC, `Z` for the zone."""
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")
