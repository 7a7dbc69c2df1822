"""`check`'s findings about fields and keys: what a matcher or a template reads that its
events (or a digest's, summary's or watch's objects) never have, and near misses of the
fields Kourier sends (`stauts`)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

from jinja2 import nodes

from relay.config import Config, TemplateConfig, did_you_mean
from relay.digests import WINDOW_FIELDS
from relay.errors import Issue
from relay.events import DOCUMENTED_FIELDS
from relay.lookups import Known, Unknown, unknown_keys
from relay.summaries import NOTIFICATION_FIELDS, QUIET_FIELDS
from relay.templating import ENV, RECEIVER_FAILING, RECEIVER_FAILING_FIELDS, referenced_fields
from relay.watches import FIELDS as WATCH_FIELDS
from relay.watches import stop_key

KOURIER = "Kourier does not document"  # it may send more: KOURIER.md, "may add fields"
EXTRA = "deliveries.extra_fields"
ADVICE = f" (name the fields your events carry in {EXTRA})"


def payload_fields(config: Config) -> frozenset[str]:
    """The top-level fields an event is expected to carry: Kourier's documented ones and
    those the operator names in `deliveries.extra_fields`."""
    return DOCUMENTED_FIELDS | frozenset(config.deliveries.extra_fields)


def _expected(config: Config) -> str:
    """`(it documents …; deliveries.extra_fields names …)`, what a payload-field warning says."""
    extra = sorted(frozenset(config.deliveries.extra_fields) - DOCUMENTED_FIELDS)
    names = f"; {EXTRA} names {', '.join(extra)}" if extra else ""
    return f"(it documents {', '.join(sorted(DOCUMENTED_FIELDS))}{names})"


def matcher_sets(config: Config) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Each matcher set as (the key path of its `event`, the set)."""
    yield from ((f"{r.path}.match.event", r.match) for r in config.routes)
    for w in config.watches:
        yield f"{w.path}.start.event", w.start
        yield from ((f"{w.path}.{stop_key(w, i)}.event", s) for i, s in enumerate(w.stop))


# How close a name must be to a field Kourier sends to be taken for a misspelling of it:
# `stauts` (0.83), `dleivery_id`, `timestmap`, but not `state` (0.73) or `status_code`
# (0.71), which may well be fields an event carries.
FIELD_CUTOFF = 0.8


def misspelt_fields(config: Config) -> list[Issue]:
    """A matcher on a field Kourier does not document whose name is close to one it does: it sees
    the field missing in every event, and nothing says so (`stauts: failed`)."""
    fields = payload_fields(config)
    return [config.source.issue(path.removesuffix(".event") + f".{key}",
                                f"matches on {key}, which {KOURIER} {_expected(config)}: this"
                                f" matcher finds no such field unless an event carries it{hint}",
                                "warning")
            for path, spec in matcher_sets(config) for key in spec
            if key.split(".")[0] not in fields
            and (hint := did_you_mean(key.split(".")[0], dict.fromkeys(fields), FIELD_CUTOFF))]


# What a digest's and a quiet-hours summary's templates see besides payload fields.
DIGEST_NAMES = frozenset({"events", "count", "group", "window", "route"})
SUMMARY_NAMES = frozenset({"notifications", "count", "receiver", "quiet"})


def undocumented(config: Config) -> list[Issue]:
    return [issue for (_, path, known, never, also), key, source
            in _texts(_templates(config))
            for issue in _fields_issue(config, key, source, known, never, also)]


S = TypeVar("S", bound=tuple[Any, ...])


def _texts(templates: list[S]) -> Iterator[tuple[S, str, str]]:
    """Each (template, path, ...) entry's title and body, as (entry, key path, text); a
    named template that several routes use is read once."""
    seen: set[str] = set()
    for entry in templates:
        template, path = entry[0], entry[1]
        for key in ("title", "body"):
            source = getattr(template, key)
            if source is not None and f"{path}.{key}" not in seen:
                seen.add(f"{path}.{key}")
                yield entry, f"{path}.{key}", source


Seen = tuple[TemplateConfig, str, frozenset[str], str, frozenset[str]]
BATCH = {"digest": (DIGEST_NAMES, "a digest template never has"),
         "summary": (SUMMARY_NAMES, "a quiet-hours summary template never has")}


def _batch_names(config: Config) -> tuple[dict[str, set[str]], set[str]]:
    """The named templates only batches render: each a digest route uses (no plain route),
    with what those routes group by; and each a receiver's quiet hours sum up with."""
    by_plain = {r.template_ref for r in config.routes if not r.digest}
    group_by: dict[str, set[str]] = {}
    for r in config.routes:
        if r.digest and r.template_ref and r.template_ref not in by_plain:
            group_by.setdefault(r.template_ref, set()).update(r.digest.group_by)
    return group_by, {rc.quiet_template for rc in config.receivers.values() if rc.quiet_template}


