"""Logging set-up: plain `key=value` lines or JSON lines, with fields passed as `extra`."""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import time
from typing import Any

# The URL ends before a `:`, `,`, `;` or `.` that ends it in the sentence ("cannot open
# postgresql://u@db/x: …" keeps its colon).
_URL = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]{1,20})://(?!\*\*\*)[^\s'\"<>()]+?"
                  r"(?=[:,;.]?(?:[\s'\"<>()]|$))")
# A field's value is cut here (a traceback is not): a 64 KB delivery id, logged with the
# event and with each of its sends, would otherwise fill the log many times over.
FIELD_MAX = 500


def scrub(text: str) -> str:
    """Mask anything that looks like a URL: Apprise URLs carry secrets."""
    return _URL.sub(lambda m: f"{m.group(1)}://***", text)


def fields(**values: Any) -> dict[str, Any]:
    """`log.info("accepted", extra=fields(event_id=3))`."""
    return {"fields": {k: v for k, v in values.items() if v is not None}}


class TextFormatter(logging.Formatter):
    """`STAMP LEVEL logger message key=value …`, one line per record whatever it holds.

    The message and every value are written bare only when they are plain
    printable ASCII without quotes, backslashes or `=`; anything else is a
    JSON string (ASCII-only, so newlines, CR, NBSP, U+2028 and control
    characters are escapes, not bytes). A traceback is a quoted `exception`
    field. `parse_text_line` reads a line back.
    """

    # The last record's second and its stamp, as one tuple (threads share the formatter):
    # most records fall in the same second as the one before.
    _stamped: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        stamped = self._stamped
        if stamped[0] != second:
            stamped = self._stamped = (second, time.strftime("%Y-%m-%dT%H:%M:%S",
                                                             time.gmtime(second)))
        stamp = stamped[1]
        pairs = "".join(f" {_key(k)}={_quote(v, _BARE_VALUE, FIELD_MAX)}"
                        for k, v in getattr(record, "fields", {}).items())
        if record.exc_info:
            pairs += f" exception={_quote(self.formatException(record.exc_info), _BARE_VALUE)}"
        message = _quote(record.getMessage(), _BARE_MESSAGE)
        return f"{stamp}Z {record.levelname:<7} {_key(record.name)} {message}{pairs}"


def parse_text_line(line: str) -> tuple[str, str, str, str, dict[str, str]]:
    """(stamp, level, logger, message, fields) of one TextFormatter line."""
    stamp, level, name, rest = line.split(" ", 1)[0], *line.split(None, 3)[1:]
    if rest.startswith('"'):
        message, end = _DECODER.raw_decode(rest)
        rest = rest[end:].lstrip(" ")
    else:
        cut = rest.rfind(" ", 0, rest.index("=")) if "=" in rest else len(rest)
        message, rest = rest[:cut], rest[cut + 1:]
    found: dict[str, str] = {}
    while rest:
        key, _, rest = rest.partition("=")
        if rest.startswith('"'):
            found[key], end = _DECODER.raw_decode(rest)
            rest = rest[end:].lstrip(" ")
        else:
            found[key], _, rest = rest.partition(" ")
    return stamp, level, name, message, found


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            k: _json_value(v) for k, v in getattr(record, "fields", {}).items()}
        out.update({
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": scrub(record.getMessage()),
        })
        if record.exc_info:
            out["exception"] = scrub(self.formatException(record.exc_info))
        # ASCII-only: U+2028/U+2029 and lone surrogates are escapes, never raw bytes.
        return json.dumps(out, default=str, ensure_ascii=True, allow_nan=False)


_DECODER = json.JSONDecoder()
_BARE_VALUE = re.compile(r'[!#-<>-\[\]-~]+')  # printable ASCII but space, " = and backslash
_BARE_MESSAGE = re.compile(r'[!#-<>-\[\]-~](?:[ !#-<>-\[\]-~]*[!#-<>-\[\]-~])?')
_UNSAFE_KEY = re.compile(r"[^A-Za-z0-9_.-]")


def _key(name: str) -> str:
    return _UNSAFE_KEY.sub("_", name) or "_"


def bounded(text: str, limit: int = FIELD_MAX) -> str:
    """`text`, or its first `limit` characters and how many more there were."""
    return text if len(text) <= limit else f"{text[:limit]}[+{len(text) - limit} chars]"


def _quote(value: Any, bare: re.Pattern[str], limit: int = 0) -> str:
    if type(value) is int:
        return str(value)
    text = str(value)
    if "://" in text:  # scrub() masks only what has a scheme
        text = scrub(text)
    if limit and len(text) > limit:
        text = bounded(text, limit)
    return text if bare.fullmatch(text) else json.dumps(text, ensure_ascii=True)


def _json_value(value: Any) -> Any:
    if isinstance(value, str):
        return bounded(scrub(value))
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return bounded(scrub(str(value)))


def setup(level: str = "info", fmt: str = "text") -> None:
    # Neither format shows where a call was made or which thread or process made it:
    # skip collecting them for every record (the logging HOWTO's "Optimization";
    # the caller's frame walk alone was a tenth of an accepted event's log line).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Apprise's DEBUG/INFO lines print full webhook URLs, so never below WARNING. Not
    # higher either: its per-send capture (the failure text kept in attempt errors)
    # hangs off this logger, and a level above WARNING silences it. Its lines do not
    # reach our output: the worker logs each outcome, redacted, itself.
    apprise_log = logging.getLogger("apprise")
    apprise_log.setLevel(logging.WARNING)
    apprise_log.propagate = False
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # urllib3's DEBUG lines quote each request line ("POST /services/T0/B0/… HTTP/1.1"):
    # a webhook's path and query are its secret, and scrub() masks only what has a scheme.
    logging.getLogger("urllib3").setLevel(logging.INFO)
