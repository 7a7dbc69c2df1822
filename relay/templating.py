"""Sandboxed Jinja2 templates, compiled at load, rendered per route and channel.

Payload values are data, never template source. Everything a template prints
from `{{ ... }}` passes through `finalize`, which makes it inert for the
channel (`relay.escaping`: mentions, markdown, HTML, control characters),
while the operator's literal template text is left alone. A field missing
from the payload renders empty; a template that fails at render time falls
back to the built-in one, so a notification is never lost to a template.
"""

from __future__ import annotations

import difflib
import functools
import logging
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
from jinja2 import meta, nodes

from relay import sandbox
from relay.config import Config, Source, TemplateConfig
from relay.errors import ConfigError, Issue
from relay.escaping import Escaping, strip_controls
from relay.events import Event, parse_timestamp
from relay.message import Message
from relay.noiseconfig import known_zone, unknown_zone
from relay.zones import localtime_problem

log = logging.getLogger(__name__)

MAX_OUTPUT = sandbox.MAX_OUTPUT  # characters; bounds what a runaway template can produce
DEFAULT_TITLE = (
    '{%- if event == "delivery.created" -%}Delivery {{ delivery_id }} created'
    '{%- elif event == "delivery.cancelled" -%}Delivery {{ delivery_id }} cancelled'
    "{%- elif status -%}Delivery {{ delivery_id }}: {{ status | human_status }}"
    "{%- else -%}Kourier {{ event }} for delivery {{ delivery_id }}{%- endif -%}"
)
DEFAULT_BODY = (
    "{% if status %}Status: {{ status | human_status }}\n{% endif -%}"
    "Time: {{ timestamp | localtime }}\n"
    "Event: {{ event }}"
)
# The notice sent to `sending.fallback_receiver` when a receiver URL's circuit opens; the
# operator overrides it with `templates.receiver_failing` (any of its keys).
RECEIVER_FAILING = "receiver_failing"
RECEIVER_FAILING_FIELDS = frozenset({"event", "timestamp", "receiver", "url", "url_index",
                                     "error"})
RECEIVER_FAILING_TEMPLATE = TemplateConfig(
    title="Receiver {{ receiver }} is failing (urls[{{ url_index }}]: {{ url }})",
    body="The relay paused sending to {{ receiver }}'s urls[{{ url_index }}] ({{ url }}) after"
         " repeated failures and will probe it again; its other URLs are sent as usual."
         " Last error: {{ error }}",
    type="failure", format="text")
# A digest sees `events` (payloads in arrival order), `count`, `group`, `window`, `route`.
DIGEST_TITLE = (
    "{{ count }} {% if count == 1 %}event{% else %}events{% endif %}"
    "{% for name, value in group.items() %} {{ name }}={{ value }}{% endfor %}"
    " ({{ route }})"
)
DIGEST_BODY = (
    "{% for e in events %}- {{ e.delivery_id }}: "
    "{% if e.status %}{{ e.status | human_status }}{% else %}{{ e.event }}{% endif %}"
    " at {{ e.timestamp | localtime(fmt='%H:%M') }}\n{% endfor %}"
)
# A quiet-hours summary sees `notifications` (title, body, type, route, delivery_id,
# event_type, at), `count`, `receiver` and `quiet` (from, until).
SUMMARY_TITLE = ("{{ count }} {% if count == 1 %}notification{% else %}notifications{% endif %}"
                 " during quiet hours")
SUMMARY_BODY = "{% for n in notifications %}- {{ n.title }}\n{% endfor %}"
FAILED_STATUSES = frozenset({"failed", "returned", "lost", "exception", "undeliverable"})
# What stays of a notification when even the built-in template fails.
LAST_RESORT = Message("Kourier event", "A notification could not be rendered; see the relay's log.",
                      "warning", "text")
PLAIN = Escaping()
PLAIN_PAIR = (Escaping(single_line=True), PLAIN)

# The escaping of the field being rendered; read by `finalize` at render time.
_escaping: ContextVar[Escaping] = ContextVar("escaping", default=PLAIN)


def human_status(value: Any) -> str:
    """`in_transit` -> `In transit`."""
    text = str(value or "").replace("_", " ").replace("-", " ").strip()
    return text[:1].upper() + text[1:]