def _templates(config: Config) -> list[Seen]:
    """Each template with what it sees: (template, path, names, what is missing, extra names)."""
    digests, summaries = _batch_names(config)
    kinds = dict.fromkeys(digests, "digest") | dict.fromkeys(summaries, "summary")
    notice = config.templates.get(RECEIVER_FAILING)
    fields = payload_fields(config)
    out: list[Seen] = []
    for name, t in config.templates.items():
        if t is notice:
            out.append((t, t.path, RECEIVER_FAILING_FIELDS,
                        "the receiver_failing notice never carries", frozenset()))
        elif name in kinds:
            out.append((t, t.path, *BATCH[kinds[name]], frozenset()))
        else:
            out.append((t, t.path, fields, KOURIER, frozenset()))
    out += [(r.template, r.path, *BATCH["digest"], frozenset()) if r.digest
            else (r.template, r.path, fields, KOURIER, frozenset())
            for r in config.routes]
    # A watch sees the arming event's fields and what a watch adds.
    out += [(w.template, w.path, fields, KOURIER, WATCH_FIELDS)
            for w in config.watches]
    return out


def _fields_issue(config: Config, path: str, source: str, known: frozenset[str],
                  never: str, also: frozenset[str] = frozenset()) -> list[Issue]:
    extra = sorted(referenced_fields(source) - known - also)
    if not extra:
        return []
    names = ", ".join(extra)
    sent = ", ".join(sorted(known))
    if never in (BATCH["digest"][1], BATCH["summary"][1]):
        items = "events" if never == BATCH["digest"][1] else "notifications"
        return [config.source.issue(path, f"uses {names}, which {never} (it has {sent});"
                                          f" renders empty: each item is in {items}",
                                    "warning")]
    has = _expected(config) if never == KOURIER else f"(it has {sent})"
    computed = [name for name in extra if name in _computed_with(source)]
    if not computed:
        hint = _near_misses(extra, known) if never == KOURIER else ""
        return [config.source.issue(path, f"uses {names}, which {never} {has};"
                                          " renders empty unless an event carries it"
                                          f"{hint or (ADVICE if never == KOURIER else '')}",
                                    "warning")]
    plain = [name for name in extra if name not in computed]
    fails = (f"{', '.join(plain)} renders empty and " if plain else "") + \
        f"{', '.join(computed)} fails the template, which computes with it (the built-in one" \
        " is used)"
    return [config.source.issue(path, f"uses {names}, which {never} {has}; unless an"
                                      f" event carries it, {fails}", "warning")]


def _near_misses(names: list[str], fields: frozenset[str]) -> str:
    """` (did you mean "status"?)` for names close to fields events carry (`stauts`)."""
    close = [(n, difflib.get_close_matches(n, fields, 1, FIELD_CUTOFF)) for n in names]
    hints = [f'"{c[0]}"' + ("" if len(names) == 1 else f" for {n}") for n, c in close if c]
    return f" (did you mean {', '.join(hints)}?)" if hints else ""


_ARITHMETIC = (nodes.BinExpr, nodes.UnaryExpr)  # `weight / 1000`, `-weight`: undefined fails


def _computed_with(source: str) -> set[str]:
    """The names a template does arithmetic on directly (`weight / 1000`): where an event
    lacks one, rendering fails instead of printing nothing."""
    return {operand.name for node in ENV.parse(source).find_all(_ARITHMETIC)
            for operand in node.iter_child_nodes() if isinstance(operand, nodes.Name)}


# What the relay itself puts in a digest's `window` and `group` and a summary's `quiet` and
# each of its `notifications`. A digest's `events` are payloads, which may carry any field
# (docs/less-noise.md): their keys are not checked. A watch's `last` is the delivery's
# newest event: its keys are warned about as a top-level field Kourier does not document is.
LAST = "the delivery's newest event"
SUMMARY_KEYS = ({"quiet": Known("a quiet-hours summary's quiet", QUIET_FIELDS)},
                {"notifications": Known("a notification of a quiet-hours summary",
                                        NOTIFICATION_FIELDS)})


def batch_keys(config: Config) -> list[Issue]:
    """Keys a digest's, summary's or watch's template reads that its objects never have."""
    return [_key_issue(config, key, u)
            for (_, _, (objects, lists)), key, source in _texts(_batch_templates(config))
            for u in unknown_keys(source, objects, lists)]


Scopes = tuple[dict[str, Known], dict[str, Known]]


def _batch_templates(config: Config) -> list[tuple[TemplateConfig, str, Scopes]]:
    """Each digest or summary template, with the objects (and lists) it sees."""
    group_by, summaries = _batch_names(config)
    out = [(t, t.path, SUMMARY_KEYS if name in summaries else _digest_keys(group_by[name]))
           for name, t in config.templates.items() if name in summaries or name in group_by]
    return out + [(r.template, r.path, _digest_keys(r.digest.group_by))
                  for r in config.routes if r.digest] \
        + [(w.template, w.path, ({"last": Known(LAST, payload_fields(config))}, {}))
           for w in config.watches]


def _digest_keys(group_by: Iterable[str]) -> Scopes:
    return ({"window": Known("a digest's window", WINDOW_FIELDS),
             "group": Known("this digest's group (its group_by)", frozenset(group_by))}, {})


def _key_issue(config: Config, path: str, u: Unknown) -> Issue:
    has = ", ".join(sorted(u.known.keys)) or "no keys"
    hint = did_you_mean(u.key, dict.fromkeys(u.known.keys))
    what = f"{KOURIER} {_expected(config)}; renders empty unless an event carries it" \
        if u.known.owner == LAST else f"{u.known.owner} never has (it has {has}); renders empty"
    advice = ADVICE if u.known.owner == LAST and not hint else ""
    return Issue(config.source.file, config.source.line_within(path, u.line), path,
                 f"uses {u.expression}, which {what}{hint}{advice}", "warning")
