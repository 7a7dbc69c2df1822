"""Logging set-up: plain `key=value` lines or JSON lines, with fields passed as `extra`."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

_URL = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]{1,20})://(?!\*\*\*)[^\s'\"<>()]+")


def scrub(text: str) -> str:
    """Mask anything that looks like a URL: Apprise URLs carry secrets."""
    return _URL.sub(lambda m: f"{m.group(1)}://***", text)


def fields(**values: Any) -> dict[str, Any]:
    """`log.info("accepted", extra=fields(event_id=3))`."""
    return {"fields": {k: v for k, v in values.items() if v is not None}}


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        extra = getattr(record, "fields", {})
        pairs = " ".join(f"{k}={_quote(v)}" for k, v in extra.items())
        line = f"{stamp}Z {record.levelname:<7} {record.name} {scrub(record.getMessage())}"
        line = f"{line} {pairs}" if pairs else line
        if record.exc_info:
            line += "\n" + scrub(self.formatException(record.exc_info))
        return line


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": scrub(record.getMessage()),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            out["exception"] = scrub(self.formatException(record.exc_info))
        return json.dumps(out, default=str)


def _quote(value: Any) -> str:
    text = scrub(str(value))
    return json.dumps(text) if (" " in text or not text) else text


def setup(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Apprise's DEBUG/INFO lines print full webhook URLs; we log outcomes ourselves.
    logging.getLogger("apprise").setLevel(logging.CRITICAL)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
