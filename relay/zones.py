"""The time zones a template names: each literal zone given to `localtime`, checked at load.

The filter itself falls back to the raw timestamp when its zone is unknown (a
notification must not be lost to a typo), so a misspelt zone would only show
as an unconverted time in a sent message; here it is an error with its line.
A zone computed at render time (`localtime(zone)`) cannot be known here.
"""

from __future__ import annotations

from collections.abc import Iterator

from jinja2 import nodes

from relay.noiseconfig import known_zone, zone_hint

FILTER = "localtime"


def localtime_problem(ast: nodes.Template) -> tuple[int, str] | None:
    """The first literal zone of a `localtime` filter that is not a known zone, as (its line
    in the template, message); None if every literal zone is known."""
    for node in ast.find_all(nodes.Filter):
        if node.name != FILTER:
            continue
        for zone in _literal_zones(node):
            if not isinstance(zone, str):
                return node.lineno, (f"template error: localtime's time zone must be a name"
                                     f" such as 'Europe/Berlin', got {zone!r}")
            if not known_zone(zone):
                return node.lineno, f"template error: unknown time zone {zone!r} in localtime" \
                                    + zone_hint(zone)
    return None


def _literal_zones(node: nodes.Filter) -> Iterator[object]:
    """The zone argument (first positional, or `tz=`) when it is a constant; none and ''
    mean the config's `timezone`."""
    given = [*node.args[:1], *(k.value for k in node.kwargs if k.key == "tz")]
    for arg in given:
        if isinstance(arg, nodes.Const) and arg.value not in (None, ""):
            yield arg.value
