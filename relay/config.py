"""YAML config -> frozen dataclasses, with `${ENV}` secrets and a `file:line` for every issue.

Loading only parses and checks; the runtime (router, templates, Apprise
objects) is compiled from the result elsewhere. Every issue found is
collected, then `ConfigError` is raised once with all of them. The file is
read by `relay.yamlfile`, each value checked by `relay.schema`; this module
holds the dataclasses and builds them (and keeps every public name of the
three importable from here).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from relay import legacy
from relay.errors import ConfigError, Issue
from relay.limits import Circuit
from relay.noiseconfig import DigestConfig, digest, quiet_hours
from relay.quiet import QuietHours
from relay.schema import (
    BODY_FORMATS,
    NOTIFY_TYPES,
    SCHEMAS,
    Checker,
    RateLimit,
    did_you_mean,
    duration,
    kind_of,
    rate,
    shown,
    shown_at,
    undefined_receiver,
)
from relay.yamlfile import Source, Tree, compose, read, resolve_env

__all__ = ["BODY_FORMATS", "NOTIFY_TYPES", "SCHEMAS", "Circuit", "Config", "DeliveriesConfig",
           "DigestConfig", "RateLimit", "ReceiverConfig", "RetryPolicy", "RouteConfig",
           "SendingConfig", "ServerConfig", "Source", "StoreConfig", "TemplateConfig", "WatchConfig",
           "duration", "load", "loads", "rate", "resolve_env", "shown", "shown_at", "store_beside",
           "used_receivers"]

DEFAULT_SCHEDULE = (0, 5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800)


@dataclass(frozen=True)
class RetryPolicy:
    schedule: tuple[float, ...] = DEFAULT_SCHEDULE
    jitter: float = 0.2
    max_age: float = 86400.0


@dataclass(frozen=True)
class ServerConfig:
    listen: str = "0.0.0.0:8080"
    path: str = "/webhook"
    tokens: tuple[str, ...] = ()
    token_keys: tuple[str, ...] = ()  # each token's key in the file (empty ones are left out)
    admin_token: str = ""
    viewer_token: str = ""  # the status page, read-only
    max_body_bytes: int = 65536
    watch_config: bool = False
    # Connection guards (relay/server.py); durations in seconds.
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 75.0
    max_connections: int = 0  # 0: derived from the open-files limit

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0] or "0.0.0.0"

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


@dataclass(frozen=True)
class StoreConfig:
    url: str = "sqlite:relay.db"
    dedup_fields: tuple[str, ...] = ()
    retention: float = 7 * 86400.0
    max_backlog: int = 100_000
    busy_timeout: float = 5.0


@dataclass(frozen=True)
class SendingConfig:
    """How the worker sends jobs: concurrency, timeouts, retries, circuit, processes."""

    concurrency: int = 16
    attempt_timeout: float = 15.0
    grace_period: float = 10.0
    lease: float = 60.0
    retry: RetryPolicy = RetryPolicy()
    circuit: Circuit = Circuit()
    fallback_receiver: str = ""
    processes: int = 1


@dataclass(frozen=True)
class DeliveriesConfig:
    """Rules about Kourier's parcel deliveries themselves (their order, their cancellation)."""

    suppress_stale: bool = True  # Kourier sends updates out of order (KOURIER.md)
    extra_fields: tuple[str, ...] = ()  # what events carry beyond Kourier's documented fields


@dataclass(frozen=True)
class ReceiverConfig:
    name: str
    urls: tuple[str, ...]
    concurrency: int = 1
    rate_limit: RateLimit | None = None
    retry: RetryPolicy | None = None
    quiet_hours: QuietHours | None = None
    quiet_template: str = ""  # a `templates:` entry for the summary; "" is the built-in one
    path: str = ""


@dataclass(frozen=True)
class TemplateConfig:
    title: str | None = None
    body: str | None = None
    type: str | None = None
    format: str | None = None
    path: str = ""


