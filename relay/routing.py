"""Ordered routes compiled from config; `Router.match(event)` is pure.

Matcher forms under a route's `match:` (all must hold):

    status: delivered                 equality (strings may be globs: "delivery.*")
    status: [delivered, failed]       any of
    customer.tier: {regex: "gold|vip"}  anchored regular expression
    status: {not: cancelled}          negation of any matcher
    note: {exists: true}              the field is present (or absent)
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from relay.config import Config, RouteConfig, Source
from relay.errors import ConfigError, Issue
from relay.events import Event, lookup

_ABSENT = object()
Predicate = Callable[[Any], bool]


@dataclass(frozen=True)
class Matcher:
    """One condition on a dotted payload path."""

    path: str
    describe: str
    test: Predicate
    positive: bool = True

    def __call__(self, payload: Mapping[str, Any]) -> bool:
        return self.test(lookup(payload, self.path, _ABSENT))


@dataclass(frozen=True)
class Route:
    config: RouteConfig
    matchers: tuple[Matcher, ...]

    @property
    def name(self) -> str:
        return self.config.name

    def explicitly_names_event(self) -> bool:
        return any(m.path == "event" and m.positive for m in self.matchers)

    def failed(self, event: Event) -> list[Matcher]:
        """The matchers this event does not satisfy (empty when the route matches)."""
        failures = [m for m in self.matchers if not m(event.payload)]
        if not failures and not event.known and not self.explicitly_names_event():
            failures.append(Matcher("event", "a known event type (or an explicit event matcher)",
                                    lambda _: False))
        return failures


@dataclass(frozen=True)
class Match:
    routes: tuple[Route, ...]
    receivers: tuple[tuple[Route | None, str], ...]  # (route, receiver); None = default

    @property
    def receiver_names(self) -> list[str]:
        return [r for _, r in self.receivers]


class Router:
    def __init__(self, routes: tuple[Route, ...], default_receiver: str) -> None:
        self.routes = routes
        self.default_receiver = default_receiver

    @classmethod
    def from_config(cls, config: Config) -> Router:
        """Compile every route; raise MatcherError listing the bad matchers of all of them
        (the first route with one stopped the rest from being checked)."""
        routes, errors = [], []
        for rc in config.routes:
            try:
                routes.append(Route(rc, compile_matchers(rc.match, rc.path, config.source)))
            except MatcherError as e:
                errors += e.issues
        if errors:
            raise MatcherError(errors)
        return cls(tuple(routes), config.default_receiver)

    def match(self, event: Event) -> Match:
        matched = tuple(self._walk(event))
        pairs: list[tuple[Route | None, str]] = []
        for route in matched:
            pairs.extend((route, name) for name in route.config.receivers
                         if name not in {p[1] for p in pairs})
        if not matched and self.default_receiver and event.known:
            pairs.append((None, self.default_receiver))
        return Match(matched, tuple(pairs))

    def _walk(self, event: Event) -> Iterator[Route]:
        for route in self.routes:
            if not route.failed(event):
                yield route
                if not route.config.continue_:
                    return


def compile_matchers(spec: Mapping[str, Any], path: str, source: Source, section: str = "match",
                     ) -> tuple[Matcher, ...]:
    """Build a route's matchers; every bad one is reported (with its place) in `MatcherError`.

    `section`: the key under `path` that holds them (a watch's `start`, `stop[0]`).
    """
    errors: list[Issue] = []
    matchers = []
    for key, value in spec.items():
        try:
            if not key.strip(".") or ".." in key:  # `"": x` looked up nothing, silently
                raise ValueError("expected a field name or a dotted path (status, customer.tier)")
            test, text, positive = _compile(value)
            matchers.append(Matcher(key, f"{key} {text}", test, positive))
        except ValueError as e:
            errors.append(source.issue(f"{path}.{section}" + f".{key}" * bool(key), str(e)))
    if errors:
        raise MatcherError(errors)
    return tuple(matchers)


class MatcherError(ConfigError):
    """Routes whose matchers cannot be built; `issues` says where and why."""


def _compile(value: Any) -> tuple[Predicate, str, bool]:
    if isinstance(value, list):
        parts = [_compile(v) for v in value]
        if not parts:
            raise ValueError("an any-of list needs at least one value")
        return (lambda v: any(p[0](v) for p in parts),
                "in [" + ", ".join(p[1] for p in parts) + "]", True)
    if isinstance(value, dict):
        return _compile_operator(value)
    if isinstance(value, str) and any(ch in value for ch in "*?["):
        return (lambda v: isinstance(v, str) and fnmatch.fnmatchcase(v, value),
                f"~ {value!r}", True)
    return (lambda v: v is not _ABSENT and _equal(v, value)), f"== {value!r}", True


def _compile_operator(value: dict[str, Any]) -> tuple[Predicate, str, bool]:
    if len(value) != 1:
        raise ValueError("a matcher mapping takes exactly one of: regex, not, exists")
    (op, arg), = value.items()
    if op == "regex":
        try:
            rx = re.compile(str(arg))
        except re.error as e:
            raise ValueError(f"invalid regex {arg!r}: {e}") from None
        return (lambda v: v is not _ABSENT and rx.fullmatch(_text(v)) is not None,
                f"=~ /{arg}/", True)
    if op == "not":
        test, text, _ = _compile(arg)
        return (lambda v: not test(v)), f"not {text}", False
    if op == "exists":
        if not isinstance(arg, bool):
            raise ValueError("exists takes true or false")
        return (lambda v: (v is not _ABSENT) == arg), "exists" if arg else "is absent", arg
    raise ValueError(f'unknown matcher "{op}" (use regex, not or exists)')


def _equal(actual: Any, expected: Any) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return actual is expected
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        return actual == expected
    return _text(actual) == _text(expected) if expected is not None else actual is None


def _text(v: Any) -> str:
    return v if isinstance(v, str) else str(v)
