"""aiohttp app factory: the webhook, health and metrics; the admin API (relay.admin) and
the status page (relay.ui) mount on it.

Every error answer has the shape `{"error": ..., "details": ...}`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from aiohttp import HttpVersion11, hdrs, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from relay import dispatcher
from relay.errors import InvalidEvent, StoreError
from relay.events import dedup_key, parse_event
from relay.logs import fields
from relay.metrics import Metrics
from relay.runtime import Runtime
from relay.server import BODY_ERRORS, describe
from relay.store import Store

log = logging.getLogger(__name__)
JSON_TYPES = ("application/json",)
# An X-Request-Id is echoed in a response header and logged: only plain tokens are kept.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,64}")


@dataclass(frozen=True)
class Readiness:
    checks: dict[str, bool]
    reasons: dict[str, str] = field(default_factory=dict)  # why a check fails, when known

    @property
    def ready(self) -> bool:
        return all(self.checks.values())


@dataclass
class Services:
    store: Store
    metrics: Metrics
    runtime: Callable[[], Runtime]
    reload: Callable[[], Awaitable[None]]
    readiness: Callable[[], Awaitable[Readiness]]
    clock: Callable[[], float] = time.time
    owner: str = ""  # this relay's worker (`new_owner()`), as the store's relays table names it


SERVICES = web.AppKey("services", Services)
REQUEST_ID = web.RequestKey("request_id", str)


def error(status: int, err: str, details: str, headers: dict[str, str] | None = None,
          ) -> web.Response:
    return web.json_response({"error": err, "details": details}, status=status, headers=headers)


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def bearer_ok(header: str | None, secrets: Sequence[str]) -> bool:
    """Constant-time check of `Bearer <token>` against every configured token."""
    if not header:
        return False
    raw = header.encode("utf-8", "surrogateescape")
    scheme, _, token = raw.partition(b" ")
    if scheme.lower() != b"bearer" or not token.strip():
        return False
    given = _digest(token.strip())
    ok = False
    for secret in secrets:  # no early exit: time does not depend on which token matched
        ok |= hmac.compare_digest(given, _digest(secret.encode()))
    return ok


def unauthorized(details: str) -> web.Response:
    return error(401, "Unauthorized", details,
                 {"WWW-Authenticate": 'Bearer realm="kourier-relay"'})


_REQUEST_PREFIX = uuid.uuid4().hex[:8]
_request_counter = itertools.count(1)


def _next_request_id() -> str:
    """Unique per process start and cheap (uuid4 per request cost ~8% of ingest CPU)."""
    return f"{_REQUEST_PREFIX}-{next(_request_counter):x}"


def _safe_request_id(given: str) -> str:
    """A caller's id percent-encoded (it goes back out in a header), or a new one."""
    if not given:
        return _next_request_id()
    return quote(given.encode("utf-8", "surrogateescape"), safe="._:/+=-")[:64]


def request_id(request: web.Request) -> str:
    """The caller's X-Request-Id as it may be echoed, or a new one (`request_ids` keeps it
    for the request; an answer the middlewares never see makes its own)."""
    given = request.headers.get("X-Request-Id", "")
    return given if _REQUEST_ID.fullmatch(given) else _safe_request_id(given)


@web.middleware
async def request_ids(request: web.Request, handler: Any) -> web.StreamResponse:
    rid = request[REQUEST_ID] = request_id(request)
    response = await handler(request)
    response.headers["X-Request-Id"] = rid
    return response


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return error(e.status, e.reason, e.text or e.reason)


async def read_body(request: web.Request, limit: int, timeout: float) -> bytes:
    """The body (its declared length already passed `check_length`), refused with 413 when
    it grows over the limit, with 408 when it has not all arrived within `timeout`, with
    400 when its framing or compression is broken."""
    try:
        if request.content.is_eof():  # all of it has arrived (the usual case): no clock
            return await _read_upto(request, limit)
        async with asyncio.timeout(timeout):
            return await _read_upto(request, limit)
    except TimeoutError:
        raise InvalidEvent("Request timeout", f"the body did not arrive within {timeout:g}s",
                           408) from None
    except BODY_ERRORS as e:  # corrupt gzip/deflate, bad chunks, short body
        raise InvalidEvent("Invalid body", describe(e)) from None