def localtime(value: Any, tz: str | None = None, fmt: str = "%Y-%m-%d %H:%M %Z") -> str:
    """An ISO timestamp shown in a time zone (the config's `timezone` by default)."""
    if not value:
        return ""
    try:
        moment = value if isinstance(value, datetime) else parse_timestamp(str(value))
        return moment.astimezone(ZoneInfo(tz or _default_tz.get())).strftime(fmt)
    except (ValueError, OverflowError, OSError, ZoneInfoNotFoundError):
        return str(value)


_default_tz: ContextVar[str] = ContextVar("default_tz", default="UTC")


def _finalize(value: Any) -> Any:
    if value is None or isinstance(value, jinja2.Undefined):
        return ""
    return _escaping.get().apply(str(value))


def _environment() -> sandbox.BoundedSandbox:
    env = sandbox.BoundedSandbox(undefined=jinja2.ChainableUndefined, finalize=_finalize,
                               autoescape=False, keep_trailing_newline=False)
    env.filters["human_status"] = human_status
    env.filters["localtime"] = localtime
    return env


ENV = _environment()


@dataclass(frozen=True)
class CompiledTemplate:
    title: jinja2.Template
    body: jinja2.Template
    type: str | None
    format: str
    fields: frozenset[str]


def default_type(event: Event) -> str:
    if event.type == "delivery.cancelled":
        return "warning"
    if event.status == "delivered":
        return "success"
    if event.status in FAILED_STATUSES:
        return "failure"
    return "info"


