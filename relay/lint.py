"""`check`: everything that can be known about a config without sending anything."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator
from typing import Any

import apprise
import jinja2

from relay import config as config_mod
from relay.config import Config, RouteConfig, WatchConfig, did_you_mean, shown, used_receivers
from relay.errors import ConfigError, Issue, StoreError
from relay.events import KNOWN_TYPES
from relay.exposure import shared_tokens
from relay.lint_fields import batch_keys, matcher_sets, misspelt_fields, undocumented
from relay.live import why_not_live
from relay.live.email import is_email
from relay.notify import redact
from relay.routing import MatcherError, Route, Router
from relay.runtime import build_runtime
from relay.store import open_store
from relay.watches import Watches

CREATED = "delivery.created"

Lint = Callable[[Config], list[Issue]]


def lint(path: str) -> list[Issue]:
    """All findings in line order; a config that does not load stops at its load errors
    (and the warnings found while loading it)."""
    try:
        config = config_mod.load(path)
    except ConfigError as e:
        return sorted([*e.issues, *e.warnings], key=lambda i: i.line)
    try:
        found = list(build_runtime(config).warnings)
    except ConfigError as e:  # still worth showing the warnings next to the errors
        found = e.issues
    found += config.warnings
    for rule in (unused, listed_twice, shadowed, undocumented, batch_keys, store_url, cannot_edit,
                 digest_ignores, watch_stops, short_lease, circuit_cooldowns,
                 unknown_event_types, misspelt_fields, shared_tokens):
        found += _safely(rule, config)
    return sorted(found, key=lambda i: (i.line, i.path))


def _safely(rule: Lint, config: Config) -> list[Issue]:
    """A rule that needs compiled parts has nothing to add when those parts are in error."""
    try:
        return rule(config)
    except (MatcherError, ConfigError, jinja2.TemplateSyntaxError):
        return []


def store_url(config: Config) -> list[Issue]:
    """The store URL names a store this relay has (building one connects to nothing)."""
    try:
        open_store(config.store.url)
    except StoreError as e:
        return [config.source.issue("store.url", str(e))]
    return []


def unknown_event_types(config: Config) -> list[Issue]:
    """An `event:` value (of a route, a watch's start or stop) no type Kourier sends has:
    that matcher never holds, and nothing says so (a misspelt `delivery.cancelled`)."""
    sent = ", ".join(sorted(KNOWN_TYPES))
    return [config.source.issue(path, f"{shown(value)} matches no event type Kourier sends"
                                f" ({sent}), only one it may add later{_meant_type(value)}",
                                "warning")
            for path, spec in matcher_sets(config)
            for value in dict.fromkeys(_literals(spec.get("event")))  # each value once
            if not any(fnmatch.fnmatchcase(t, value) for t in KNOWN_TYPES)]


def _meant_type(value: str) -> str:
    """`delivery.canceled` -> delivery.cancelled; `delivery.delivered` is a status, which
    delivery.updated carries (the whole names are alike only by their `delivery.`)."""
    prefix, dot, word = value.rpartition(".")
    kinds = {t.rpartition(".")[2]: t for t in KNOWN_TYPES if t.startswith(f"{prefix}{dot}")}
    if not dot or not kinds:
        return did_you_mean(value, dict.fromkeys(KNOWN_TYPES))
    close = difflib.get_close_matches(word, list(kinds), n=1, cutoff=0.7)
    if close:
        return f' (did you mean "{kinds[close[0]]}"?)'
    if word.isidentifier() and shown(word) == repr(word):
        return (f" (if {word} is a status: a status change is the event delivery.updated,"
                f" so match {{event: delivery.updated, status: {word}}})")
    return ""


def _literals(value: Any) -> Iterator[str]:
    """The strings (and globs) an `event:` matcher names; `{regex}`, `{not}` are left alone."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from _literals(v)


def short_lease(config: Config) -> list[Issue]:
    """A claim must outlive the send it covers: a lease no longer than one attempt's
    timeout lets another worker take over a slow send and send it again."""
    s = config.sending
    if s.lease > s.attempt_timeout:
        return []
    path = "sending.lease" if "sending.lease" in config.source.lines else \
        "sending.attempt_timeout"
    return [config.source.issue(path, f"the lease ({s.lease:g}s) is not longer than"
                                f" attempt_timeout ({s.attempt_timeout:g}s): a send that"
                                " runs long loses its claim and is sent twice; make the"
                                " lease several times longer", "warning")]


def circuit_cooldowns(config: Config) -> list[Issue]:
    """The first pause is `cooldown` and each failed probe doubles it up to `max_cooldown`:
    a cooldown above the max makes every later pause shorter than the first."""
    c = config.sending.circuit
    if c.cooldown <= c.max_cooldown:
        return []
    return [config.source.issue("sending.circuit.cooldown", f"the cooldown ({c.cooldown:g}s)"
                                f" is longer than max_cooldown ({c.max_cooldown:g}s): pauses"
                                " after the first would be shorter, not longer; raise"
                                " max_cooldown", "warning")]


def cannot_edit(config: Config) -> list[Issue]:
    """Receiver URLs of live routes that cannot edit: they get a new message each time.

    Email is not listed: its live form is a thread per delivery.
    """
    out = []
    for route in (r for r in config.routes if r.live and r.digest is None):  # digest_ignores
        for name in (n for n in route.receivers if n in config.receivers):
            for i, url in enumerate(config.receivers[name].urls):
                reason = why_not_live(url)
                if reason is None or is_email(url) or apprise.Apprise.instantiate(url) is None:
                    continue  # editable, threaded, or already an error of its own
                out.append(config.source.issue(
                    f"{route.path}.live", f'receiver "{name}" URL #{i} ({redact(url)}) cannot'
                    f" edit, so it gets a new message per notification: {reason}", "warning"))
    return out


def digest_ignores(config: Config) -> list[Issue]:
    """`live` and `hold` on a digest route do nothing: its one message per window covers many
    deliveries, and is neither edited as a delivery moves nor held for a newer one."""
    out = []
    for route in (r for r in config.routes if r.digest is not None):
        for key, on, what in (("live", route.live, "edited as a live message"),
                              ("hold", route.hold > 0, "held")):
            if on:
                out.append(config.source.issue(
                    f"{route.path}.{key}", f"ignored: this route sends a digest (one message"
                    f" for the deliveries of a window), which is never {what}; remove {key}:,"
                    " or give it a route of its own", "warning"))
    return out


def listed_twice(config: Config) -> list[Issue]:
    """A receiver named twice by one route or watch: a slip (it gets one notification all
    the same)."""
    out = []
    named: list[RouteConfig | WatchConfig] = [*config.routes, *config.watches]
    for named_by in named:
        seen: set[str] = set()
        for i, name in enumerate(named_by.receivers):
            if name in seen:
                out.append(config.source.issue(
                    f"{named_by.path}.receivers[{i}]", f'receiver "{name}" is listed twice'
                    " here: remove one", "warning"))
            seen.add(name)
    return out


def unused(config: Config) -> list[Issue]:
    used = used_receivers(config)
    return [config.source.issue(f"{rc.path}.name", f'receiver "{name}" is never used: no route,'
                                " watch, default_receiver or fallback_receiver names it", "warning")
            for name, rc in config.receivers.items() if name not in used]


def shadowed(config: Config) -> list[Issue]:
    """Routes no event can reach: an earlier route without `continue` matches all they match."""
    earlier_routes = _Earlier()
    out = []
    for later in Router.from_config(config).routes:
        earlier = next((e for e in earlier_routes.could_swallow(later) if swallows(e, later)),
                       None)
        if not later.config.continue_:
            earlier_routes.add(later)
        if earlier:
            where = config.source.line(earlier.config.path)
            out.append(config.source.issue(
                later.config.path, f'route "{later.name}" can never match: the earlier route'
                f' "{earlier.name}" (line {where}) matches every event it would, and has no'
                " continue: true", "warning"))
    return out


class _Earlier:
    """The routes so far without `continue`, indexed so that a check of N routes is not N*N.

    A route with a plain string equality (`status: delivered`) can only swallow a route
    whose values at that path are that string; it is filed under one such (path, string),
    the one fewest routes share so far. The others are asked every time. What
    `could_swallow` yields is a superset, earliest first: `swallows` still decides."""

    def __init__(self) -> None:
        self._by_value: dict[tuple[str, str], list[tuple[int, Route]]] = {}
        self._always: list[tuple[int, Route]] = []
        self._count = 0

    def add(self, route: Route) -> None:
        entry = (self._count, route)
        self._count += 1
        keys = [(m.path, value) for m in route.matchers
                if isinstance(value := route.config.match.get(m.path), str)
                and not any(ch in value for ch in "*?[")]
        if not keys:
            self._always.append(entry)
            return  # any of the keys will do; the least shared keeps the lists short
        key = min(keys, key=lambda k: len(self._by_value.get(k, ())))
        self._by_value.setdefault(key, []).append(entry)

    def could_swallow(self, later: Route) -> list[Route]:
        found = list(self._always)
        for path, spec in later.config.match.items():
            for value in spec if isinstance(spec, list) else [spec]:
                if not isinstance(value, (dict, list)):
                    found += self._by_value.get((path, str(value)), ())
        return [route for _, route in sorted(dict(found).items())]


def swallows(earlier: Route, later: Route) -> bool:
    """True when every event matching `later` also matches `earlier`."""
    spec = later.config.match
    for m in earlier.matchers:
        if m.path not in spec:
            return False
        values = spec[m.path] if isinstance(spec[m.path], list) else [spec[m.path]]
        if any(isinstance(v, (dict, list)) for v in values):
            if spec[m.path] != earlier.config.match.get(m.path):
                return False
            continue
        if not all(m.test(v) for v in values):
            return False
    names_event = later.explicitly_names_event() and not earlier.explicitly_names_event()
    return not names_event


def watch_stops(config: Config) -> list[Issue]:
    """A stop no event can bring after the start, or one that every start event matches."""
    out = []
    for watch in Watches.from_config(config).watches:
        for stop in watch.stops:
            path = stop.config.path
            if _only_created(stop):
                out.append(config.source.issue(path, (
                    f'watch "{watch.name}": this stop can never match after start: it matches'
                    " only delivery.created, which Kourier sends once, before any other event"
                    " of a delivery"), "warning"))
            elif swallows(stop, watch.start):
                out.append(config.source.issue(path, (
                    f'watch "{watch.name}": every event that matches start also matches this'
                    " stop, and a stop wins, so the watch never arms"), "warning"))
    return out


def _only_created(stop: Route) -> bool:
    events = [m for m in stop.matchers if m.path == "event" and m.positive]
    return bool(events) and all(m.test(CREATED) for m in events) \
        and all(not m.test(t) for m in events for t in KNOWN_TYPES - {CREATED})