async def _read_upto(request: web.Request, limit: int) -> bytes:
    body = bytearray()
    while len(body) <= limit:  # read(n) returns what has arrived so far, not n bytes
        chunk = await request.content.read(limit + 1 - len(body))
        if not chunk:
            break
        body += chunk
    if len(body) > limit:
        raise InvalidEvent("Payload too large", f"body exceeds {limit} bytes", 413)
    return bytes(body)


def check_length(request: web.Request, limit: int) -> None:
    """413 for a body declared (Content-Length) over the limit, before any of it is read."""
    if request.content_length is not None and request.content_length > limit:
        raise InvalidEvent("Payload too large", f"body exceeds {limit} bytes", 413)


def check_content_type(request: web.Request) -> None:
    ctype = request.content_type.lower()
    if ctype not in JSON_TYPES and not ctype.endswith("+json"):
        raise InvalidEvent("Unsupported media type",
                           f"Content-Type must be application/json, got {printable(ctype)}", 415)
    if not utf8(request.charset):
        raise InvalidEvent("Unsupported media type", "JSON must be UTF-8 (charset=utf-8)", 415)


def utf8(charset: str | None) -> bool:
    """No charset (UTF-8 is JSON's, and the status page's forms') or UTF-8 itself."""
    return charset is None or charset.lower().replace("-", "") == "utf8"


def printable(text: str) -> str:
    return text[:60].encode("ascii", "replace").decode() if text else "none"


def _refused_by_headers(request: web.Request, s: Services, rt: Runtime, rid: str,
                       ) -> web.Response | None:
    """The refusals the headers alone decide (token, media type, declared size): before
    the body is read, and before a client that expects 100-continue is asked for it."""
    if not bearer_ok(request.headers.get("Authorization"), rt.config.server.tokens):
        s.metrics.count_event("", "rejected_auth")
        log.warning("rejected: bad or missing token", extra=fields(request_id=rid))
        return unauthorized("missing or invalid bearer token")
    try:
        check_content_type(request)
        check_length(request, rt.config.server.max_body_bytes)
    except InvalidEvent as e:
        return _rejected(s, e, rid)
    return None


def _rejected(s: Services, e: InvalidEvent, rid: str) -> web.Response:
    s.metrics.count_event("", f"rejected_{e.status}")
    log.warning("rejected: %s", e, extra=fields(request_id=rid))
    return refusal(e)


async def expectation(request: web.Request, refused: Callable[[str], web.Response | None]
                      = lambda rid: None) -> web.Response | None:
    """Every route's `Expect` handler (aiohttp's answers any expectation other than
    100-continue in text/plain, echoing it): JSON 417 for those; for 100-continue the
    100, unless `refused(request_id)` gives the answer the headers already decide."""
    if request.version < HttpVersion11:  # HTTP/1.0 knows no 100: nothing to answer yet
        return None
    rid = request_id(request)
    if request.headers.get(hdrs.EXPECT, "").lower() != "100-continue":
        response = error(417, "Expectation failed", "only Expect: 100-continue is supported")
    elif (refused_now := refused(rid)) is None:
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # as aiohttp's: the answer itself has not begun
        return None
    else:
        response = refused_now
    response.force_close()  # the client may send the body anyway, or not: never parse it
    response.headers["X-Request-Id"] = rid  # the middlewares do not run for this answer
    return response


async def webhook_expect(request: web.Request) -> web.Response | None:
    """The webhook's: the token, media type and declared size are checked before the 100."""
    s = request.app[SERVICES]
    return await expectation(request, lambda rid: _refused_by_headers(request, s, s.runtime(), rid))


def application(**kwargs: Any) -> web.Application:
    """A web.Application whose routes (and 404 / 405) all answer `Expect` with
    `expectation`: the relay's and each sub-application's."""
    return dispatcher.application(expectation, **kwargs)


