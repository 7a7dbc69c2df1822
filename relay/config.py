"""YAML config -> frozen dataclasses, with `${ENV}` secrets and a `file:line` for every issue.

Loading only parses and checks; the runtime (router, templates, Apprise
objects) is compiled from the result elsewhere. Every issue found is
collected, then `ConfigError` is raised once with all of them.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from relay import yamlsyntax
from relay.errors import ConfigError, Issue, Severity

NOTIFY_TYPES = ("info", "success", "warning", "failure")
BODY_FORMATS = ("text", "markdown", "html")
DEFAULT_SCHEDULE = (0, 5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800)
_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|m|min|h|d)?\s*$")
_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_RATE_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}


@dataclass(frozen=True)
class Source:
    """Where the config came from, and the line of every key path in it."""

    file: str
    lines: Mapping[str, int] = field(default_factory=dict, repr=False)
    # The line each scalar's text begins on: the key's line, or the next for `|` and `>`.
    starts: Mapping[str, int] = field(default_factory=dict, repr=False)

    def line(self, path: str) -> int:
        """The line of `path`, else of its nearest recorded parent, else of the document."""
        while path:
            if path in self.lines:
                return self.lines[path]
            # Drop the last step: `.key`, `[i]`, or a first key with no dot before it.
            shorter = re.sub(r"(\.[^.\[]*|\[\d+\]|^[^.\[]+)$", "", path)
            if shorter == path:  # a shape the pattern does not know must not loop forever
                break
            path = shorter
        return self.lines.get("", 1)

    def issue(self, path: str, message: str, severity: Severity = "error") -> Issue:
        return Issue(self.file, self.line(path), path, message, severity)

    def line_within(self, path: str, lineno: int) -> int:
        """The file line of line `lineno` (1-based) of the text at `path`, e.g. a template's."""
        start = self.starts.get(path)
        return start + max(lineno, 1) - 1 if start else self.line(path)


@dataclass(frozen=True)
class RateLimit:
    count: int
    per: float  # seconds

    @property
    def per_second(self) -> float:
        return self.count / self.per


@dataclass(frozen=True)
class RetryPolicy:
    schedule: tuple[float, ...] = DEFAULT_SCHEDULE
    jitter: float = 0.2
    max_age: float = 86400.0


@dataclass(frozen=True)
class CircuitConfig:
    failures: int = 5
    cooldown: float = 60.0
    max_cooldown: float = 600.0


@dataclass(frozen=True)
class ServerConfig:
    listen: str = "0.0.0.0:8080"
    path: str = "/webhook"
    tokens: tuple[str, ...] = ()
    admin_token: str = ""
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
    circuit: CircuitConfig = CircuitConfig()
    fallback_receiver: str = ""
    processes: int = 1


@dataclass(frozen=True)
class DeliveriesConfig:
    """Rules about Kourier's parcel deliveries themselves (their order, their cancellation)."""

    suppress_stale: bool = False


@dataclass(frozen=True)
class ReceiverConfig:
    name: str
    urls: tuple[str, ...]
    concurrency: int = 1
    rate_limit: RateLimit | None = None
    retry: RetryPolicy | None = None
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
    path: str = ""


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

    def retry_for(self, receiver: str) -> RetryPolicy:
        rc = self.receivers.get(receiver)
        return rc.retry if rc and rc.retry else self.sending.retry


# ---------------------------------------------------------------- YAML + env


def _yaml_error(file: str, e: yaml.YAMLError, text: str) -> Issue:
    found = yamlsyntax.explain(e, text)
    return Issue(file, found.line, "", found.message)


