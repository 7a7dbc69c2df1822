"""Jinja2's sandbox, bounded in what a template may build and print.

Jinja2's sandbox stops attribute escapes but bounds neither output nor work:
`'-' * 10**9` was folded into the compiled
template when the config loaded, so `check` itself ran for seconds and took
gigabytes; `10 ** 3000000` was computed there too (and then failed to print, a
traceback); a nested loop printed for ever at every event; `lipsum(10**6)` built
450 MB; a nested loop that printed nothing ran for hours, holding the event
loop. Here products and powers are checked when they run (an intercepted
operator is never folded at compile time), output is read only up to
`MAX_OUTPUT` characters, every `{% for %}` of a render shares `MAX_TURNS`
turns (`bounded` puts each loop's iterable through a counting filter), and
`lipsum` is not offered.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

MAX_OUTPUT = 16_384  # characters a title or body may print
MAX_EXPONENT = 1_000  # an int power beyond this is a number no message needs
MAX_TURNS = 1_000_000  # loop turns one render may take, all its loops together (a summary
# of the whole backlog, max_backlog 100,000, fits ten times over)
TURNS = "relay_loop_turns"  # the filter `bounded` wraps every loop's iterable in


class BoundedSandbox(SandboxedEnvironment):
    """The sandbox with `*` and `**` bounded: a raise there falls back like any template error."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.globals.pop("lipsum", None)
        self.filters[TURNS] = _counted

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any,
                   right: Any) -> Any:
        if operator == "*":
            _repeat(left, right)
            _repeat(right, left)
        elif _int(left) and _int(right) and abs(left) > 1 and right > MAX_EXPONENT:
            raise SecurityError(f"a power above {MAX_EXPONENT} ({left} ** {right})")
        return super().call_binop(context, operator, left, right)


def _int(v: Any) -> bool:
    return isinstance(v, int)


def _repeat(seq: Any, times: Any) -> None:
    if isinstance(seq, (str, list, tuple)) and _int(times) and len(seq) * times > MAX_OUTPUT:
        raise SecurityError(f"a repetition of {len(seq) * times} items; at most {MAX_OUTPUT}")


def bounded(ast: nodes.Template) -> nodes.Template:
    """`ast` with every loop's iterable counted against the render's MAX_TURNS (compile
    the result; `_counted` raises past the bound, and the template falls back)."""
    for loop in ast.find_all(nodes.For):
        loop.iter = nodes.Filter(loop.iter, TURNS, [], [], None, None, lineno=loop.lineno)
    return ast


class _Turns:
    def __init__(self) -> None:
        self.left = MAX_TURNS


_turns: ContextVar[_Turns | None] = ContextVar("turns", default=None)


def _counted(iterable: Iterable[Any]) -> Iterator[Any]:
    turns = _turns.get()
    for item in iterable:
        if turns is not None:
            turns.left -= 1
            if turns.left < 0:
                raise SecurityError(f"loops past {MAX_TURNS} turns in one render")
        yield item


def render(template: jinja2.Template, context: dict[str, Any]) -> str:
    """What `template` prints, read only until it has printed MAX_OUTPUT characters, its
    loops taking at most MAX_TURNS turns."""
    chunks, size = [], 0
    token = _turns.set(_Turns())
    try:
        for chunk in template.generate(context):  # left unfinished, the generator is closed
            chunks.append(chunk)
            size += len(chunk)
            if size >= MAX_OUTPUT:
                break
    finally:
        _turns.reset(token)
    return "".join(chunks)
