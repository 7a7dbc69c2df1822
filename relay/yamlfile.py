"""The config file as read: YAML nodes to plain values, `${ENV}` / `NAME_FILE` secrets, lines.

`Tree` records the line of every key path (for `Source`, which puts a
`file:line` on every issue) and the env variable behind each value, so that
nothing downstream needs the YAML nodes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import yaml

from relay import yamlsyntax
from relay.errors import ConfigError, Issue, Severity

_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class Source:
    """Where the config came from, and the line of every key path in it."""

    file: str
    lines: Mapping[str, int] = field(default_factory=dict, repr=False)
    # The line each scalar's text begins on: the key's line, or the next for `|` and `>`.
    starts: Mapping[str, int] = field(default_factory=dict, repr=False)
    # The environment variable a key path's value was made with (`${VAR}`): never shown.
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    # The key paths whose value was written in braces (`{a: 1}`, a flow mapping), and those
    # whose value was reported as the file was read (`{{ x }}` unquoted, a number too long
    # to read): nothing more is said about them.
    flow: frozenset[str] = frozenset()
    unread: frozenset[str] = frozenset()

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


MAX_BYTES = 16 * 1024 * 1024  # a config of 5,000 routes is about 1 MB
MAX_SECRET_BYTES = 64 * 1024  # a `NAME_FILE` (a token, a URL, a key)


def read_at_most(source: str | BinaryIO, limit: int) -> bytes | None:
    """What a file (a path, or an open binary stream) holds; None when that is more than
    `limit` bytes, read no further (a device such as /dev/zero never ends). Raises OSError."""
    if isinstance(source, str):
        with open(source, "rb") as f:
            return read_at_most(f, limit)
    data = source.read(limit + 1)
    return data if len(data) <= limit else None


def read(file: str) -> str:
    """The config file's text: UTF-8 whatever the locale says, or a ConfigError at its line.
    No more than MAX_BYTES: a device or a log named by mistake is refused, not read until
    memory runs out (`-c /dev/zero` never ended)."""
    try:
        data = read_at_most(file, MAX_BYTES)
    except OSError as e:
        raise ConfigError([Issue(file, 0, "", f"cannot read config: {e.strerror or e}")]) from None
    if data is None:
        raise ConfigError([Issue(file, 0, "", f"the file is larger than a config can be"
                                 f" ({MAX_BYTES // 2**20} MiB): is it the right file?")])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line_start = data.rfind(b"\n", 0, e.start) + 1
        column = len(data[line_start:e.start].decode("utf-8", "replace")) + 1
        raise ConfigError([Issue(file, data.count(b"\n", 0, e.start) + 1, "",
                                 f"the file is not UTF-8 text: byte 0x{data[e.start]:02x} at"
                                 f" column {column}: save it as UTF-8")]) from None


def compose(text: str, file: str) -> yaml.Node | None:
    """The node tree of a config text; a YAML error is a ConfigError, explained at its line.

    PyYAML's own parser, not libyaml's (CSafeLoader), though that is faster: the two
    disagree on what is a mistake (libyaml takes a tab after a colon), and yamlsyntax
    explains this one's words and marks."""
    try:
        return yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError([yaml_error(file, e, text)]) from None


MAX_DEPTH = 100  # levels of nesting; a config needs about six
MAX_REPEATS = 100_000  # values reached again through aliases (a billion-laughs file: 10**9)
_NESTED = f"nested more than {MAX_DEPTH} levels deep"
_LOOP = "an alias (*name) inside the value its anchor (&name) names: a value cannot contain itself"


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with a bound on nesting: its composer recurses once per level."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, _NESTED,
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1


def yaml_error(file: str, e: yaml.YAMLError, text: str) -> Issue:
    found = yamlsyntax.explain(e, text)
    return Issue(file, found.line, "", found.message)


_MERGE = "tag:yaml.org,2002:merge"
# A matcher's value: routes[i].match.<field>, watches[i].start.<field>, stop[j].<field> …
_MATCHER_VALUE = re.compile(r"\.(match|start|stop)(\[\d+\])?\.")


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return "a number" if node.tag.endswith((":int", ":float")) else "a string"


