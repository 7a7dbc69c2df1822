"""The HTTP call every live client makes, and how its answer becomes an `Outcome`.

Same rules as `relay.notify.classify`: 408/425/429 and 5xx are retried, other
4xx are permanent, a timeout waits at least a minute (the message may still
arrive), and the wait after a status is `relay.notify.wait_after` (a
`Retry-After` the platform gives, as a header or in its body, on 429 and 503;
at least a minute after a 429).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import requests

from relay.httptap import environment_for
from relay.logs import scrub
from relay.notify import (
    MIN_WAIT_AFTER_TIMEOUT,
    RETRYABLE_STATUS,
    SENT,
    Outcome,
    _retry_after,
    wait_after,
)

MAX_ANSWER = 1 << 20  # a platform's answer is a small JSON object; never read more


@dataclass(frozen=True)
class Answer:
    """A platform's answer: HTTP status (None when no answer came), parsed JSON, headers."""

    status: int | None
    body: Any = None
    retry_after: float | None = None
    error: str = ""  # transport error (redacted), when status is None
    timed_out: bool = False

    @property
    def fields(self) -> dict[str, Any]:
        """The JSON object answered; {} for anything else (no answer, a list, plain text)."""
        return self.body if isinstance(self.body, dict) else {}


class Api:
    """One platform endpoint: a shared aiohttp session, a timeout, and the secrets to hide."""

    def __init__(self, session: aiohttp.ClientSession, base: str, timeout: float,
                 secrets: Sequence[str] = ()) -> None:
        self.session = session
        self.base = base.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.secrets = tuple(s for s in secrets if s)
        # the proxy and CA bundle of the environment, as for Apprise's sends (relay.httptap)
        proxies, bundle, _netrc = environment_for(self.base)
        self.proxy = requests.utils.select_proxy(self.base, proxies)
        self.ssl: ssl.SSLContext | bool = True
        self.unusable = ""  # the CA bundle named cannot be read: every call says so
        if bundle and self.base.startswith("https:"):
            try:
                self.ssl = ssl.create_default_context(cafile=bundle)
            except (OSError, ssl.SSLError) as e:
                self.unusable = f"the CA bundle {bundle} cannot be used: {e}"

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return scrub(text)

    async def call(self, method: str, path: str, *, json: Any = None,
                   params: Mapping[str, str] | None = None,
                   headers: Mapping[str, str] | None = None) -> Answer:
        if self.unusable:
            return Answer(None, error=self.unusable)
        try:
            async with self.session.request(method, self.base + path, json=json, params=params,
                                            headers=headers, timeout=self.timeout,
                                            allow_redirects=False, proxy=self.proxy,
                                            ssl=self.ssl) as r:
                raw = await r.content.read(MAX_ANSWER)
                return Answer(r.status, _json(raw), _retry_after(r.headers.get("Retry-After"))
                              if "Retry-After" in r.headers else None)
        except TimeoutError:
            return Answer(None, error=f"timed out after {self.timeout.total:g}s", timed_out=True)
        except aiohttp.ClientError as e:
            # aiohttp's messages can hold the request URL, and so the token in its path
            return Answer(None, error=self.redact(f"{type(e).__name__}: {e}"))


def _json(raw: bytes) -> Any:
    import json

    try:
        return json.loads(raw)
    except ValueError:
        return None


def outcome_for(answer: Answer, error: str, retry_after: float | None = None) -> Outcome:
    """The outcome of a failed call: `error` is the platform's own reason (already redacted)."""
    if answer.status is None:
        return Outcome("retry", answer.error, MIN_WAIT_AFTER_TIMEOUT if answer.timed_out else 0.0)
    status = answer.status
    text = f"HTTP {status}: {error}"
    wait = wait_after(status, retry_after if retry_after is not None else answer.retry_after)
    if 400 <= status < 500 and status not in RETRYABLE_STATUS:
        return Outcome("failed", text, 0.0, status)
    return Outcome("retry", text, wait, status)  # also a 2xx with a body we cannot read, a 3xx


__all__ = ["SENT", "Answer", "Api", "outcome_for"]