class Templates:
    """Every route's template, compiled once; `render()` never raises."""

    def __init__(self, compiled: Mapping[str, CompiledTemplate], timezone: str,
                 receiver_failing: CompiledTemplate | None = None,
                 summaries: Mapping[str, CompiledTemplate] | None = None,
                 digests: frozenset[str] = frozenset()) -> None:
        self.compiled = compiled
        self.digests = digests  # the routes with a `digest:` (their template renders one)
        self.timezone = timezone
        self.default = _BUILTIN
        self.receiver_failing = receiver_failing or _BUILTIN_NOTICE
        self.digest_default = _BUILTIN_DIGEST
        self.summary_default = _BUILTIN_SUMMARY
        self.summaries = summaries or {}  # receiver -> its quiet-hours summary template

    @classmethod
    def from_config(cls, config: Config) -> Templates:
        issues = [issue for t in (*config.templates.values(), *(r.template for r in config.routes))
                  for issue in template_issues(t, config.source)]
        compiled = {}
        for route in config.routes:
            base = config.templates.get(route.template_ref, TemplateConfig())
            try:
                compiled[route.name] = _compile_template(_merge(base, route.template),
                                                         digest=route.digest is not None)
            except jinja2.TemplateSyntaxError:  # already reported above, at its own key
                pass
        notice = _compile_notice(config, issues)
        if not known_zone(config.timezone):
            issues.append(config.source.issue(
                "timezone", unknown_zone(config.source, "timezone", config.timezone)))
        summaries = {}
        for rc in config.receivers.values():
            t = config.templates.get(rc.quiet_template) if rc.quiet_template else None
            if t is not None:
                try:
                    summaries[rc.name] = _compile_pair(t.title or SUMMARY_TITLE,
                                                       t.body or SUMMARY_BODY, t.type,
                                                       t.format or "text")
                except jinja2.TemplateSyntaxError:  # already reported above, at its own key
                    pass
        if issues:
            raise ConfigError(issues)
        return cls(compiled, config.timezone, notice, summaries,
                   frozenset(r.name for r in config.routes if r.digest is not None))

    def digest(self, route: str) -> CompiledTemplate:
        """What renders a closed window of `route`: its own template while it is a digest
        route; the built-in digest template once a reload removed the route or its
        `digest:` (its template now renders single events, not `events`)."""
        return self.compiled.get(route, self.digest_default) if route in self.digests \
            else self.digest_default

    def render(self, route: str | None, event: Event,
               escaping: tuple[Escaping, Escaping] = PLAIN_PAIR) -> Message:
        """Title and body for one channel; `escaping` is (title, body) from `escaping.for_channel`."""
        template = self.compiled.get(route or "", self.default)
        return self._safely(template, self.default, route, event, escaping)

    def render_receiver_failing(self, event: Event,
                                escaping: tuple[Escaping, Escaping] = PLAIN_PAIR) -> Message:
        """The failing-receiver notice (`templates.receiver_failing`, else the built-in)."""
        return self._safely(self.receiver_failing, _BUILTIN_NOTICE, RECEIVER_FAILING, event,
                            escaping)

    def render_context(self, template: CompiledTemplate, fallback: CompiledTemplate,
                       context: dict[str, Any], type_: str,
                       escaping: tuple[Escaping, Escaping] = PLAIN_PAIR) -> Message:
        """Timed work (a fired watch) rendered from its own context, `type_` unless the
        template sets one. Never raises: a failing template falls back to `fallback`,
        then to the last resort."""
        token_tz = _default_tz.set(self.timezone)
        try:
            for t in (template, fallback):
                try:
                    title = _with(escaping[0], t.title, context).strip()[:MAX_OUTPUT]
                    body = _with(escaping[1], t.body, context).strip()[:MAX_OUTPUT]
                    return _something(Message(title, body, t.type or type_, t.format))
                except Exception as e:  # a template bug must not lose the notification
                    log.warning("%s template failed (%s)%s",
                                "the" if t is template else "the built-in",
                                strip_controls(str(e), True),
                                "; using the built-in one" if t is template else "")
            return LAST_RESORT
        finally:
            _default_tz.reset(token_tz)

    def failure(self, route: str, event: Event) -> str:
        """Why the route's own template fails on `event` ("" when it renders): what `render`
        logs before it falls back to the built-in one. The `route` dry run shows it."""
        template = self.compiled.get(route)
        token_tz = _default_tz.set(self.timezone)
        try:
            if template is not None:
                self._render(template, _context(event), event, PLAIN_PAIR)
            return ""
        except Exception as e:
            return strip_controls(str(e), True)
        finally:
            _default_tz.reset(token_tz)

    def _safely(self, template: CompiledTemplate, fallback: CompiledTemplate, route: str | None,
                event: Event, escaping: tuple[Escaping, Escaping]) -> Message:
        context = _context(event)
        token_tz = _default_tz.set(self.timezone)
        try:
            return self._render(template, context, event, escaping)
        except Exception as e:  # a template bug must not lose the notification
            log.warning("template for route %s failed (%s); using the built-in one", route,
                        strip_controls(str(e), True))
            return self._fallback(fallback, context, event, escaping)
        finally:
            _default_tz.reset(token_tz)

    def _fallback(self, fallback: CompiledTemplate, context: dict[str, Any], event: Event,
                  escaping: tuple[Escaping, Escaping]) -> Message:
        try:
            return self._render(fallback, context, event, escaping)
        except Exception as e:  # nothing a payload holds may lose the notification
            log.error("the built-in template failed too (%s)", strip_controls(str(e), True))
            return LAST_RESORT

    def _render(self, t: CompiledTemplate, context: dict[str, Any], event: Event,
                escaping: tuple[Escaping, Escaping]) -> Message:
        title = _with(escaping[0], t.title, context).strip()[:MAX_OUTPUT]
        body = _with(escaping[1], t.body, context).strip()[:MAX_OUTPUT]
        return _something(Message(title, body, t.type or default_type(event), t.format))


class EmptyMessage(Exception):
    """Title and body both rendered empty: a template failure (no channel sends nothing)."""


def _something(rendered: Message) -> Message:
    if not rendered.title and not rendered.body:
        raise EmptyMessage("the title and the body both rendered empty")
    return rendered


def _context(event: Event) -> dict[str, Any]:
    """What an event's template sees: its fields, and all of them as `payload`."""
    return {**event.payload, "payload": event.payload}


def _with(escaping: Escaping, template: jinja2.Template, context: dict[str, Any]) -> str:
    token = _escaping.set(escaping)
    try:
        return sandbox.render(template, context)
    finally:
        _escaping.reset(token)


def _compile_notice(config: Config, issues: list[Issue]) -> CompiledTemplate | None:
    """`templates.receiver_failing`, each key the operator left out taken from the built-in."""
    own = config.templates.get(RECEIVER_FAILING)
    if own is None:
        return None
    try:
        return _compile_template(_merge(RECEIVER_FAILING_TEMPLATE, own))
    except jinja2.TemplateSyntaxError:  # reported by template_issues, at its own key
        return None


