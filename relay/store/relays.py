"""The relays serving from one store, and the receiver URLs each one's config sends for.

Every relay's worker announces its places (receiver name, URL index) with its
orphan pass (`Store.announce`, schema step 11's `relays` table); a relay not
heard from for `ANNOUNCED_FOR` seconds, or one of this host whose process is
gone, is gone. A job is an orphan (it goes dead: "no longer in the config")
only when no live relay sends for its place, so a rolling config change on
several replicas never buries the jobs of a receiver that another replica
still has, or already has. Pure, but for `owner_gone` and `relay_gone`, which ask the
kernel (and `relay_gone` this process's own relays, `here`).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

Place = tuple[str, int]  # a receiver URL: the receiver's name and the URL's index in `urls`
ANNOUNCED_FOR = 90.0  # three orphan checks (worker.ORPHAN_CHECK) without a word: gone


@dataclass(frozen=True)
class RelayState:
    """A relay that announced itself: who (`new_owner()`: host, pid, token), the receiver
    URLs its config sends for, and when it last said so (`Ledger.relays`)."""

    owner: str
    places: frozenset[Place]
    seen_at: float


def relay_states(rows: Iterable[Sequence[Any]]) -> list[RelayState]:
    """`sql.RELAYS` rows (owner, places, seen_at) as records; unreadable places are none, and
    a row whose time is not a number (no relay wrote it) is left out."""
    out = []
    for owner, text, seen in rows:
        try:
            out.append(RelayState(str(owner), frozenset(_places(str(text))), float(seen)))
        except (TypeError, ValueError):
            continue
    return out


def serving(states: Iterable[RelayState], now: float) -> list[RelayState]:
    """The relays heard from within ANNOUNCED_FOR: a row older than that is a relay gone
    (killed, or stopped with the store unreachable) that no live relay has forgotten yet."""
    return [s for s in states if s.seen_at >= now - ANNOUNCED_FOR]


def _places(text: str) -> set[Place]:
    """A `places` column's receiver URLs; none for one no relay wrote (not JSON, an index
    JSON reads as infinity, nesting deeper than the parser goes)."""
    try:
        return {(str(name), int(index)) for name, index in json.loads(text)}
    except (ValueError, TypeError, OverflowError, RecursionError):
        return set()


def places_text(places: Collection[Place]) -> str:
    """What the `relays.places` column holds: a JSON list of [name, url_index]."""
    return json.dumps(sorted([name, index] for name, index in places))


def live_places(own: Collection[Place], rows: Iterable[tuple[str, str]], me: str,
                gone: Callable[[str], bool]) -> set[Place]:
    """The places this relay and every other live one (`rows`: owner, places) send for.

    A row this relay cannot read claims nothing: it keeps no job from its burial."""
    out = set(own)
    for owner, text in rows:
        if owner != me and not gone(owner):
            out |= _places(text)
    return out


def owner_gone(owner: str | None, host: str) -> bool:
    """True when an owner (`new_owner()`: host, pid, token) was a process on this host that
    no longer runs; an owner of another host is never known to be gone."""
    parts = (owner or "").rsplit(":", 2)
    if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
        return not owner
    pid = int(parts[1])
    if pid == os.getpid():
        return True  # a pid reused by us (PID 1 in a restarted container)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


_HERE: set[str] = set()  # this process's relays that announced and did not withdraw


def here(owner: str, serving: bool) -> None:
    """Relay `owner` of this process announced (`serving`) or withdrew (SQLite's
    `announce` and `withdraw`): what `relay_gone` knows of this process's own relays."""
    if serving:
        _HERE.add(owner)
    else:
        _HERE.discard(owner)


def relay_gone(owner: str, host: str, *, one_process: bool) -> bool:
    """A relay is gone when it was a process of this host that no longer runs.

    On a store that only one process serves (`one_process`: SQLite, whose serving relay
    holds the file's lock), a relay no relay of this process announced is gone too: a
    killed one, whose pid this process may even reuse (PID 1 in a restarted container) or
    whose host name was another container's. On PostgreSQL a relay with this process's
    host name and pid may be one of another machine (pods with hostNetwork): it counts
    until it is ANNOUNCED_FOR old."""
    parts = owner.rsplit(":", 2)
    if one_process and owner not in _HERE:
        return True
    if len(parts) == 3 and parts[0] == host and parts[1] == str(os.getpid()):
        return False  # this process's own (two relays in one test), or another machine's
    return owner_gone(owner, host)


def live_relays(states: Iterable[RelayState], *, one_process: bool) -> list[RelayState]:
    """The relays the orphan pass counts as live (`relay_gone`), as `Ledger.relays` lists
    them. A process with no relay on a SQLite store (a CLI command) cannot know its serving
    relay by `here`: there, only a relay of this host whose process is gone is left out."""
    host = socket.gethostname()
    if one_process and not _HERE:
        return [s for s in states if not owner_gone(s.owner, host)]
    return [s for s in states if not relay_gone(s.owner, host, one_process=one_process)]
