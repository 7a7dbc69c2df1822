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
from typing import Literal

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
    # (a start past the last line is the end of the file: it says nothing)
    where = f" that starts on line {e.start}" \
        if e.start and e.start != reported and e.start <= len(e.lines) else ""
    return f"{e.problem}, {e.context}{where}"


Rule = Callable[[_Error], "tuple[int, str] | None"]


@dataclass(frozen=True)
class _Clue:
    """A mistake that PyYAML's words give away (`found`), the line to fix and what to say.
    The line is where PyYAML gave up (`line`) or where the construct it was reading
    began (`start`: a clue at the start does not apply when PyYAML does not say)."""

    found: Callable[[_Error], bool]
    at: Literal["line", "start"]
    words: str


def _unclosed(bracket: str, close: str) -> str:
    return (f"unclosed {bracket}: the {bracket} on this line needs a matching {close}, or a"
            " comma is missing between its items")


_CLUES = (
    _Clue(lambda e: "'\\t'" in e.problem, "line",
          "a tab character: YAML indents with spaces only"),
    _Clue(lambda e: "quoted scalar" in e.context, "start",
          "unclosed quote: the string that starts on this line never ends"),
    _Clue(lambda e: "flow sequence" in e.context, "start", _unclosed("[", "]")),
    _Clue(lambda e: "flow mapping" in e.context, "start", _unclosed("{", "}")),
    _Clue(lambda e: e.problem == "but found another document", "line",
          "a second document: the config is one YAML document, and this --- starts another:"
          " remove that line, so that what follows is part of the first"),
    _Clue(lambda e: e.problem.startswith("expected <block end>"), "line",
          "inconsistent indentation: this line is indented differently from the keys or list"
          " items above it"),
    _Clue(lambda e: "could not find expected ':'" in e.problem, "start",
          "missing colon: a key on this line needs a ':' after it"),
)


def _clues(e: _Error) -> tuple[int, str] | None:
    for clue in _CLUES:
        line = e.line if clue.at == "line" else e.start
        if line and clue.found(e):
            return line, clue.words
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


def _open_at_end(e: _Error) -> tuple[int, str] | None:
    """A [ or { still open when the file ends: PyYAML gives up past the last line, and its
    marks say nothing of where the bracket is."""
    if not (e.problem.endswith("found '<stream end>'") and "flow node" in e.context):
        return None
    opened = _open_brackets(e.lines)
    if not opened:
        return None
    line, bracket = opened[0]  # the outermost: closing it is the fix
    return line, _unclosed(bracket, "]" if bracket == "[" else "}")


def _open_brackets(lines: list[str]) -> list[tuple[int, str]]:
    """The [ and { left open at the end, as (line, bracket), outermost first; quoted text
    and comments are skipped (a quote starts a value only after a space, [, {, : or ,)."""
    stack: list[tuple[int, str]] = []
    for n, text in enumerate(lines, 1):
        quote = ""
        for i, c in enumerate(text):
            before = text[i - 1] if i else " "
            if quote:
                if c == quote and not (quote == '"' and before == "\\"):
                    quote = ""
            elif c in "'\"" and (before.isspace() or before in "[{:,"):
                quote = c
            elif c == "#" and before.isspace():
                break
            elif c in "[{":
                stack.append((n, c))
            elif c in "]}" and stack and stack[-1][1] == {"]": "[", "}": "{"}[c]:
                stack.pop()
    return stack


# `key: {{ x }} and more`, `key: "a" b`: a value that starts with a bracket or a quote
# ends where it closes; what follows on the line is not indentation gone wrong.
_OPENS_VALUE = re.compile(r"""^\s*(?:-\s+)?[^\s:#'"][^:#]*:\s+(["'{\[])""")


def _text_after_value(e: _Error) -> tuple[int, str] | None:
    if not e.problem.startswith("expected <block end>"):
        return None
    opened = _OPENS_VALUE.match(e.text(e.line))
    if not opened or e.column <= opened.start(1):
        return None
    first = opened.group(1)
    other = "single" if first == '"' else "double"
    fix = {"{": 'put the whole value in quotes: "{{ x }} and more"',
           "[": "put the whole value in quotes, or all of it in the [ ]"}.get(
        first, f"put the whole value in {other} quotes")
    close = {"{": "}", "[": "]"}.get(first, "quote")
    return e.line, (f"text after a value that starts with {first}: YAML ends the value at its"
                    f" closing {close}; {fix}")


# The clues first, in their order; then what needs a look at the lines around.
_RULES: tuple[Rule, ...] = (_text_after_value, _clues, _mapping_values, _open_at_end)
