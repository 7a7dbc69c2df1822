"""How our Apprise sends use `requests`: a status tap, kept-alive sessions, the environment once.

Installed process-wide by the composition root only (`serve`, a send process:
`install_requests_tap()`); importing this module, as `check` and `route` do
through `notify`, changes nothing. Outside one of our sends (`response_tap` unset),
`requests` behaves as usual.

- The tap: the HTTP status, `Retry-After` and the service's own reason of the last
  response a send received, because Apprise reports them only as text, if at all.
- Apprise's HTTP plugins call `requests.post()`, which builds a new Session and
  opens a new connection per send (≈ 9 % of a send's CPU plus a TCP/TLS
  handshake). Inside our sends, one Session per send thread keeps connections
  alive instead; cookies are cleared so no receiver sees another's.
- What `requests` takes from the environment (proxies and `NO_PROXY`, the CA bundle
  of `REQUESTS_CA_BUNDLE` / `CURL_CA_BUNDLE`, `~/.netrc` or `$NETRC` credentials)
  still applies, as `requests` would apply it, but is read once per receiver origin
  and config load (`reread_environment()`): per request, `requests` scans the whole
  environment twice and looks for a netrc file, 1.2 million instructions of a
  json:// send's 6.9 (bench/cost.py).
"""

from __future__ import annotations

import functools
import json
import os
import threading
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlsplit

import requests

from relay.escaping import strip_controls
from relay.logs import scrub

# The last HTTP response `requests` saw during one of our sends. A context
# variable, not a thread-local: Apprise may run the plugin on its own pool, but
# it copies the caller's context there.
response_tap: ContextVar[dict[str, Any] | None] = ContextVar("response_tap", default=None)
_original_send = requests.Session.send
_original_request = requests.api.request
_sessions = threading.local()
REASON_MAX = 300
_REASON_KEYS = ("error_description", "description", "message", "error", "detail", "reason")


def install_requests_tap() -> None:
    """Patch `requests` for our sends (status tap, kept-alive sessions); idempotent.

    Process-wide, so only the composition root calls it (`serve`, a send process).
    """
    requests.Session.send = _tapped_send  # type: ignore[method-assign]
    # Plugins call `requests.request` or `requests.post` (which calls `requests.api.request`).
    requests.api.request = requests.request = _pooled_request  # type: ignore[assignment]


def _tapped_send(self: requests.Session, request: Any, **kwargs: Any) -> Any:
    box = response_tap.get()
    try:
        response = _original_send(self, request, **kwargs)
    except requests.Timeout:
        if box is not None:  # Apprise reports this as a mere "connection error"
            box["timeout"] = True
        raise
    if box is not None:
        box["status"] = response.status_code
        box["retry_after"] = response.headers.get("Retry-After")
        box["reason"] = service_reason(response) if response.status_code >= 400 else ""
    return response


def service_reason(response: Any) -> str:
    """What a failing service said about why (Apprise logs the body only at DEBUG).

    Bounded, one line, control characters removed and URLs masked: a body may echo
    the request, so it is treated like any other text that may carry a secret.
    """
    try:
        text = response.content[:4096].decode("utf-8", "replace")
    except Exception:  # a streamed or odd body: the status says enough
        return ""
    try:
        data = json.loads(text)
        if isinstance(data, dict):
            text = next((str(data[k]) for k in _REASON_KEYS if data.get(k)), text)
    except ValueError:
        pass
    return scrub(strip_controls(text, single_line=True)).strip()[:REASON_MAX]


def _pooled_request(method: str, url: str, **kwargs: Any) -> Any:
    if response_tap.get() is None:  # not one of our sends: requests as usual
        return _original_request(method, url, **kwargs)
    session = getattr(_sessions, "session", None)
    if session is None:
        session = _sessions.session = _Session()
    session.cookies.clear()
    proxies, bundle, netrc = environment_for(url)
    # requests' own precedence (Session.merge_environment_settings, prepare_request):
    # what the caller passes wins over the environment
    if proxies:
        kwargs["proxies"] = {**proxies, **(kwargs.get("proxies") or {})}
    if bundle and kwargs.get("verify") in (True, None):
        kwargs["verify"] = bundle
    if netrc is not None and not kwargs.get("auth"):
        kwargs["auth"] = netrc
    return session.request(method=method, url=url, **kwargs)


class _Session(requests.Session):
    """A Session that reads the environment through `environment_for()`, not per request."""

    def __init__(self) -> None:
        super().__init__()
        self.trust_env = False

    def rebuild_proxies(self, prepared_request: Any, proxies: Any) -> Any:
        # A redirect to another host: its own proxy, as `requests` looks it up again; the
        # proxies already chosen win, as they do there (`resolve_proxies`' setdefault).
        proxies = {**environment_for(prepared_request.url)[0], **(proxies or {})}
        return super().rebuild_proxies(prepared_request, proxies)


def environment_for(url: str) -> tuple[dict[str, str], str | None, Any]:
    """The proxies, CA bundle and netrc credentials `requests` would use for this URL."""
    parts = urlsplit(url)
    return _environment(parts.scheme, parts.netloc.rpartition("@")[2])


@functools.lru_cache(maxsize=256)
def _environment(scheme: str, host: str) -> tuple[dict[str, str], str | None, Any]:
    url = f"{scheme}://{host}/"  # read once per origin and config load
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    return requests.utils.get_environ_proxies(url), bundle, requests.utils.get_netrc_auth(url)


def reread_environment() -> None:
    """A config load (start-up, reload): read the environment again at the next send."""
    _environment.cache_clear()
