"""Jinja2's sandbox, bounded in what a template may build and print.

Jinja2's sandbox stops attribute escapes but bounds neither output nor work:
`'-' * 10**9` was folded into the compiled
template when the config loaded, so `check` itself ran for seconds and took
gigabytes; `10 ** 3000000` was computed there too (and then failed to print, a
traceback); a nested loop printed for ever at every event; `lipsum(10**6)` built
450 MB. Here products and powers are checked when they run (an intercepted
operator is never folded at compile time), output is read only up to
`MAX_OUTPUT` characters, and `lipsum` is not offered.
"""

from __future__ import annotations

from typing import Any

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

MAX_OUTPUT = 16_384  # characters a title or body may print
MAX_EXPONENT = 1_000  # an int power beyond this is a number no message needs


class BoundedSandbox(SandboxedEnvironment):
    """The sandbox with `*` and `**` bounded: a raise there falls back like any template error."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.globals.pop("lipsum", None)

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


def render(template: jinja2.Template, context: dict[str, Any]) -> str:
    """What `template` prints, read only until it has printed MAX_OUTPUT characters."""
    chunks, size = [], 0
    for chunk in template.generate(context):  # left unfinished, the generator is closed
        chunks.append(chunk)
        size += len(chunk)
        if size >= MAX_OUTPUT:
            break
    return "".join(chunks)
