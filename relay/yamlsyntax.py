"""PyYAML's syntax errors in plain words, at the line where the mistake is.

PyYAML reports where its parser gave up (`expected <block end>, but found
'<block mapping start>'`), which is often a line or more after the mistake:
an unclosed quote is found at the end of the file. Each rule below names the
mistake an operator made and the line to fix; PyYAML's own words follow in
parentheses for anyone who wants them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import yaml


@dataclass(frozen=True)
class Syntax:
    line: int  # 1-based
    message: str


@dataclass(frozen=True)
class _Error:
    problem: str
    context: str
    line: int  # where PyYAML gave up
    column: int
    start: int  # where the construct it was reading began (0 when unknown)
    lines: list[str]

    def text(self, line: int) -> str:
        return self.lines[line - 1] if 0 < line <= len(self.lines) else ""


def explain(e: yaml.YAMLError, text: str) -> Syntax:
    if isinstance(e, yaml.reader.ReaderError):  # no marks: a position in the text
        line = text.count("\n", 0, max(e.position, 0)) + 1
        return Syntax(line, f"invalid YAML: a control character (U+{e.character:04X}) that YAML"
                            " does not allow: remove it")
    problem_mark = getattr(e, "problem_mark", None)
    context_mark = getattr(e, "context_mark", None)
    mark = problem_mark or context_mark
    problem = str(getattr(e, "problem", None) or e)
    if problem.startswith("found undefined alias"):
        return Syntax(mark.line + 1 if mark else 1,
                      "invalid YAML: a value that starts with * names an anchor (&name) that is"
                      " not defined: put the value in quotes (PyYAML: found undefined alias)")
    error = _Error(
        problem=problem, context=str(getattr(e, "context", None) or ""),
        line=mark.line + 1 if mark else 1, column=mark.column if mark else 0,
        start=context_mark.line + 1 if context_mark else 0, lines=text.splitlines())
    for rule in _RULES:
        found = rule(error)
        if found:
            line, words = found
            return Syntax(line, f"invalid YAML: {words} (PyYAML: {_detail(error, line)})")
    return Syntax(error.line, f"invalid YAML: {_detail(error, error.line)}")


def _detail(e: _Error, reported: int) -> str:
    """PyYAML's own words, with the line its context started on when not the one reported."""
    if not e.context:
        return e.problem
    where = f" that starts on line {e.start}" if e.start and e.start != reported else ""
    return f"{e.problem}, {e.context}{where}"


Rule = Callable[[_Error], "tuple[int, str] | None"]


def _tab(e: _Error) -> tuple[int, str] | None:
    if "'\\t'" in e.problem:
        return e.line, "a tab character: YAML indents with spaces only"
    return None


def _unclosed_quote(e: _Error) -> tuple[int, str] | None:
    if "quoted scalar" in e.context and e.start:
        return e.start, "unclosed quote: the string that starts on this line never ends"
    return None


def _unclosed_flow(e: _Error) -> tuple[int, str] | None:
    for kind, bracket, close in (("flow sequence", "[", "]"), ("flow mapping", "{", "}")):
        if kind in e.context and e.start:
            return e.start, (f"unclosed {bracket}: the {bracket} on this line needs a matching"
                             f" {close}, or a comma is missing between its items")
    return None


def _second_document(e: _Error) -> tuple[int, str] | None:
    if e.problem == "but found another document":
        return e.line, ("a second document: the config is one YAML document, and this --- starts"
                        " another: remove that line, so that what follows is part of the first")
    return None


def _block_end(e: _Error) -> tuple[int, str] | None:
    if e.problem.startswith("expected <block end>"):
        return e.line, ("inconsistent indentation: this line is indented differently from the"
                        " keys or list items above it")
    return None


def _simple_key(e: _Error) -> tuple[int, str] | None:
    if "could not find expected ':'" in e.problem and e.start:
        return e.start, "missing colon: a key on this line needs a ':' after it"
    return None


_BARE = re.compile(r"^\s*[^\s:#\-][^:#]*$")  # a line with a word and no colon: a key lacking one


def _mapping_values(e: _Error) -> tuple[int, str] | None:
    if e.problem != "mapping values are not allowed here":
        return None
    previous = next((n for n in range(e.line - 1, 0, -1)
                     if e.text(n).strip() and not e.text(n).lstrip().startswith("#")), 0)
    if previous and _BARE.match(e.text(previous)):
        return previous, "missing colon: a key on this line needs a ':' after it"
    here = e.text(e.line)
    first = here.find(": ")
    if 0 <= first < e.column:
        return e.line, "a colon followed by a space inside a value: put the value in quotes"
    return e.line, ("inconsistent indentation: this line is indented deeper than the key"
                    " above it, which already has a value")



_RULES: tuple[Rule, ...] = (_tab, _unclosed_quote, _unclosed_flow, _second_document, _block_end,
                            _simple_key, _mapping_values)