class _Tree:
    """Turns a composed YAML node tree into plain values, recording lines and env issues."""

    def __init__(self, file: str, env: Mapping[str, str]) -> None:
        self.file = file
        self.env = env
        self.lines: dict[str, int] = {}
        self.starts: dict[str, int] = {}
        self.issues: list[Issue] = []
        self.env_refs: dict[str, str] = {}

    def value(self, node: yaml.Node, path: str) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = str(key_node.value)
                sub = f"{path}.{key}" if path else key
                self.lines[sub] = key_node.start_mark.line + 1
                if key in out:
                    self.issues.append(Issue(self.file, self.lines[sub], sub, "duplicate key"))
                out[key] = self.value(value_node, sub)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.value(n, f"{path}[{i}]") for i, n in enumerate(node.value)]
        block = getattr(node, "style", None) in ("|", ">")  # its text starts on the next line
        self.starts[path] = node.start_mark.line + 1 + block
        scalar = yaml.SafeLoader(".").construct_object(node, deep=True)  # typed scalar
        if isinstance(scalar, str) and "$" in scalar:
            return self.interpolate(scalar, path, node.start_mark.line + 1)
        return scalar

    def interpolate(self, text: str, path: str, line: int) -> str:
        def repl(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name, default = m.group(1), m.group(2)
            value = resolve_env(name, self.env)
            if value is None and default is None:
                self.issues.append(Issue(self.file, line, path,
                                         f"environment variable {name} is not set (nor {name}_FILE)"))
                return ""
            self.env_refs[path] = name
            return value if value not in (None, "") else (default or "")

        return _ENV_REF.sub(repl, text)


def resolve_env(name: str, env: Mapping[str, str]) -> str | None:
    """`NAME` from the environment, else the contents of the file named by `NAME_FILE`."""
    if name in env:
        return env[name]
    path = env.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return None
    return None


# ---------------------------------------------------------------- schema


Conv = Callable[[Any], Any]


def _expect(kind: type | tuple[type, ...], label: str) -> Conv:
    def conv(v: Any) -> Any:
        if isinstance(v, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise ValueError(f"expected {label}, got {_kind(v)}")
        if not isinstance(v, kind):
            hint = " (put it in quotes)" if kind is str and _kind(v) in ("a number", "a boolean") \
                else ""
            if kind is str and isinstance(v, dict):  # `title: {{ x }}` is a YAML mapping
                hint = ' (a value that starts with "{" must be in quotes)'
            raise ValueError(f"expected {label}, got {_kind(v)}{hint}")
        return v
    return conv


def _kind(v: Any) -> str:
    return {dict: "a mapping", list: "a list", bool: "a boolean", str: "a string",
            type(None): "nothing"}.get(type(v), "a number")


def _int(lo: int, hi: int | None = None) -> Conv:
    def conv(v: Any) -> int:
        _expect(int, "an integer")(v)
        if v < lo or (hi is not None and v > hi):
            raise ValueError(f"must be between {lo} and {hi}" if hi else f"must be at least {lo}")
        return int(v)
    return conv


def duration(v: Any) -> float:
    """Seconds from a number or `500ms`, `5s`, `2m`, `1h`, `7d`."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        seconds = float(v)
    else:
        m = _DURATION.match(str(v)) if isinstance(v, str) else None
        if not m:
            raise ValueError(f"expected a duration like 30s, 5m, 2h, got {shown(v)}")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


def _positive_duration(v: Any) -> float:
    seconds = duration(v)
    if seconds <= 0:  # 0 would mean "no timeout", which is the hazard these keys exist for
        raise ValueError("must be more than 0")
    return seconds


def rate(v: Any) -> RateLimit:
    """`1/s`, `30/min`, `100/5m` -> RateLimit."""
    m = _RATE.match(v) if isinstance(v, str) else None
    if not m or int(m.group(1)) < 1:
        raise ValueError(f"expected a rate like 1/s or 30/min, got {shown(v)}")
    return RateLimit(int(m.group(1)), float(m.group(2) or 1) * _RATE_UNITS[m.group(3)])


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
        raise ValueError(f"expected a list of strings, got {_kind(v)}")
    for i, x in enumerate(v):
        if not isinstance(x, str):
            raise ValueError(f"expected a list of strings, but item {i} is {_kind(x)}"
                             + (" (write the value itself, not a mapping)"
                                if isinstance(x, dict) else ""))
    return tuple(v)


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
        return _kind(v)
    if "://" in v:
        return repr(_URL_SCHEME.sub(lambda m: f"{m.group(1)}://***", v))
    if _CREDENTIALS.search(v) or _TOKENISH.search(v) or len(v) > 40:
        return f"a string of {len(v)} characters (not shown: it may hold a secret)"
    return repr(v)


_URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://\S*")


def _listen(v: Any) -> str:
    host, sep, port = str(v).rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port, got {shown(v)}")
    return str(v)


def _path(v: Any) -> str:
    if not isinstance(v, str) or not v.startswith("/"):
        raise ValueError("must start with /")
    return v


_STR = _expect(str, "a string")
_BOOL = _expect(bool, "true or false")
_MAP = _expect(dict, "a mapping")

SCHEMAS: dict[str, dict[str, Conv]] = {
    "": {"server": _MAP, "store": _MAP, "sending": _MAP, "deliveries": _MAP,
         "receivers": _expect(list, "a list"), "templates": _MAP, "routes": _expect(list, "a list"),
         "default_receiver": _STR, "timezone": _STR, "delivery": _MAP},
    "server": {"listen": _listen, "path": _path, "tokens": _str_list, "admin_token": _STR,
               "max_body_bytes": _int(256, 64 * 1024 * 1024), "watch_config": _BOOL,
               "header_timeout": _positive_duration, "body_timeout": _positive_duration,
               "keepalive_timeout": _positive_duration, "max_connections": _int(0, 1_000_000)},
    "store": {"url": _STR, "dedup_fields": _str_list, "retention": duration,
              "max_backlog": _int(1), "busy_timeout": duration},
    "sending": {"concurrency": _int(1, 512), "attempt_timeout": duration,
                "grace_period": duration, "lease": duration, "retry": _MAP, "circuit": _MAP,
                "fallback_receiver": _STR, "processes": _int(1, 32)},
    "deliveries": {"suppress_stale": _BOOL},
    "retry": {"schedule": _expect(list, "a list of durations"), "jitter": _expect((int, float), "a number"),
              "max_age": duration},
    "circuit": {"failures": _int(1, 1000), "cooldown": duration, "max_cooldown": duration},
    "receiver": {"name": _STR, "urls": _str_list, "concurrency": _int(1, 64), "rate_limit": rate,
                 "retry": _MAP},
    "template": {"title": _STR, "body": _STR, "type": _choice(NOTIFY_TYPES),
                 "format": _choice(BODY_FORMATS)},
    "route": {"name": _STR, "match": _MAP, "receivers": _str_list, "template": _STR,
              "title": _STR, "body": _STR, "type": _choice(NOTIFY_TYPES),
              "format": _choice(BODY_FORMATS), "continue": _BOOL, "suppress_stale": _BOOL},
}


class _Checker:
    """Reads sections against SCHEMAS, collecting issues instead of stopping at the first."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.issues: list[Issue] = []
        self.warnings: list[Issue] = []

    def error(self, path: str, message: str) -> None:
        self.issues.append(self.source.issue(path, message))

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(self.source.issue(path, message, "warning"))

    def section(self, data: Any, path: str, schema: str) -> dict[str, Any]:
        if data is None:
            return {}
        if not isinstance(data, dict):
            self.error(path, f"expected a mapping, got {_kind(data)}")
            return {}
        fields = SCHEMAS[schema]
        out: dict[str, Any] = {}
        for key, value in data.items():
            sub = f"{path}.{key}" if path else key
            if key not in fields:  # a key that may be a secret is not shown in the path either
                self.error(sub if shown(key) == repr(key) else path, _unknown_key(key, fields))
                continue
            try:
                out[key] = fields[key](value)
            except ValueError as e:
                self.error(sub, str(e))
        return out


def _unknown_key(key: str, fields: Mapping[str, Any]) -> str:
    if shown(key) != repr(key):  # a secret pasted as a key
        return f"unknown key ({shown(key)})"
    return f'unknown key "{key}"{_did_you_mean(key, fields)}'


# ---------------------------------------------------------------- building


def load(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read, interpolate and validate a config file; raise ConfigError listing every issue."""
    file = str(path)
    try:
        text = Path(file).read_text()
    except OSError as e:
        raise ConfigError([Issue(file, 0, "", f"cannot read config: {e.strerror or e}")]) from None
    config = loads(text, file, os.environ if env is None else env)
    url = store_beside(config.store.url, Path(file).resolve().parent)
    return replace(config, store=replace(config.store, url=url))


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
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise ConfigError([_yaml_error(file, e, text)]) from None
    tree = _Tree(file, os.environ if env is None else env)
    raw = tree.value(node, "") if node is not None else None
    source = Source(file, tree.lines, tree.starts)
    checker = _Checker(source)
    checker.issues.extend(tree.issues)
    config = _build(raw, checker)
    if checker.issues:
        raise ConfigError(sorted(checker.issues, key=lambda i: i.line))
    assert config is not None
    return Config(**{**config.__dict__, "env_refs": tree.env_refs})


_SECTIONS_HINT = "sections such as server:, receivers:, routes: (see config.example.yaml)"


def _build(raw: Any, c: _Checker) -> Config | None:
    if raw is None:  # an empty file, or only comments
        c.error("", "the config is empty: it needs at least a server: section with tokens"
                " (see config.example.yaml)")
        return None
    if not isinstance(raw, dict):
        c.error("", f"the top level must be a mapping of {_SECTIONS_HINT}, got {_kind(raw)}")
        return None
    top = c.section(raw, "", "")
    if "server" not in raw:
        c.error("", 'missing "server:" section: it needs at least server.tokens,'
                " the bearer tokens Kourier sends")
    server = _server(c.section(top.get("server"), "server", "server"), c)
    store = StoreConfig(**c.section(top.get("store"), "store", "store"))
    sending, deliveries = _sending(top, c)
    receivers = _receivers(top.get("receivers", []), c)
    templates = {name: _template(body, f"templates.{name}", c)
                 for name, body in (top.get("templates") or {}).items()}
    routes = tuple(_route(r, f"routes[{i}]", c) for i, r in enumerate(top.get("routes", [])))
    config = Config(c.source, server, store, sending, deliveries, receivers, templates, routes,
                    top.get("default_receiver", ""), top.get("timezone", "UTC"),
                    warnings=tuple(sorted(c.warnings, key=lambda i: i.line)))
    _check_references(config, c)
    return config


def _server(data: dict[str, Any], c: _Checker) -> ServerConfig:
    tokens = tuple(t for t in data.get("tokens", ()) if t)
    if not tokens and not any(i.path.startswith("server.tokens") or "server:" in i.message
                              for i in c.issues):
        c.error("server.tokens", "at least one non-empty webhook token is required")
    return ServerConfig(**{**data, "tokens": tokens})


def _retry(data: dict[str, Any], path: str, c: _Checker) -> RetryPolicy:
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


def _sending(top: dict[str, Any], c: _Checker) -> tuple[SendingConfig, DeliveriesConfig]:
    """`sending:` and `deliveries:`, or the old `delivery:` section that mixed the two."""
    deliveries = c.section(top.get("deliveries"), "deliveries", "deliveries")
    if "delivery" not in top:
        return _sending_section(c.section(top.get("sending"), "sending", "sending"), "sending",
                                c), DeliveriesConfig(**deliveries)
    if "sending" in top:
        c.error("delivery", 'the old "delivery:" section and "sending:" are both here:'
                ' move everything into "sending:"')
    old = dict(top.get("delivery") or {}) if isinstance(top.get("delivery"), dict) else {}
    if "suppress_stale" in old:
        c.warn("delivery.suppress_stale",
               'renamed: write "deliveries: {suppress_stale: ...}" (it is about parcel deliveries)')
        if "suppress_stale" in deliveries:
            c.error("delivery.suppress_stale", 'also set in "deliveries:": keep only that one')
        value = old.pop("suppress_stale")
        if isinstance(value, bool):
            deliveries.setdefault("suppress_stale", value)
        else:
            c.error("delivery.suppress_stale", f"expected true or false, got {_kind(value)}")
    if old:
        c.warn("delivery", 'renamed: call this section "sending:" (the old name still works'
               ' for now); "delivery" only ever means a Kourier parcel delivery')
    data = c.section(old, "delivery", "sending")
    return _sending_section(data, "delivery", c), DeliveriesConfig(**deliveries)


def _sending_section(data: dict[str, Any], path: str, c: _Checker) -> SendingConfig:
    retry = _retry(data.pop("retry", {}), f"{path}.retry", c)
    circuit = CircuitConfig(**c.section(data.pop("circuit", {}), f"{path}.circuit", "circuit"))
    return SendingConfig(**data, retry=retry, circuit=circuit)


def _receivers(items: list[Any], c: _Checker) -> dict[str, ReceiverConfig]:
    out: dict[str, ReceiverConfig] = {}
    for i, item in enumerate(items):
        path = f"receivers[{i}]"
        data = c.section(item, path, "receiver")
        name = data.pop("name", "")
        if not name:
            c.error(path, 'missing "name"')
            continue
        if name in out:
            c.error(f"{path}.name", f'duplicate receiver "{name}"')
        if not data.get("urls") and not any(i.path == f"{path}.urls" for i in c.issues):
            c.error(f"{path}.urls", "needs at least one Apprise URL")
        retry = _retry(data.pop("retry"), f"{path}.retry", c) if "retry" in data else None
        urls = data.pop("urls", ())
        out[name] = ReceiverConfig(name=name, urls=urls, retry=retry, path=path, **data)
    return out


def _template(data: Any, path: str, c: _Checker) -> TemplateConfig:
    return TemplateConfig(**c.section(data, path, "template"), path=path)


def _route(data: Any, path: str, c: _Checker) -> RouteConfig:
    values = c.section(data, path, "route")
    if "match" not in values:
        values["match"] = {}
    template = TemplateConfig(
        **{k: values.pop(k) for k in ("title", "body", "type", "format") if k in values}, path=path)
    if not values.get("receivers"):
        c.error(f"{path}.receivers", "needs at least one receiver")
    return RouteConfig(
        name=values.get("name") or path,
        match=values["match"],
        receivers=values.get("receivers", ()),
        template=template,
        template_ref=values.get("template", ""),
        continue_=values.get("continue", False),
        suppress_stale=values.get("suppress_stale"),
        path=path,
    )


def _check_references(config: Config, c: _Checker) -> None:
    for route in config.routes:
        for i, name in enumerate(route.receivers):
            if name not in config.receivers:
                c.error(f"{route.path}.receivers[{i}]", _undefined_receiver(name, config))
        named = route.template_ref
        if named and named not in config.templates:
            c.error(f"{route.path}.template",
                    f'undefined template "{named}"{_did_you_mean(named, config.templates)}'
                    if shown(named) == repr(named) else f"undefined template ({shown(named)})")
    for key in ("default_receiver",):
        name = getattr(config, key)
        if name and name not in config.receivers:
            c.error(key, _undefined_receiver(name, config))
    fallback = config.sending.fallback_receiver
    if fallback and fallback not in config.receivers:
        section = "delivery" if "delivery.fallback_receiver" in config.source.lines else "sending"
        c.error(f"{section}.fallback_receiver", _undefined_receiver(fallback, config))


def _undefined_receiver(name: str, config: Config) -> str:
    if "://" in name:  # an Apprise URL pasted where a name belongs: never print its secrets
        return (f"expected a receiver name, got a URL ({name.split('://')[0]}://***): put the URL"
                ' in a receiver under "receivers:" and use that receiver\'s name here')
    return f'undefined receiver "{name}"{_did_you_mean(name, config.receivers)}'


def _did_you_mean(name: str, options: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def used_receivers(config: Config) -> set[str]:
    names = {r for route in config.routes for r in route.receivers}
    return names | {n for n in (config.default_receiver, config.sending.fallback_receiver) if n}
