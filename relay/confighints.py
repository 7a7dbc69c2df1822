"""What a config value or key should have looked like: the hints `schema.Checker` adds to
its messages, chosen by the key, the kind of value written and how it was written."""

from __future__ import annotations

import re
from typing import Any

from relay.yamlfile import Source

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?", re.IGNORECASE)
_BOOLEAN_WORDS = {"true", "false", "yes", "no", "on", "off"}


def quotes_hint(kind: type | tuple[type, ...], v: Any) -> str:
    """What to change when quotes (or their absence) made the value the wrong kind."""
    if kind is str and isinstance(v, (bool, int, float)):
        return " (put it in quotes)"
    if kind is int and isinstance(v, float):
        return " (a whole number)"
    if not isinstance(v, str):
        return ""
    if kind is bool and v.strip().lower() in _BOOLEAN_WORDS:
        return " (write true or false, without quotes)"
    if kind in (int, (int, float)) and _NUMBER.fullmatch(v.strip()):
        return " (write the number in plain digits, without quotes: YAML reads 1e3 or" \
            ' "5" as text)'
    return ""


def mapping_hint(source: Source, path: str) -> str:
    """Why a mapping came where a string belongs: what was written says which mistake."""
    if path.endswith(".template"):  # an inline template, written under `template:`
        inline = "; an inline template is title: and body: on the route itself" \
            if path.startswith("routes[") else ""
        return f" (template names a template from templates:{inline})"
    if path in source.flow:  # `title: {x}`: braces make a mapping
        return ' (a value that starts with "{" must be in quotes)'
    return " (the key: value lines indented under it make a mapping: write the text" \
        " itself, after the colon or as a | block)"


# What a value of the wrong shape should have looked like, by key and the kind written.
_MATCHER_LINES = ' (matchers are key: value lines of one mapping: drop the "- ")'
SHAPE_HINTS: dict[tuple[str, type], str] = {
    ("match", str): " (matchers, e.g. match: {event: delivery.cancelled})",
    ("start", str): " (matchers, e.g. start: {event: delivery.created})",
    ("match", list): _MATCHER_LINES, ("start", list): _MATCHER_LINES,
    ("digest", str): " (e.g. digest: {window: 10m, group_by: [hub]})",
    ("windows", dict): ' (a list: put "- " before each window, or [ ] around it)',
    ("receivers", dict): ' (a list: put "- " before each receiver\'s name:)',
    ("routes", dict): ' (a list: put "- " before each route)',
    ("watches", dict): ' (a list: put "- " before each watch)',
    ("schedule", str): " (a list, e.g. schedule: [0, 30s, 5m, 1h])",
    ("retry", list): " (the delays go under schedule: retry: {schedule: [0, 30s, 5m]})",
    ("quiet_hours", list): " (the windows go under windows:, beside timezone: quiet_hours:"
                           " {timezone: Europe/Berlin, windows: [...]})",
    ("max_body_bytes", str): " (a number of bytes, e.g. 65536 for 64 KiB)",
    ("default_receiver", list): " (one receiver's name: a route can name several)",
    ("fallback_receiver", list): " (one receiver's name)",
    ("store", str): " (store: takes url: and more, e.g. store: {url: sqlite:relay.db})",
}
# Keys of a section that are another word for one of its own (difflib cannot tell).
KEY_ALIASES = {"quiet_window": {"until": "to", "untill": "to", "till": "to", "end": "to",
                                "start": "from", "since": "from", "day": "days"}}
# What to write instead of a key that a section does not take, but a similar one does.
KEY_HINTS = {("watch", "template"): " (a watch names no template from templates: write its"
                                    " title: and body: on the watch itself)"}
# What a section written as one string should have been (`- pager` for a receiver).
SECTION_HINTS = {
    "template": ' (a template is title: and body: lines, e.g. {title: "...", body: "..."})',
    "receiver": ' (a receiver is name: and urls: lines, e.g. {name: ops, urls: ["..."]})',
    "route": " (a route is receivers: and match: lines, e.g. {match: {event: ...},"
             " receivers: [ops]})",
    "watch": " (a watch is name:, start:, after: and receivers: lines)",
}