async def webhook(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    rt = s.runtime()
    rid = request[REQUEST_ID]
    refused = _refused_by_headers(request, s, rt, rid)
    if refused is not None:
        return refused
    try:
        event = parse_event(await read_body(request, rt.config.server.max_body_bytes,
                                            rt.config.server.body_timeout))
    except InvalidEvent as e:
        return _rejected(s, e, rid)
    if s.store.backlog_estimate() >= rt.config.store.max_backlog:
        s.metrics.count_event(event.type, "rejected_backlog")
        log.warning("rejected: backlog full", extra=fields(request_id=rid))
        return error(503, "Backlog full", "too many notifications are waiting; retry later",
                     {"Retry-After": "30"})
    now = s.clock()
    plan = rt.planner.plan(event, now)
    try:
        accepted = await s.store.accept(event, dedup_key(event, rt.config.store.dedup_fields),
                                        plan.notifications, now=now, timers=plan.timers)
    except StoreError as e:
        s.metrics.count_event(event.type, "rejected_store")
        log.error("store unavailable: %s", e, extra=fields(request_id=rid))
        return error(503, "Store unavailable", "the event could not be stored; retry later",
                     {"Retry-After": "5"})
    info = fields(request_id=rid, event_id=accepted.event_id, delivery_id=event.delivery_id,
                  type=event.type, routes=",".join(r.name for r in plan.match.routes) or "-",
                  receivers=",".join(plan.match.receiver_names) or "-", jobs=accepted.jobs)
    if accepted.duplicate:
        s.metrics.count_event(event.type, "duplicate")
        log.info("duplicate event", extra=info)
        return web.json_response({"id": accepted.event_id, "status": "duplicate"}, status=200)
    s.metrics.count_event(event.type, "accepted")
    if accepted.timers:
        s.metrics.count_timers(accepted.timers)
    if accepted.suppressed:
        log.info("accepted; notifications suppressed: %s", accepted.suppressed, extra=info)
    elif not event.known:
        log.warning("accepted unhandled event type %r", event.type, extra=info)
    else:
        log.info("accepted", extra=info)
    return web.json_response({"id": accepted.event_id, "status": "accepted",
                              "notifications": accepted.jobs}, status=202)


def refusal(e: InvalidEvent) -> web.Response:
    response = error(e.status, e.error, e.details)
    if e.status in (408, 413):  # the rest of the body is not coming, or not wanted
        response.force_close()
    return response


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = await request.app[SERVICES].readiness()
    body: dict[str, Any] = {"status": "ready" if state.ready else "not ready",
                            "checks": state.checks}
    if state.reasons:
        body["reasons"] = state.reasons
    return web.json_response(body, status=200 if state.ready else 503)


async def metrics(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    try:
        stats = await s.store.stats()
        s.metrics.queue_depth.set(stats.backlog)
        s.metrics.dead_jobs.set(stats.dead)
        s.metrics.held.set(stats.held)
        s.metrics.open_windows.set(stats.open_windows)
        age = s.clock() - stats.oldest_pending_at if stats.oldest_pending_at else 0.0
        s.metrics.oldest_pending.set(max(0.0, age))
    except StoreError as e:  # unknown now: never the value read before the outage
        log.warning("metrics: store unavailable: %s", e)
        s.metrics.store_unknown()
    body = generate_latest(s.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _store_errors_to_503(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except StoreError as e:
        return error(503, "Store unavailable", str(e), {"Retry-After": "5"})


def create_app(services: Services, webhook_path: str = "/webhook",
               max_body: int = 65536) -> web.Application:
    from relay import admin, ui  # here, not at the top: both import this module

    app = application(
        middlewares=[request_ids, json_errors, web.middleware(_store_errors_to_503),
                     admin.admin_auth],
        client_max_size=max(max_body, 1024 * 1024))
    app[SERVICES] = services
    app.router.add_post(webhook_path, webhook, expect_handler=webhook_expect)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    admin.mount(app)
    ui.mount(app)
    return app