def _merge(base: TemplateConfig, override: TemplateConfig) -> TemplateConfig:
    values = {k: getattr(override, k) if getattr(override, k) is not None else getattr(base, k)
              for k in ("title", "body", "type", "format")}
    return TemplateConfig(**values, path=override.path)


def template_issues(t: TemplateConfig, source: Source) -> list[Issue]:
    """Each of a template's title and body that does not compile, at its own key and line."""
    out = []
    for key in ("title", "body"):
        text = getattr(t, key)
        problem = template_problem(text) if text is not None else None
        if problem:
            path = f"{t.path}.{key}"
            lineno, message = problem
            out.append(Issue(source.file, source.line_within(path, lineno), path, message))
    return out


@functools.lru_cache(maxsize=1024)
def template_problem(text: str) -> tuple[int, str] | None:
    """The first problem of a template text, as (its line in the text, message); None if none.

    Jinja2 reports an unknown filter or test only when the branch holding it runs
    (`{% if %}`), so every `Filter` and `Test` node is looked up here instead; so is
    each literal zone given to `localtime`, which would fall back silently.
    """
    try:
        ast = ENV.parse(text)
    except jinja2.TemplateSyntaxError as e:
        return e.lineno, f"template syntax error: {e.message}"
    for node in ast.find_all((nodes.Filter, nodes.Test)):
        kind, known = ("filter", ENV.filters) if isinstance(node, nodes.Filter) \
            else ("test", ENV.tests)
        if node.name not in known:
            close = difflib.get_close_matches(node.name, list(known), n=1, cutoff=0.6)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            return node.lineno, f'template error: unknown {kind} "{node.name}"{hint}'
    return localtime_problem(ast)


def _compile_template(t: TemplateConfig, digest: bool = False) -> CompiledTemplate:
    title, body = (DIGEST_TITLE, DIGEST_BODY) if digest else (DEFAULT_TITLE, DEFAULT_BODY)
    return _compile_pair(t.title if t.title is not None else title,
                         t.body if t.body is not None else body, t.type, t.format or "text")


def compile_pair(title: str, body: str, type_: str | None, fmt: str) -> CompiledTemplate:
    """A title and body compiled in the sandbox; raises jinja2.TemplateSyntaxError."""
    return _compile_pair(title, body, type_, fmt)


def _compile_pair(title: str, body: str, type_: str | None, fmt: str) -> CompiledTemplate:
    (title_t, title_fields), (body_t, body_fields) = _compiled(title), _compiled(body)
    return CompiledTemplate(title_t, body_t, type_, fmt, title_fields | body_fields)


@functools.lru_cache(maxsize=1024)
def _compiled(source: str) -> tuple[jinja2.Template, frozenset[str]]:
    """A template text compiled in the sandbox, with the payload fields it reads; raises
    jinja2.TemplateSyntaxError. Parsed once, and compiled once per process for each text
    (a Template is immutable and ENV never changes), so a reload, and every relay a
    process builds, compiles only the texts it has not seen."""
    ast = ENV.parse(source)
    fields = _fields(ast)
    return ENV.template_class.from_code(ENV, ENV.compile(sandbox.bounded(ast)),
                                        ENV.make_globals(None)), fields


def referenced_fields(source: str) -> frozenset[str]:
    """Top-level payload fields a template reads (`payload.x` counts as `x`)."""
    return _compiled(source)[1]


def _fields(ast: nodes.Template) -> frozenset[str]:
    names = set(meta.find_undeclared_variables(ast))
    for node in ast.find_all(nodes.Getattr):
        if isinstance(node.node, nodes.Name) and node.node.name == "payload":
            names.add(node.attr)
    names.discard("payload")
    return frozenset(names)


# The built-in templates, compiled at import (once per process, before a fork server forks).
_BUILTIN = _compile_pair(DEFAULT_TITLE, DEFAULT_BODY, None, "text")
_BUILTIN_DIGEST = _compile_pair(DIGEST_TITLE, DIGEST_BODY, None, "text")
_BUILTIN_SUMMARY = _compile_pair(SUMMARY_TITLE, SUMMARY_BODY, None, "text")
_BUILTIN_NOTICE = _compile_template(RECEIVER_FAILING_TEMPLATE)
