"""Apprise wrapper: cached plugin objects per URL, `send() -> Outcome`, redaction, `console://`.

- Apprise's own retry and its hidden per-plugin throttle are switched off on
  every object; the worker owns retries and rate limits.
- A cached Apprise object is not safe for concurrent sends (stateful plugins
  such as Matrix), so each URL has a small pool of objects and a thread
  borrows one object for one send.
- The HTTP status and `Retry-After` of the last response a send received are
  read from `requests` (`relay.httptap`, installed by the composition root),
  because Apprise reports them only as text, if at all.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import re
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Protocol

import apprise
from apprise.common import NotifyFormat
from apprise.conversion import convert_between

from relay.config import BODY_FORMATS, Config, ReceiverConfig, shown
from relay.errors import Issue
from relay.escaping import Channel
from relay.httptap import reread_environment, response_tap
from relay.logs import scrub

if TYPE_CHECKING:  # an annotation only: a send process does not load the store
    from relay.store.records import AttemptOutcome

log = logging.getLogger(__name__)
RETRYABLE_STATUS = frozenset({408, 425, 429})
# Permanent refusals that are about the receiver, not the message: its credentials were
# revoked or its webhook deleted, so every notification to it will fail the same way.
RECEIVER_FAULT_STATUS = frozenset({401, 403, 404, 410})
CONSOLE_LOCK = threading.Lock()


@apprise.decorators.notify(on="console", name="Console")
def _console(body: str, title: str, notify_type: str, meta: dict[str, Any], *args: Any,
             **kwargs: Any) -> bool:
    """The built-in receiver: print the alert, so the example works with no account."""
    stream = sys.stderr if meta.get("host") == "stderr" else sys.stdout
    with CONSOLE_LOCK:
        stream.write(f"\n=== [{notify_type.upper()}] {title}\n{body}\n")
        stream.flush()
    return True


@dataclass(frozen=True)
class Outcome:
    """What an attempt gave: sent, retry (not before `min_delay`) or failed (permanent)."""

    kind: AttemptOutcome
    error: str = ""
    min_delay: float = 0.0
    status: int | None = None
    # Not tried: the live message is being updated by another sender. The job waits
    # `min_delay` and is not counted as an attempt, nor as a failure of the receiver.
    postponed: bool = False
    live: str = ""  # what a live send did (post, edit, repost, skip), for the log line

    @property
    def sent(self) -> bool:
        return self.kind == "sent"


SENT = Outcome("sent")
EMPTY_MESSAGE = "the message rendered empty (title and body): nothing to send"


def nothing_to_send(title: str, body: str) -> Outcome | None:
    """A permanent failure for a message with neither title nor body, else None.

    Apprise refuses it, so every attempt would fail alike; it is the message's fault, not
    the receiver's (no status: it does not count towards the circuit). Templates no longer
    render one (an empty render falls back to the built-in template); a job stored by an
    earlier version, or built by hand, may still be one.
    """
    return None if title or body else Outcome("failed", EMPTY_MESSAGE)


class Sender(Protocol):
    """What an Apprise send goes through: this process (`Notifier`) or the send processes
    (`relay.sendpool.SendPool`). Never raises for a failed send."""

    async def send(self, receiver: str, index: int, title: str, body: str, notify_type: str,
                   body_format: str, headers: Mapping[str, str] | None = None) -> Outcome: ...

# service_timeout=0: the send runs on our own (bounded) send thread instead of
# hopping to Apprise's process-wide pool; our attempt timeout bounds it instead.
_ASSET = apprise.AppriseAsset(service_timeout=0)


def redact(url: str) -> str:
    """Never show an Apprise URL: only its scheme survives."""
    scheme = url.split("://", 1)[0] if "://" in url else "?"
    return f"{scheme}://***"


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def check_urls(config: Config) -> list[Issue]:
    """Every URL must be accepted by an Apprise plugin; `retry=` is ours to own."""
    issues = []
    for rc in config.receivers.values():
        for i, url in enumerate(rc.urls):
            path = f"{rc.path}.urls[{i}]"
            if not url.strip():
                name = config.env_refs.get(path)
                issues.append(config.source.issue(path, "the URL is empty" + (
                    f": the environment variable {name} is set but empty" if name else "")))
            elif "://" not in url:  # `?://***` told the operator nothing
                named = f" ({shown(url)} is a receiver's name: urls takes the URLs themselves)" \
                    if url in config.receivers else ""
                issues.append(config.source.issue(path, "not an Apprise URL: it has no"
                                                  " scheme:// (such as slack://, mailto://,"
                                                  f" json://){named}"))
            elif (plugin := apprise.Apprise.instantiate(url)) is None:
                issues.append(config.source.issue(path, _refused(url)))
            elif _out_of_range(port := getattr(plugin, "port", None)):
                issues.append(config.source.issue(
                    path, f"the port {port} of this URL ({redact(url)}) is out of range:"
                          " it must be 1-65535"))
            elif re.search(r"[?&]retry=", url):
                issues.append(config.source.issue(
                    path, "remove Apprise's retry= parameter: the relay owns retries"
                          " (it is forced to 0)", "warning"))
    return issues


# scheme://[userinfo@]host:port, the port being what follows the host's last colon
_AUTHORITY = re.compile(r"^(?P<head>[^:/?#]+://(?:[^/?#]*@)?(?:\[[^\]/]*\]|[^:/?#@]*))"
                        r":(?P<port>[^:/?#@]*)(?P<tail>[/?#].*)?$", re.DOTALL)


def _out_of_range(port: object) -> bool:
    return isinstance(port, int) and not isinstance(port, bool) and not 1 <= port <= 65535


def _refused(url: str) -> str:
    """Why no plugin accepts `url`: its port when the same URL without it is accepted
    (Apprise refuses `host:abc`, and some plugins `host:99999`), never the port's text,
    which might be a token where a plugin has no port."""
    m = _AUTHORITY.match(url)
    if m and apprise.Apprise.instantiate(m["head"] + (m["tail"] or "")) is not None:
        return f"no Apprise plugin accepts this URL ({redact(url)}): its port must be a" \
               " number 1-65535"
    return f"no Apprise plugin accepts this URL ({redact(url)}); check its scheme and" \
           " required parts"


def _resolves(plugin: Any) -> tuple[tuple[str, str], ...]:
    """What each template format becomes at this plugin (markdown -> html for email)."""
    out = []
    for fmt in BODY_FORMATS:
        try:
            resolved = plugin.resolve_format(fmt)
            out.append((fmt, str(getattr(resolved, "value", resolved))))
        except Exception:  # an unknown plugin shape: assume it keeps the format
            out.append((fmt, fmt))
    return tuple(out)


def converted(body: str, template_format: str, channel: Channel) -> str | None:
    """The body as Apprise converts it for this channel (markdown -> HTML for email), or
    None when it is sent as written."""
    target = channel.renders_as(template_format)
    if target == template_format:
        return None
    return str(convert_between(NotifyFormat(template_format), NotifyFormat(target), body))


class Notifier:
    """Sends rendered notifications to the receivers of one config."""

    def __init__(self, receivers: Mapping[str, ReceiverConfig], executor: Executor,
                 attempt_timeout: float) -> None:
        self.receivers = receivers
        self.executor = executor
        self.attempt_timeout = attempt_timeout
        reread_environment()  # proxies, CA bundle, netrc: as the environment is now
        self._pools: dict[tuple[str, int], queue.SimpleQueue[apprise.Apprise]] = {}
        self._channels = {name: [self._channel(url) for url in rc.urls]
                          for name, rc in receivers.items()}

    def _channel(self, url: str) -> Channel:
        plugin = apprise.Apprise.instantiate(url)
        body_max = getattr(plugin, "body_maxlen", 0) or 0
        title_max = getattr(plugin, "title_maxlen", 0) or 0
        blended = title_max <= 0  # Apprise converts a title's format only then
        if body_max and (blended or getattr(plugin, "overflow_amalgamate_title", False)):
            # Apprise sends "title\r\nbody" as one text here (SMS, Discord content), so
            # both share body_max: reserve a bounded title and the line break.
            title_max = min(title_max or body_max, body_max // 4)
            body_max -= title_max + 2
        return Channel(scheme_of(url), redact(url), body_max, title_max, _resolves(plugin),
                       blended)

    def channels(self) -> dict[str, list[Channel]]:
        return self._channels

    def _borrow(self, receiver: str, index: int) -> apprise.Apprise | None:
        pool = self._pools.setdefault((receiver, index), queue.SimpleQueue())
        try:
            return pool.get_nowait()
        except queue.Empty:
            return self._build(self.receivers[receiver].urls[index])

    def _build(self, url: str) -> apprise.Apprise | None:
        plugin = apprise.Apprise.instantiate(url, asset=_ASSET)
        if plugin is None:
            return None
        plugin.request_rate_per_sec = 0  # Apprise's hidden throttle: the relay rate-limits
        plugin.retry = 0
        plugin.socket_read_timeout = self.attempt_timeout
        plugin.socket_connect_timeout = min(self.attempt_timeout, 10.0)
        obj = apprise.Apprise(asset=_ASSET)
        obj.add(plugin)
        return obj

    def url(self, receiver: str, index: int) -> str | None:
        """The receiver's URL #index in this config, if it still has one."""
        rc = self.receivers.get(receiver)
        return rc.urls[index] if rc is not None and index < len(rc.urls) else None

    async def send(self, receiver: str, index: int, title: str, body: str, notify_type: str,
                   body_format: str, headers: Mapping[str, str] | None = None) -> Outcome:
        """Send in the bounded pool; a send that outlives the attempt timeout is a retry.

        `headers` are added to this send's own (an email's thread headers).
        """
        if (gone := self.gone(receiver, index)) is not None:
            return gone
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.executor, self.send_blocking, receiver, index, title,
                                      body, notify_type, body_format, headers)
        try:
            return await asyncio.wait_for(future, self.attempt_timeout + 1.0)
        except TimeoutError:
            return Outcome("retry", f"timed out after {self.attempt_timeout:g}s",
                           MIN_WAIT_AFTER_TIMEOUT)

    def gone(self, receiver: str, index: int) -> Outcome | None:
        """The outcome for a job whose receiver URL left the config, else None."""
        if self.url(receiver, index) is None:
            return Outcome("failed", f"receiver {receiver!r} (URL #{index}) is no longer"
                                     " in the config")
        return None

    def send_blocking(self, receiver: str, index: int, title: str, body: str, notify_type: str,
                      body_format: str, headers: Mapping[str, str] | None = None) -> Outcome:
        """One send on the calling thread (a send thread, here or in a send process)."""
        if (refused := self.gone(receiver, index) or nothing_to_send(title, body)) is not None:
            return refused
        obj = self._borrow(receiver, index)
        if obj is None:
            return Outcome("failed", "no Apprise plugin accepts this URL")
        lines: list[str] = []
        box: dict[str, Any] = {}
        token = response_tap.set(box)
        try:
            with _headers(obj, headers):  # Apprise refuses an empty body: the title says it
                result = obj.notify(body=body or title, title=title, notify_type=notify_type,
                                    body_format=body_format, log_level=logging.WARNING,
                                    log_callback=lambda entry, _svc: _keep(lines, entry))
            if box.get("reason"):
                lines.append(f"the service said: {box['reason']}")
            if box.get("timeout") and not result:
                return Outcome("retry", f"timed out after {self.attempt_timeout:g}s",
                               MIN_WAIT_AFTER_TIMEOUT)
            return classify(result, lines, box.get("status"), box.get("retry_after"))
        except Exception as e:  # a plugin bug is one failed attempt, not a dead worker
            return Outcome("retry", scrub(f"{type(e).__name__}: {e}"))
        finally:
            response_tap.reset(token)
            self._pools[(receiver, index)].put(obj)


