"""The admin API under `/-/`: dead letters (list, show, replay), retry-now, reload and one
delivery's timeline, behind `server.admin_token`. Every error answer has the shape
`{"error": ..., "details": ...}`.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

from aiohttp import web

from relay.errors import InvalidEvent
from relay.events import decode_json, unstorable
from relay.store import Job
from relay.store.rows import job_columns
from relay.web import SERVICES, bearer_ok, check_length, error, printable, read_body, refusal, unauthorized

_ID = re.compile(r"[0-9]{1,18}")  # ids and limits: ASCII digits that fit a 64-bit integer
MAX_LIMIT = 10_000


def parse_id(text: str) -> int | None:
    """A job id or a limit written as text (a path, a query, a form field); None when it
    is not one. str.isdigit() takes "²" and "١", which int() may not."""
    return int(text) if _ID.fullmatch(text) else None


@web.middleware
async def admin_auth(request: web.Request, handler: Any) -> web.StreamResponse:
    if not request.path.startswith("/-/"):
        return await handler(request)
    token = request.app[SERVICES].runtime().config.server.admin_token
    if not token:
        return error(403, "Forbidden", "the admin API is off: set server.admin_token")
    if not bearer_ok(request.headers.get("Authorization"), [token]):
        return unauthorized("missing or invalid admin token")
    return await handler(request)


def job_json(job: Job) -> dict[str, Any]:
    out = job_columns(job)  # flat, as stored: its message's title, body, type, format
    out.pop("claim_token", None)
    return out


async def dead_list(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    limit = _int_param(request, "limit", 100)
    if not 1 <= limit <= MAX_LIMIT:
        raise _bad_request(f"limit must be between 1 and {MAX_LIMIT}")
    receiver = request.query.get("receiver")
    if receiver is not None and unstorable(receiver):
        _check_receiver(request, receiver)  # no receiver has such a name: never asks the store
    jobs = await s.store.dead(receiver, limit)
    if receiver is not None and not jobs:
        # A receiver removed from the config still lists its dead jobs (as `dead list` does);
        # a name that is neither configured nor has any is a mistake, not "no dead jobs".
        _check_receiver(request, receiver)
    return web.json_response({"jobs": [job_json(j) for j in jobs]})


async def dead_show(request: web.Request) -> web.Response:
    job_id = _int_param(request, "id", 0, match=True)
    detail = await request.app[SERVICES].store.detail(job_id)
    if detail is None:
        return error(404, "Not found", f"no job {job_id}")
    return web.json_response({"job": job_json(detail.job), "event": detail.event,
                              "attempts": [asdict(a) for a in detail.history]})


async def delivery(request: web.Request) -> web.Response:
    """One delivery's timeline as JSON (what the status page's delivery page and
    `kourier-relay delivery` show): its newest events, their jobs with every attempt, its
    timers (watches, digest windows), live messages and digest joins."""
    wanted = request.query.get("id", "")
    if not wanted:
        raise _bad_request('give the delivery id: /-/delivery?id=D-1042')
    timeline = None if unstorable(wanted) else \
        await request.app[SERVICES].store.timeline(wanted)
    if timeline is None or not timeline.events:
        return error(404, "Not found", f"no delivery {printable(wanted)!r}")
    attempts = timeline.attempts_by_job()
    timers = [{k: v for k, v in asdict(t).items() if k != "claim_token"} for t in timeline.timers]
    return web.json_response({
        "delivery_id": timeline.delivery_id, "earlier": timeline.earlier,
        "events": [asdict(e) for e in timeline.events],
        "jobs": [{**job_json(j), "attempts": [asdict(a) for a in attempts.get(j.id, [])]}
                 for j in timeline.jobs],
        "timers": timers, "live": [asdict(x) for x in timeline.live],
        "digests": [asdict(x) for x in timeline.joined]})


async def _json_body(request: web.Request) -> tuple[Any, web.Response | None]:
    """The request's JSON ({} when empty), or the answer that refuses it."""
    server = request.app[SERVICES].runtime().config.server
    try:
        check_length(request, server.max_body_bytes)
        body = await read_body(request, server.max_body_bytes, server.body_timeout)
        return (decode_json(body) if body.strip() else {}), None
    except InvalidEvent as e:
        return None, refusal(e)


async def dead_replay(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    spec, refused = await _json_body(request)
    if refused is not None:
        return refused
    if not isinstance(spec, dict) or not (spec.get("ids") or spec.get("receiver")
                                          or spec.get("all") is True):
        return error(400, "Invalid request data",
                     'give "ids": [..], "receiver": "name" or "all": true')
    ids, receiver = spec.get("ids"), spec.get("receiver")
    if ids is not None and not (isinstance(ids, list) and all(_is_id(i) for i in ids)):
        return error(400, "Invalid request data", '"ids" must be a list of job ids (whole'
                     ' numbers from 1)')
    if receiver is not None:
        if not isinstance(receiver, str):
            return error(400, "Invalid request data", '"receiver" must be a receiver name')
        _check_receiver(request, receiver)
    count = await s.store.replay(ids, receiver, s.clock())
    return web.json_response({"replayed": count})


async def retry_now(request: web.Request) -> web.Response:
    """Receivers' circuits closed and their waiting retries due now (`retry-now`)."""
    s = request.app[SERVICES]
    spec, refused = await _json_body(request)
    if refused is not None:
        return refused
    receivers = s.runtime().config.receivers
    receiver = spec.get("receiver") if isinstance(spec, dict) else None
    everyone = isinstance(spec, dict) and spec.get("all") is True
    if everyone == isinstance(receiver, str) or everyone and "url" in spec:
        return error(400, "Invalid request data", 'give "receiver": "name" (and "url": N for'
                     ' one of its URLs only), or "all": true')
    if receiver is not None:
        _check_receiver(request, receiver)
    url = spec.get("url")
    count = len(receivers[receiver].urls) if receiver is not None else 0
    if url is not None and not (type(url) is int and 0 <= url < count):
        return error(400, "Invalid request data", '"url" must be a place in the receiver\'s'
                     f" urls, from 0 to {count - 1}")
    names: list[str] = sorted(receivers) if receiver is None else [receiver]
    places = [(name, i) for name in names for i in range(len(receivers[name].urls))
              if url is None or i == url]
    retried = [await s.store.retry_now(name, i, now=s.clock()) for name, i in places]
    return web.json_response({"retried": sum(retried), "urls": [
        {"receiver": name, "url_index": i, "retried": n}
        for (name, i), n in zip(places, retried, strict=True)]})


def _is_id(value: Any) -> bool:
    return type(value) is int and 0 < value < 2**63  # bool is an int; SQLite ids are 64-bit


def _check_receiver(request: web.Request, name: str) -> None:
    if name not in request.app[SERVICES].runtime().config.receivers:
        raise web.HTTPBadRequest(reason="Invalid request data", text=(
            f"unknown receiver {printable(name)!r}" if name else "the receiver's name is empty"))


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
    value = parse_id(raw)
    if value is None:
        raise _bad_request(f"{name} must be a whole number from 1 (at most 18 digits)")
    return value


def mount(app: web.Application) -> None:
    """The admin routes; `admin_auth` (among the app's middlewares) guards them."""
    app.router.add_get("/-/dead", dead_list)
    app.router.add_get("/-/dead/{id}", dead_show)
    app.router.add_post("/-/dead/replay", dead_replay)
    app.router.add_post("/-/retry-now", retry_now)
    app.router.add_post("/-/reload", reload_config)
    app.router.add_get("/-/delivery", delivery)
