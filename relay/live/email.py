"""Email threads: one thread per delivery through `In-Reply-To` / `References` headers.

Apprise sends the headers its email plugin was given (`+Header=value` URL
parameters; the relay adds these two to the plugin's own for one send),
written before its own `Message-ID`, so the relay never sets `Message-ID`
(the mail would carry two). Every mail of one delivery (and route and receiver URL)
refers to the same stable id; mail clients group mails that share a
reference (the id itself names no real mail), and Gmail also wants the same
subject, so a live route's email title should not change with the status.
"""

from __future__ import annotations

import hashlib

import apprise

DOMAIN = "kourier-relay.invalid"  # RFC 2606: a name that is never anyone's real domain


def is_email(url: str) -> bool:
    plugin = apprise.Apprise.instantiate(url)
    return type(plugin).__name__ == "NotifyEmail"


def thread_id(delivery_id: str, route: str, receiver: str, url_index: int) -> str:
    """A stable message id for one delivery's thread (the delivery id is not spelled out)."""
    digest = hashlib.sha256("\0".join([delivery_id, route, receiver, str(url_index)]).encode())
    return f"<live.{digest.hexdigest()[:32]}@{DOMAIN}>"


def thread_headers(thread: str) -> dict[str, str]:
    """The headers that put a mail in the thread (what `+In-Reply-To=…&+References=…` sets)."""
    return {"In-Reply-To": thread, "References": thread}
