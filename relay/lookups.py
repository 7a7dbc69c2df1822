"""The keys a template looks up on the objects it is given: `quiet.until`, or `n.title`
in `{% for n in notifications %}`. Read from the Jinja2 AST; pure.

Only a plain name followed by `.key` or `["key"]` counts. What a filter returns
(`(quiet | default({})).x`), a loop over a filtered list, a computed key
(`quiet[k]`) and the methods a mapping answers itself (`group.items()`) are
left alone: what they reach is not known before rendering.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from jinja2 import meta, nodes

from relay.templating import ENV

# A mapping's own attributes (`items`, `get`, …): Jinja2 finds them before any key.
_MAPPING_ATTRS = frozenset(dir(dict))


@dataclass(frozen=True)
class Known:
    """What an object holds: `keys`, and how a finding names it (`owner`)."""

    owner: str
    keys: frozenset[str]


@dataclass(frozen=True)
class Unknown:
    """A key looked up on a known object that the object never has."""

    expression: str  # as written: `quiet.since`, `n["bogus"]`
    key: str
    line: int  # of the template text, from 1
    known: Known


def unknown_keys(source: str, objects: Mapping[str, Known],
                 lists: Mapping[str, Known]) -> list[Unknown]:
    """Lookups of keys `objects` never have, and of keys the items of `lists` never have
    on a loop variable over one of them, in template order. Raises TemplateSyntaxError."""
    ast = ENV.parse(source)
    free = meta.find_undeclared_variables(ast)
    scope = {name: known for name, known in objects.items() if name in free}
    items = {name: known for name, known in lists.items() if name in free}
    return sorted(_visit(ast, scope, items), key=lambda u: u.line)


def _visit(node: nodes.Node, scope: dict[str, Known], items: dict[str, Known],
           ) -> Iterator[Unknown]:
    if isinstance(node, nodes.For):
        yield from _visit(node.iter, scope, items)
        bound = {n.name for n in node.target.find_all(nodes.Name)}
        inner = {k: v for k, v in scope.items() if k not in bound}
        inner_items = {k: v for k, v in items.items() if k not in bound}
        if isinstance(node.target, nodes.Name) and isinstance(node.iter, nodes.Name) \
                and node.iter.name in items:
            inner[node.target.name] = items[node.iter.name]
        for child in [*node.body, *([node.test] if node.test else [])]:
            yield from _visit(child, inner, inner_items)
        for child in node.else_:
            yield from _visit(child, scope, items)
        return
    found = _lookup(node, scope)
    if found:
        yield found
    for child in node.iter_child_nodes():
        yield from _visit(child, scope, items)


def _lookup(node: nodes.Node, scope: dict[str, Known]) -> Unknown | None:
    if isinstance(node, nodes.Getattr) and node.attr not in _MAPPING_ATTRS:
        target, key, shown = node.node, node.attr, f".{node.attr}"
    elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) \
            and isinstance(node.arg.value, str):
        target, key, shown = node.node, node.arg.value, f"[{node.arg.value!r}]"
    else:
        return None
    if not isinstance(target, nodes.Name) or target.name not in scope:
        return None
    known = scope[target.name]
    if key in known.keys:
        return None
    return Unknown(f"{target.name}{shown}", key, node.lineno, known)
