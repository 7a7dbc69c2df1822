"""The config file as read: YAML nodes to plain values, `${ENV}` / `NAME_FILE` secrets, lines.

`Tree` records the line of every key path (for `Source`, which puts a
`file:line` on every issue) and the env variable behind each value, so that
nothing downstream needs the YAML nodes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def compose(text: str, file: str) -> yaml.Node | None:
    """The node tree of a config text; a YAML error is a ConfigError, explained at its line.

    PyYAML's own parser, not libyaml's (CSafeLoader), though that is faster: the two
    disagree on what is a mistake (libyaml takes a tab after a colon), and yamlsyntax
    explains this one's words and marks."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise ConfigError([yaml_error(file, e, text)]) from None


def yaml_error(file: str, e: yaml.YAMLError, text: str) -> Issue:
    found = yamlsyntax.explain(e, text)
    return Issue(file, found.line, "", found.message)


class Tree:
    """Turns a composed YAML node tree into plain values, recording lines and env issues."""

    def __init__(self, file: str, env: Mapping[str, str]) -> None:
        self.file = file
        self.env = env
        self.lines: dict[str, int] = {}
        self.starts: dict[str, int] = {}
        self.issues: list[Issue] = []
        self.env_refs: dict[str, str] = {}
        self._scalars = yaml.SafeLoader("")  # its constructor types a scalar as YAML does

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
        scalar = self._scalars.construct_object(node, deep=True)
        if isinstance(scalar, str) and "$" in scalar:
            return self.interpolate(scalar, path, node.start_mark.line + 1)
        return scalar

    def interpolate(self, text: str, path: str, line: int) -> str:
        def repl(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name, default = m.group(1), m.group(2)
            try:
                value = resolve_env(name, self.env)
            except ValueError as e:  # a secret file named but unreadable: never the default
                self.issues.append(Issue(self.file, line, path, str(e)))
                return ""
            if value is None and default is None:
                self.issues.append(Issue(self.file, line, path,
                                         f"environment variable {name} is not set (nor {name}_FILE)"))
                return ""
            self.env_refs[path] = name
            return value if value not in (None, "") else (default or "")

        return _ENV_REF.sub(repl, text)


def resolve_env(name: str, env: Mapping[str, str]) -> str | None:
    """`NAME` from the environment, else the contents of the file named by `NAME_FILE`.

    Raises ValueError when `NAME_FILE` is set but its file cannot be read as text: a
    mis-mounted secret must stop the relay, not leave it on a `${NAME:-default}`.
    """
    if name in env:
        return env[name]
    path = env.get(f"{name}_FILE")
    if not path:
        return None
    try:
        return Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as e:  # the decode error would quote the secret's bytes
        why = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else e.strerror or str(e)
        raise ValueError(f"{name} is not set and {name}_FILE names a file that cannot be read"
                         f" ({path}: {why})") from None