@dataclass(frozen=True)
class RouteConfig:
    name: str
    match: Mapping[str, Any]
    receivers: tuple[str, ...]
    template: TemplateConfig
    template_ref: str = ""
    continue_: bool = False
    suppress_stale: bool | None = None
    live: bool = False  # one message per delivery and receiver URL, edited as it moves
    hold: float = 0.0  # seconds a notification waits for a newer one that replaces it
    digest: DigestConfig | None = None
    path: str = ""


@dataclass(frozen=True)
class WatchConfig:
    """A timer per delivery: `start` arms it, any of `stop` disarms it, it fires `after`."""

    name: str
    start: Mapping[str, Any]
    stop: tuple[Mapping[str, Any], ...]
    after: float
    receivers: tuple[str, ...]
    template: TemplateConfig
    path: str = ""
    stop_listed: bool = True  # `stop:` was a list (its key paths are stop[i], else stop)


@dataclass(frozen=True)
class Config:
    source: Source
    server: ServerConfig
    store: StoreConfig
    sending: SendingConfig
    deliveries: DeliveriesConfig
    receivers: Mapping[str, ReceiverConfig]
    templates: Mapping[str, TemplateConfig]
    routes: tuple[RouteConfig, ...]
    default_receiver: str = ""
    timezone: str = "UTC"
    env_refs: Mapping[str, str] = field(default_factory=dict, repr=False)
    warnings: tuple[Issue, ...] = ()  # found while loading, e.g. a renamed key still in use
    watches: tuple[WatchConfig, ...] = ()

    def retry_for(self, receiver: str) -> RetryPolicy:
        rc = self.receivers.get(receiver)
        return rc.retry if rc and rc.retry else self.sending.retry