@contextmanager
def _headers(obj: apprise.Apprise, headers: Mapping[str, str] | None) -> Iterator[None]:
    """For one send of a borrowed object, these headers beside the plugin's own `+Header=`
    ones (an email's thread headers); the object goes back to its pool as it was."""
    plugin: Any = obj[0]
    if not headers or not isinstance(getattr(plugin, "headers", None), dict):
        yield
        return
    own = plugin.headers
    plugin.headers = {**own, **headers}
    try:
        yield
    finally:
        plugin.headers = own


MIN_WAIT_AFTER_TIMEOUT = 60.0
_PROBLEM_LEVELS = frozenset({"WARNING", "ERROR", "CRITICAL"})


def _keep(lines: list[str], entry: Any) -> None:
    """Keep Apprise's problem lines ("…, error=500."), not its chatter."""
    if str(getattr(entry, "level", "")).upper() in _PROBLEM_LEVELS:
        lines.append(entry.message)


def classify(result: Any, lines: list[str], status: int | None, retry_after: str | None,
             ) -> Outcome:
    """Turn Apprise's per-target result (plus the HTTP status seen) into an Outcome."""
    if bool(result):
        return SENT
    error = scrub("; ".join(dict.fromkeys(lines)) or "send failed")
    statuses = [getattr(s, "status", None) for s in result]
    if any(getattr(s, "name", "") == "TIMEOUT" for s in statuses):
        return Outcome("retry", error or "timed out", MIN_WAIT_AFTER_TIMEOUT)
    if status is None:
        match = re.search(r"error=(\d{3})", error)
        status = int(match.group(1)) if match else None
    if status is None:
        timeout = "timed out" in error.lower() or "timeout" in error.lower()
        return Outcome("retry", error, MIN_WAIT_AFTER_TIMEOUT if timeout else 0.0)
    error = f"HTTP {status}: {error}"
    wait = wait_after(status, _retry_after(retry_after))
    if status in RETRYABLE_STATUS or status >= 500:
        return Outcome("retry", error, wait, status)
    if 400 <= status < 500:
        return Outcome("failed", error, 0.0, status)
    return Outcome("retry", error, wait, status)  # e.g. 200 with a body the plugin rejected


def wait_after(status: int, retry_after: float | None) -> float:
    """The least wait before retrying after `status`, for every sender (Apprise and live).

    `Retry-After` (or a platform's own retry_after) counts on 429 and 503; after a
    429 the wait is at least a minute whatever it says, as a timeout's is.
    """
    wait = (retry_after or 0.0) if status in (429, 503) else 0.0
    return max(wait, MIN_WAIT_AFTER_TIMEOUT) if status == 429 else wait


def _retry_after(value: str | None) -> float:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date)."""
    if not value:
        return 0.0
    if value.strip().isdigit():
        return float(value.strip())
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return 0.0
