"""`check`: everything that can be known about a config without sending anything."""

from __future__ import annotations

from relay import config as config_mod
from relay.app import compile_config
from relay.config import Config, TemplateConfig, used_receivers
from relay.errors import ConfigError, Issue
from relay.events import DOCUMENTED_FIELDS
from relay.routing import Route, Router
from relay.templating import referenced_fields


def lint(path: str) -> list[Issue]:
    """All findings, errors first by line; a config that does not load stops at its errors."""
    try:
        config = config_mod.load(path)
        _, _, _, warnings = compile_config(config)
    except ConfigError as e:
        return e.issues
    found = warnings + unused(config) + shadowed(config) + undocumented(config)
    return sorted(found, key=lambda i: (i.line, i.path))


def unused(config: Config) -> list[Issue]:
    used = used_receivers(config)
    return [config.source.issue(f"{rc.path}.name", f'receiver "{name}" is never used', "warning")
            for name, rc in config.receivers.items() if name not in used]


def shadowed(config: Config) -> list[Issue]:
    """Routes no event can reach: an earlier route without `continue` matches all they match."""
    routes = Router.from_config(config).routes
    out = []
    for j, later in enumerate(routes):
        for earlier in routes[:j]:
            if not earlier.config.continue_ and swallows(earlier, later):
                out.append(config.source.issue(
                    later.config.path, f"can never match: route {earlier.name!r}"
                    f" ({earlier.config.path}) matches every event it does and has no"
                    " continue", "warning"))
                break
    return out


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


def undocumented(config: Config) -> list[Issue]:
    out = []
    seen: set[str] = set()
    templates = [(t, t.path) for t in config.templates.values()]
    templates += [(r.template, r.path) for r in config.routes]
    for template, path in templates:
        for key in ("title", "body"):
            source = getattr(template, key)
            if source is None or f"{path}.{key}" in seen:
                continue
            seen.add(f"{path}.{key}")
            out += _fields_issue(config, template, f"{path}.{key}", source)
    return out


def _fields_issue(config: Config, t: TemplateConfig, path: str, source: str) -> list[Issue]:
    extra = sorted(referenced_fields(source) - DOCUMENTED_FIELDS)
    if not extra:
        return []
    names = ", ".join(extra)
    return [config.source.issue(path, f"uses {names}, which Kourier does not document;"
                                      " it renders empty when an event lacks it", "warning")]