def load(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read, interpolate and validate a config file; raise ConfigError listing every issue."""
    return load_text(path, env)[1]


def load_text(path: str | os.PathLike[str], env: Mapping[str, str] | None = None,
              ) -> tuple[str, Config]:
    """The config file's text and the config it gives (`serve` hands the text to its send
    processes, so both resolve receiver URLs from the same text)."""
    file = str(path)
    text = read(file)
    config = loads(text, file, os.environ if env is None else env)
    url = store_beside(config.store.url, Path(file).resolve().parent)
    return text, replace(config, store=replace(config.store, url=url))


def store_beside(url: str, folder: Path) -> str:
    """A relative `sqlite:` path names a file in `folder` (the config's), not in the working directory.

    Operators run `dead list -c /etc/…/config.yaml` from anywhere; the store must be
    the one `serve` uses. Absolute forms (`sqlite:/x`, `sqlite:///x`, `sqlite:////x`)
    and other schemes are left alone.
    """
    if not url.startswith("sqlite:"):
        return url
    rest = url.removeprefix("sqlite:")
    if rest.startswith("//"):
        rest = rest[2:]
    if not rest or rest.startswith("/") or rest == ":memory:":
        return url
    return f"sqlite:{folder / rest}"


def loads(text: str, file: str = "<config>", env: Mapping[str, str] | None = None) -> Config:
    node = compose(text, file)
    tree = Tree(file, os.environ if env is None else env)
    raw = tree.value(node, "") if node is not None else None
    source = tree.source()
    checker = Checker(source)
    checker.issues.extend(tree.issues)
    checker.warnings.extend(tree.warnings)
    config = _build(raw, checker)
    if checker.issues:
        raise ConfigError(sorted(checker.issues, key=lambda i: i.line), tuple(checker.warnings))
    assert config is not None
    return Config(**{**config.__dict__, "env_refs": tree.env_refs})


def _build(raw: Any, c: Checker) -> Config | None:
    if raw is None:  # an empty file, or only comments
        c.error("", "the config is empty: it needs at least a server: section with tokens"
                " (see config.example.yaml)")
        return None
    if not isinstance(raw, dict):
        c.error("", "the top level must be a mapping of sections such as server:, receivers:,"
                f" routes: (see config.example.yaml), got {kind_of(raw)}")
        return None
    top = c.section(raw, "", "")
    if "server" not in raw and not c.reported("server"):
        c.error("", 'missing "server:" section: it needs at least server.tokens,'
                " the bearer tokens Kourier sends")
    server = _server(c.section(top.get("server"), "server", "server"), c)
    store = StoreConfig(**c.section(top.get("store"), "store", "store"))
    sending, deliveries = _sending(top, c)
    receivers = _receivers(top.get("receivers", []), c)
    templates = {name: _template(body, f"templates.{name}", c)
                 for name, body in (top.get("templates") or {}).items()}
    routes = tuple(_route(r, f"routes[{i}]", c) for i, r in enumerate(top.get("routes", [])))
    watches = tuple(_watch(w, f"watches[{i}]", c) for i, w in enumerate(top.get("watches", [])))
    config = Config(c.source, server, store, sending, deliveries, receivers, templates, routes,
                    top.get("default_receiver", ""), top.get("timezone", "UTC"),
                    warnings=tuple(sorted(c.warnings, key=lambda i: i.line)), watches=watches)
    _check_references(config, c)
    return config


def _server(data: dict[str, Any], c: Checker) -> ServerConfig:
    kept = [(t, f"server.tokens[{i}]") for i, t in enumerate(data.get("tokens", ())) if t]
    tokens, keys = tuple(t for t, _ in kept), tuple(k for _, k in kept)
    told = c.reported("server.tokens") or "server" in c.suggested or any(
        i.path == "server" or "server:" in i.message for i in c.issues)
    if not tokens and not told:
        empty = [f"${{{c.source.env[p]}}}" for p in c.source.env if p.startswith("server.tokens[")]
        c.error("server.tokens", "at least one non-empty webhook token is required"
                + (f" ({', '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty)" if empty else ""))
    return ServerConfig(**{**data, "tokens": tokens, "token_keys": keys})


def _retry(data: dict[str, Any], path: str, c: Checker) -> RetryPolicy:
    values = c.section(data, path, "retry")
    if "schedule" in values:
        try:
            values["schedule"] = tuple(duration(v) for v in values["schedule"])
        except ValueError as e:
            c.error(f"{path}.schedule", str(e))
            values.pop("schedule")
        if not values.get("schedule", True):
            c.error(f"{path}.schedule", "needs at least one attempt")
    if not 0 <= values.get("jitter", 0) <= 1:
        c.error(f"{path}.jitter", "must be between 0 and 1")
    return RetryPolicy(**values)


def _sending(top: dict[str, Any], c: Checker) -> tuple[SendingConfig, DeliveriesConfig]:
    """`sending:` and `deliveries:`, or the old `delivery:` section that mixed the two."""
    data, deliveries, path = legacy.sending_sections(top, c)
    retry = _retry(data.pop("retry", {}), f"{path}.retry", c)
    circuit = Circuit(**c.section(data.pop("circuit", {}), f"{path}.circuit", "circuit"))
    return SendingConfig(**data, retry=retry, circuit=circuit), DeliveriesConfig(**deliveries)


def _receivers(items: list[Any], c: Checker) -> dict[str, ReceiverConfig]:
    out: dict[str, ReceiverConfig] = {}
    for i, item in enumerate(items):
        path = f"receivers[{i}]"
        data = c.section(item, path, "receiver")
        name = data.pop("name", "")
        if not name:  # a receiver that is no mapping was already named as such
            if not c.broken(path) and not c.reported(f"{path}.name"):
                c.error(path, 'missing "name"')
            continue
        if name in out:
            c.error(f"{path}.name", f'duplicate receiver "{name}"')
        if not data.get("urls") and not c.reported(f"{path}.urls"):
            c.error(f"{path}.urls", "needs at least one Apprise URL")
        retry = _retry(data.pop("retry"), f"{path}.retry", c) if "retry" in data else None
        urls = data.pop("urls", ())
        hours, summary = quiet_hours(data.pop("quiet_hours"), f"{path}.quiet_hours", c) \
            if "quiet_hours" in data else (None, "")
        out[name] = ReceiverConfig(name=name, urls=urls, retry=retry, quiet_hours=hours,
                                   quiet_template=summary, path=path, **data)
    return out


def _template(data: Any, path: str, c: Checker) -> TemplateConfig:
    return TemplateConfig(**c.section(data, path, "template"), path=path)


def _inline_template(values: dict[str, Any], path: str) -> TemplateConfig:
    """A route's or watch's own `title`, `body`, `type` and `format` (taken out of `values`)."""
    return TemplateConfig(
        **{k: values.pop(k) for k in ("title", "body", "type", "format") if k in values}, path=path)


def _route(data: Any, path: str, c: Checker) -> RouteConfig:
    values = c.section(data, path, "route")
    if "match" not in values:
        values["match"] = {}
    if not values.get("receivers") and not c.reported(f"{path}.receivers") and not c.broken(path):
        c.error(f"{path}.receivers", "needs at least one receiver")
    return RouteConfig(
        name=values.get("name") or path,
        match=values["match"],
        receivers=values.get("receivers", ()),
        template=_inline_template(values, path),
        template_ref=values.get("template", ""),
        continue_=values.get("continue", False),
        suppress_stale=values.get("suppress_stale"),
        live=values.get("live", False),
        hold=values.get("hold", 0.0),
        digest=digest(values["digest"], f"{path}.digest", c) if "digest" in values else None,
        path=path,
    )


def _watch(data: Any, path: str, c: Checker) -> WatchConfig:
    values = c.section(data, path, "watch")
    for key in ("name", "start", "after", "receivers"):
        if not values.get(key) and not c.reported(f"{path}.{key}") and not c.broken(path):
            c.error(f"{path}.{key}" if key != "name" else path, f'missing "{key}"'
                    if key not in values else f'"{key}" must not be empty or zero')
    return WatchConfig(values.get("name", path), values.get("start", {}),
                       values.get("stop", ()), values.get("after", 0.0),
                       values.get("receivers", ()), _inline_template(values, path), path,
                       isinstance(data, dict) and isinstance(data.get("stop"), list))


def _check_references(config: Config, c: Checker) -> None:
    names: set[str] = set()
    for watch in config.watches:
        _check_receivers(watch, config, c)
        if watch.name in names:
            c.error(f"{watch.path}.name", f'duplicate watch "{watch.name}"')
        names.add(watch.name)
    first: dict[str, RouteConfig] = {}
    for route in config.routes:
        _check_receivers(route, config, c)
        other = first.setdefault(route.name, route)
        if other is not route:  # templates, digest windows and holds go by the name
            c.error(f"{route.path}.name", f'duplicate route "{route.name}" (also {other.path},'
                    f" line {config.source.line(other.path)}): each route needs its own name")
    for path, named in [*((f"{r.path}.template", r.template_ref) for r in config.routes),
                        *((f"{r.path}.quiet_hours.template", r.quiet_template)
                          for r in config.receivers.values())]:
        if named and named not in config.templates and not c.broken("templates"):
            c.error(path, f'undefined template "{named}"{did_you_mean(named, config.templates)}'
                    if shown(named) == repr(named) else f"undefined template ({shown(named)})")
    if c.broken("receivers"):  # no receiver could be read: none is "undefined"
        return
    if config.default_receiver and config.default_receiver not in config.receivers:
        c.error("default_receiver", undefined_receiver(config.default_receiver, config.receivers))
    fallback = config.sending.fallback_receiver
    if fallback and fallback not in config.receivers:
        section = "delivery" if "delivery.fallback_receiver" in config.source.lines else "sending"
        c.error(f"{section}.fallback_receiver", undefined_receiver(fallback, config.receivers))


def _check_receivers(named_by: RouteConfig | WatchConfig, config: Config, c: Checker) -> None:
    for i, name in enumerate(named_by.receivers):
        if name not in config.receivers and not c.broken("receivers"):
            c.error(f"{named_by.path}.receivers[{i}]", undefined_receiver(name, config.receivers))


def used_receivers(config: Config) -> set[str]:
    names = {r for route in config.routes for r in route.receivers}
    names |= {r for watch in config.watches for r in watch.receivers}
    return names | {n for n in (config.default_receiver, config.sending.fallback_receiver) if n}