class Tree:
    """Turns a composed YAML node tree into plain values, recording lines and env issues."""

    def __init__(self, file: str, env: Mapping[str, str]) -> None:
        self.file = file
        self.env = env
        self.lines: dict[str, int] = {}
        self.starts: dict[str, int] = {}
        self.issues: list[Issue] = []
        self.warnings: list[Issue] = []
        self.env_refs: dict[str, str] = {}
        self.flow: set[str] = set()
        self.unread: set[str] = set()
        self._scalars = yaml.SafeLoader("")  # its constructor types a scalar as YAML does
        self._seen: set[int] = set()  # every node expanded so far (ids)
        self._open: set[int] = set()  # the nodes being expanded: an alias to one is a loop
        self._repeats = 0  # nodes expanded again, through aliases
        self._alias = ""  # the path of the outermost alias being expanded

    def source(self) -> Source:
        return Source(self.file, self.lines, self.starts, self.env_refs, frozenset(self.flow),
                      frozenset(self.unread))

    def value(self, node: yaml.Node, path: str, parent: str = "") -> Any:
        """The plain value of `node`; aliases are expanded, `<<` merge keys merged."""
        again = id(node) in self._seen  # reached again, through an alias
        # An alias's node carries its anchor's line; the alias itself is in its parent's.
        self.lines.setdefault(path, self.lines.get(parent, 1) if again
                              else node.start_mark.line + 1)
        if id(node) in self._open:
            self._stop(path, _LOOP)
        if len(self._open) >= MAX_DEPTH:
            self._stop(path, f"invalid YAML: {_NESTED}", key=False)
        if again:
            self._alias = self._alias or path
            self._count_repeat(self._alias, 1)
        self._seen.add(id(node))
        self._open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.value(n, f"{path}[{i}]", path) for i, n in enumerate(node.value)]
            if isinstance(node, yaml.MappingNode):
                if node.flow_style:
                    self.flow.add(path)
                    if any(isinstance(k, yaml.MappingNode) for k, _ in node.value):
                        return self._braces(node, path)
                return self._mapping(node, path)
            return self._scalar(node, path)
        finally:
            self._open.discard(id(node))
            if self._alias == path:
                self._alias = ""

    def _braces(self, node: yaml.MappingNode, path: str) -> str:
        """`title: {{ x }}`: unquoted, YAML reads a template as a mapping in a mapping. One
        issue says so; the value is the text as written, so nothing else complains about it."""
        self.unread.add(path)
        key = re.sub(r"^.*\.", "", path)
        example = f'{key}: "{{{{ ... }}}}"' if key and not key.endswith("]") else '"{{ ... }}"'
        if key == "template":
            why = ("template names a template from templates:, and unquoted {{ ... }} is read"
                   " by YAML as a mapping" + (": write an inline template as title: and body:"
                                              ' on the route, in quotes (body: "{{ ... }}")'
                                              if path.startswith("routes[") else ""))
        else:
            why = ('a value that starts with "{" must be in quotes: unquoted {{ ... }} is read'
                   f" by YAML as a mapping (write {example})")
        self.issues.append(Issue(self.file, self.lines.get(path, 1), path, why))
        return str(node.start_mark.buffer or "")[node.start_mark.index:node.end_mark.index]

    def _count_repeat(self, path: str, values: int) -> None:
        """Values reached again (through an alias or a merge) are counted: a bound, not a spin."""
        self._repeats += values
        if self._repeats > MAX_REPEATS:
            self._stop(path, f"the aliases (*name) here expand to more than {MAX_REPEATS}"
                       " values: write the values out, or use fewer aliases")

    def _stop(self, path: str, message: str, key: bool = True) -> None:
        line = self.lines.get(path, 1)
        raise ConfigError([Issue(self.file, line, path if key else "", message)])

    def _mapping(self, node: yaml.MappingNode, path: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        merged = self._merged(node, path)
        for key_node, value_node in merged:  # YAML 1.1 merge keys (`<<: *defaults`)
            key = str(key_node.value)
            if key not in out:  # the first mapping merged in wins
                out[key] = self.value(value_node, self._key(key_node, path, key))
        own: set[str] = set()
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.issues.append(Issue(self.file, key_node.start_mark.line + 1, path,
                                         f"a key must be a name, got {_kind(key_node)}"))
                continue
            key = str(key_node.value)
            first = self.lines.get(f"{path}.{key}" if path else key)
            sub = self._key(key_node, path, key)
            if key in own:  # YAML keeps the later one: what else is wrong may follow from it
                self.issues.append(Issue(self.file, self.lines[sub], sub,
                                         f"duplicate key: {key} is also at line {first}, and"
                                         " this one replaces it: keep one"))
            own.add(key)
            out[key] = self.value(value_node, sub)
        return out

    def _key(self, key_node: yaml.Node, path: str, key: str) -> str:
        sub = f"{path}.{key}" if path else key
        self.lines[sub] = key_node.start_mark.line + 1
        return sub

    def _merged(self, node: yaml.MappingNode, path: str, chain: frozenset[int] = frozenset(),
                ) -> list[tuple[yaml.Node, yaml.Node]]:
        """The key/value pairs that the mapping's `<<` keys bring in, in order of precedence:
        each merged mapping's own keys before what it merges in turn."""
        pairs: list[tuple[yaml.Node, yaml.Node]] = []
        chain = chain | {id(node)}
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE:
                continue
            sub = self._key(key_node, path, "<<")
            sources = value_node.value if isinstance(value_node, yaml.SequenceNode) \
                else [value_node]
            wrong = next((s for s in sources if not isinstance(s, yaml.MappingNode)), None)
            if wrong is not None:
                held = f"a list holding {_kind(wrong)}" if wrong is not value_node \
                    else _kind(wrong)
                self.issues.append(Issue(self.file, self.lines[sub], sub, "a merge key (<<)"
                                         " takes a mapping (<<: *name) or a list of mappings,"
                                         f" got {held}"))
                continue
            for source in sources:
                if id(source) in chain or id(source) in self._open:
                    self._stop(sub, _LOOP)
                self._count_repeat(sub, len(source.value))
                pairs += [(k, v) for k, v in source.value if k.tag != _MERGE]
                pairs += self._merged(source, path, chain)
        return pairs

    def _scalar(self, node: yaml.Node, path: str) -> Any:
        block = getattr(node, "style", None) in ("|", ">")  # its text starts on the next line
        self.starts[path] = node.start_mark.line + 1 + block
        try:
            scalar = self._scalars.construct_object(node, deep=True)
        except ValueError:  # Python reads no integer of more than 4,300 digits
            self.unread.add(path)
            self.issues.append(Issue(self.file, self.lines.get(path, 1), path, "a number of"
                                     f" {len(str(node.value))} digits, too long to read: write"
                                     " a number of sensible size"))
            return str(node.value)
        if isinstance(scalar, str) and getattr(node, "style", None) is None:  # plain
            self._comment_after(node, path)
        elif isinstance(scalar, (bool, int)) and _MATCHER_VALUE.search(path):
            self._read_as(str(node.value), scalar, path)
        if isinstance(scalar, str) and "$" in scalar:
            return self.interpolate(scalar, path, node.start_mark.line + 1)
        return scalar

    def _read_as(self, text: str, value: bool | int, path: str) -> None:
        """A matcher value YAML 1.1 reads as something else than its text: `country: NO` is
        false, `hub: 010` is 8; an event's "NO" or "010" never equals them."""
        if text.lower() in ("true", "false") or text == str(value) or len(text) > 12:
            return
        meant = str(value).lower() if isinstance(value, bool) else str(value)
        what = "boolean" if isinstance(value, bool) else "number"
        self.warnings.append(Issue(
            self.file, self.lines.get(path, 1), path, f"YAML reads {text} as {meant}: write"
            f' {meant} for the {what}, or "{text}" in quotes for the text', "warning"))

    def _comment_after(self, node: yaml.Node, path: str) -> None:
        """`title: Delivery #{{ delivery_id }}`: ` #` starts a comment, and the value ends
        before it; a comment holding template syntax was meant to be part of it."""
        rest = str(node.end_mark.buffer or "")[node.end_mark.index:].partition("\n")[0]
        if re.match(r"\s+#.*(\{\{|\{%)", rest):
            self.warnings.append(Issue(
                self.file, self.lines.get(path, 1), path, "a # after a space starts a YAML"
                " comment, so the value ends before it and the template after the # is left"
                " out: put the whole value in quotes", "warning"))

    def interpolate(self, text: str, path: str, line: int) -> str:
        def repl(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name, default = m.group(1), m.group(2)
            try:
                value = resolve_env(name, self.env)
            except ValueError as e:  # NAME_FILE is set but of no use
                self.issues.append(Issue(self.file, line, path, str(e)))
                return ""
            if value is None and default is None:
                self.issues.append(Issue(self.file, line, path,
                                         f"environment variable {name} is not set (nor {name}_FILE)"))
                return ""
            self.env_refs[path] = name
            return value if value not in (None, "") else (default or "")

        return _ENV_REF.sub(repl, text)


def as_scalar(text: str) -> Any:
    """What YAML makes of `text` written as a plain value, when that is a number or a boolean
    (`${N}` is text; a key that wants a number takes the number the text spells); else `text`."""
    try:
        value = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError):  # ValueError: an integer of more than 4,300 digits
        return text
    return value if isinstance(value, (bool, int, float)) else text


def resolve_env(name: str, env: Mapping[str, str]) -> str | None:
    """`NAME` from the environment, else the contents of the file named by `NAME_FILE`.

    Raises ValueError saying why when `NAME_FILE` names a file that cannot be used
    (never what the file holds)."""
    if name in env:
        return env[name]
    path = env.get(f"{name}_FILE")
    if not path:
        return None
    why = f"environment variable {name} is not set, and {name}_FILE names {path}, which"
    try:
        data = read_at_most(path, MAX_SECRET_BYTES)
    except OSError as e:
        raise ValueError(f"{why} cannot be read: {e.strerror or e}") from None
    if data is None:
        raise ValueError(f"{why} is larger than a secret can be ({MAX_SECRET_BYTES // 1024} KiB)")
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{why} is not UTF-8 text") from None
