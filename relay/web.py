"""aiohttp app factory: the webhook, health, metrics and the admin API.

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
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from relay.errors import InvalidEvent, StoreError
from relay.events import decode_json, dedup_key, parse_event
from relay.logs import fields
from relay.metrics import Metrics
from relay.runtime import Runtime
from relay.server import BODY_ERRORS, describe
from relay.store import Job, Store

log = logging.getLogger(__name__)
JSON_TYPES = ("application/json",)
# An X-Request-Id is echoed in a response header and logged: only plain tokens are kept.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,64}")
_ID = re.compile(r"[0-9]{1,18}")  # ids and limits: ASCII digits that fit a 64-bit integer
MAX_LIMIT = 10_000


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


def _unauthorized(details: str) -> web.Response:
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


@web.middleware
async def request_ids(request: web.Request, handler: Any) -> web.StreamResponse:
    given = request.headers.get("X-Request-Id", "")
    rid = given if _REQUEST_ID.fullmatch(given) else _safe_request_id(given)
    request[REQUEST_ID] = rid
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
    """The body, refused with 413 before reading when it is (or grows) over the limit,
    with 408 when it has not all arrived within `timeout`, with 400 when its framing or
    compression is broken."""
    if request.content_length is not None and request.content_length > limit:
        raise InvalidEvent("Payload too large", f"body exceeds {limit} bytes", 413)
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


def check_content_type(request: web.Request) -> None:
    ctype = request.content_type.lower()
    if ctype not in JSON_TYPES and not ctype.endswith("+json"):
        raise InvalidEvent("Unsupported media type",
                           f"Content-Type must be application/json, got {_printable(ctype)}", 415)
    charset = request.charset
    if charset is not None and charset.lower().replace("-", "") != "utf8":
        raise InvalidEvent("Unsupported media type", "JSON must be UTF-8 (charset=utf-8)", 415)


def _printable(text: str) -> str:
    return text[:60].encode("ascii", "replace").decode() if text else "none"


async def webhook(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    rt = s.runtime()
    rid = request[REQUEST_ID]
    if not bearer_ok(request.headers.get("Authorization"), rt.config.server.tokens):
        s.metrics.count_event("", "rejected_auth")
        log.warning("rejected: bad or missing token", extra=fields(request_id=rid))
        return _unauthorized("missing or invalid bearer token")
    try:
        check_content_type(request)
        event = parse_event(await read_body(request, rt.config.server.max_body_bytes,
                                            rt.config.server.body_timeout))
    except InvalidEvent as e:
        s.metrics.count_event("", f"rejected_{e.status}")
        log.warning("rejected: %s", e, extra=fields(request_id=rid))
        return _refusal(e)
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


def _refusal(e: InvalidEvent) -> web.Response:
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
    except StoreError as e:
        log.warning("metrics: store unavailable: %s", e)
    body = generate_latest(s.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


# ---------------------------------------------------------------- admin API


@web.middleware
async def admin_auth(request: web.Request, handler: Any) -> web.StreamResponse:
    if not request.path.startswith("/-/"):
        return await handler(request)
    token = request.app[SERVICES].runtime().config.server.admin_token
    if not token:
        return error(403, "Forbidden", "the admin API is off: set server.admin_token")
    if not bearer_ok(request.headers.get("Authorization"), [token]):
        return _unauthorized("missing or invalid admin token")
    return await handler(request)


def job_json(job: Job) -> dict[str, Any]:
    out = asdict(job)
    out.pop("claim_token", None)
    return out


async def dead_list(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    limit = _int_param(request, "limit", 100)
    if not 1 <= limit <= MAX_LIMIT:
        raise _bad_request(f"limit must be between 1 and {MAX_LIMIT}")
    receiver = request.query.get("receiver")
    if receiver is not None:
        _check_receiver(request, receiver)
    jobs = await s.store.dead(receiver, limit)
    return web.json_response({"jobs": [job_json(j) for j in jobs]})


async def dead_show(request: web.Request) -> web.Response:
    job_id = _int_param(request, "id", 0, match=True)
    detail = await request.app[SERVICES].store.detail(job_id)
    if detail is None:
        return error(404, "Not found", f"no job {job_id}")
    return web.json_response({"job": job_json(detail.job), "event": detail.event,
                              "attempts": [asdict(a) for a in detail.history]})


async def dead_replay(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    server = s.runtime().config.server
    try:
        body = await read_body(request, server.max_body_bytes, server.body_timeout)
        spec = decode_json(body) if body.strip() else {}
    except InvalidEvent as e:
        return _refusal(e)
    if not isinstance(spec, dict) or not (spec.get("ids") or spec.get("receiver")
                                          or spec.get("all") is True):
        return error(400, "Invalid request data",
                     'give "ids": [..], "receiver": "name" or "all": true')
    ids, receiver = spec.get("ids"), spec.get("receiver")
    if ids is not None and not (isinstance(ids, list) and all(_is_id(i) for i in ids)):
        return error(400, "Invalid request data", '"ids" must be a list of job ids')
    if receiver is not None:
        if not isinstance(receiver, str):
            return error(400, "Invalid request data", '"receiver" must be a receiver name')
        _check_receiver(request, receiver)
    count = await s.store.replay(ids, receiver, s.clock())
    return web.json_response({"replayed": count})


def _is_id(value: Any) -> bool:
    return type(value) is int and 0 < value < 2**63  # bool is an int; SQLite ids are 64-bit


def _check_receiver(request: web.Request, name: str) -> None:
    if name not in request.app[SERVICES].runtime().config.receivers:
        raise web.HTTPBadRequest(reason="Invalid request data",
                                 text=f"unknown receiver {_printable(name)!r}")


def _bad_request(details: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(reason="Invalid request data", text=details)


async def reload_config(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    try:
        await s.reload()
    except Exception as e:  # the old config keeps serving; say why
        return error(400, "Reload failed", str(e))
    return web.json_response({"status": "reloaded"})


def _int_param(request: web.Request, name: str, default: int, match: bool = False) -> int:
    raw = request.match_info.get(name) if match else request.query.get(name)
    if raw is None:
        return default
    if not _ID.fullmatch(raw):  # str.isdigit() takes "²" and "١", which int() may not
        raise _bad_request(f"{name} must be a number")
    return int(raw)


async def _store_errors_to_503(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except StoreError as e:
        return error(503, "Store unavailable", str(e), {"Retry-After": "5"})


def create_app(services: Services, webhook_path: str = "/webhook",
               max_body: int = 65536) -> web.Application:
    app = web.Application(
        middlewares=[request_ids, json_errors, web.middleware(_store_errors_to_503), admin_auth],
        client_max_size=max(max_body, 1024 * 1024))
    app[SERVICES] = services
    app.router.add_post(webhook_path, webhook)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/-/dead", dead_list)
    app.router.add_get("/-/dead/{id}", dead_show)
    app.router.add_post("/-/dead/replay", dead_replay)
    app.router.add_post("/-/reload", reload_config)
    from relay.ui import mount  # here, not at the top: the status page imports this module

    mount(app)
    return app
