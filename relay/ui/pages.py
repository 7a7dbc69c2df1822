"""The status page's handlers: each reads the store, builds a view, renders a template."""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from aiohttp import web

from relay.admin import parse_id
from relay.errors import InvalidEvent
from relay.events import parse_event
from relay.explain import explain
from relay.ui import UI, VISITOR, read_form, tokens, visitor_of
from relay.ui.access import COOKIE, SESSION_TTL, role_for
from relay.ui.views import (
    chart,
    delivery_view,
    other_relays_places,
    receiver_rows,
    relay_rows,
)
from relay.web import SERVICES, Services, error

HOUR = 60
RECENT = 50
DEAD_PAGE = 200
MAX_TESTER_BYTES = 65536


routes = web.RouteTableDef()  # each handler's path (under /ui/) stands above it


@routes.get("")
async def to_overview(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/ui/")


def services(request: web.Request) -> Services:
    return request.config_dict[SERVICES]


def page(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    s = services(request)
    config = s.runtime().config
    visitor = request.get(VISITOR)
    html = request.config_dict[UI].env.get_template(template).render(
        visitor=visitor, now=s.clock(), zone=config.timezone, path=request.path, **context)
    return web.Response(text=html, status=status, content_type="text/html")


@routes.get("/")
async def overview(request: web.Request) -> web.Response:
    s = services(request)
    now = s.clock()
    start = (int(now) // 60 - HOUR + 1) * 60
    rt = s.runtime()
    stats = await s.store.stats()
    minutes = await s.store.activity(start, HOUR)
    labels = {name: [c.label for c in channels] for name, channels in rt.planner.channels.items()}
    announced = await s.store.relays()
    rows = receiver_rows(rt.config, await s.store.receivers(), now, labels,
                         other_relays_places(announced, s.owner, now))
    retried = None
    if parse_id(request.query.get("retried", "")) is not None and request.query.get("receiver"):
        retried = {"count": request.query["retried"], "name": request.query["receiver"],
                   "url": request.query.get("url", "0")}
    relays = relay_rows(rt.config, announced, s.owner, now)
    return page(request, "overview.html", stats=stats, chart=chart(minutes, rt.config.timezone),
                receivers=rows, retried=retried, relays=relays, title="Overview")


@routes.post("/receivers/retry-now")
async def retry_now(request: web.Request) -> web.StreamResponse:
    """A receiver URL's row button: its circuit closed, its waiting retries due now."""
    if not request[VISITOR].may_replay:
        return error(403, "Forbidden", "the viewer token can look but not retry")
    s = services(request)
    form = await read_form(request)
    name, place = str(form.get("receiver") or ""), parse_id(str(form.get("url") or "x"))
    receiver = s.runtime().config.receivers.get(name)
    if receiver is None or place is None or place >= len(receiver.urls):
        return error(400, "Invalid request data", "name a receiver of the config and the place"
                     " of one of its URLs")
    count = await s.store.retry_now(name, place, now=s.clock())
    raise web.HTTPSeeOther("/ui/?" + _query(retried=str(count), receiver=name, url=str(place)))


@routes.get("/deliveries")
async def deliveries(request: web.Request) -> web.StreamResponse:
    s = services(request)
    wanted = request.query.get("delivery_id", "").strip()
    if wanted:
        timeline = await s.store.timeline(wanted)
        if timeline.events:
            raise web.HTTPSeeOther("/ui/delivery?" + _query(id=wanted))
    recent = await s.store.recent_deliveries(RECENT)
    return page(request, "deliveries.html", recent=recent, wanted=wanted,
                not_found=bool(wanted), title="Deliveries")


@routes.get("/delivery")
async def delivery(request: web.Request) -> web.Response:
    s = services(request)
    wanted = request.query.get("id", "")
    timeline = await s.store.timeline(wanted)
    if not timeline.events:
        return page(request, "deliveries.html", status=404, wanted=wanted, not_found=True,
                    recent=await s.store.recent_deliveries(RECENT), title="Deliveries")
    view = delivery_view(timeline, s.runtime().planner.router)
    return page(request, "delivery.html", view=view, title=f"Delivery {wanted}")


@routes.get("/dead")
async def dead(request: web.Request) -> web.Response:
    s = services(request)
    receiver = request.query.get("receiver") or None
    jobs = await s.store.dead(receiver, DEAD_PAGE + 1)  # one more: are there others?
    names = sorted(s.runtime().config.receivers)
    return page(request, "dead.html", jobs=jobs[:DEAD_PAGE], more=len(jobs) > DEAD_PAGE,
                receiver=receiver or "", receivers=names,
                replayed=request.query.get("replayed"), title="Dead letters")


@routes.post("/dead/replay")
async def replay(request: web.Request) -> web.StreamResponse:
    if not request[VISITOR].may_replay:
        return error(403, "Forbidden", "the viewer token can look but not replay")
    s = services(request)
    form = await read_form(request)
    receiver = str(form.get("receiver") or "") or None
    # A row's own button names just its job; "Replay selected" sends the ticked boxes.
    raw_ids = [str(v) for v in (form.getall("one", []) or form.getall("id", []))]
    ids = [i for i in map(parse_id, raw_ids) if i is not None]
    if len(ids) != len(raw_ids):
        return error(400, "Invalid request data", "job ids must be numbers")
    if not ids and not (receiver and form.get("all") == "1"):
        return error(400, "Invalid request data", "select dead letters, or replay all of a"
                     " receiver's")
    count = await s.store.replay(ids or None, receiver, s.clock())
    back = {"replayed": str(count), **({"receiver": receiver} if receiver else {})}
    raise web.HTTPSeeOther("/ui/dead?" + _query(**back))


@routes.get("/tester")
@routes.post("/tester")
async def tester(request: web.Request) -> web.Response:
    text, report, problem = "", "", None
    if request.method == "POST":
        form = await read_form(request)
        text = str(form.get("event") or "")
        try:
            report = _explain(request, text)
        except InvalidEvent as e:
            problem = (e.error, e.details)
    return page(request, "tester.html", text=text, report=report, problem=problem,
                title="Rule tester")


def _explain(request: web.Request, text: str) -> str:
    """Exactly what `kourier-relay route` prints for this event; nothing is sent."""
    body = text.encode("utf-8", "surrogateescape")
    if len(body) > MAX_TESTER_BYTES:
        raise InvalidEvent("Payload too large", f"the event exceeds {MAX_TESTER_BYTES} bytes")
    report, _ = explain(services(request).runtime().config, parse_event(body))
    return report


# ---------------------------------------------------------------- login


@routes.get("/login")
async def login_form(request: web.Request) -> web.StreamResponse:
    visitor = visitor_of(request, services(request).clock())
    if visitor:
        raise web.HTTPSeeOther(_next(request.query.get("next")))
    return page(request, "login.html", next=_next(request.query.get("next")), failed=False,
                title="Log in")


@routes.post("/login")
async def login(request: web.Request) -> web.StreamResponse:
    form = await read_form(request)
    t = tokens(request)
    target = _next(str(form.get("next") or ""))
    throttle, address, now = request.config_dict[UI].logins, request.remote or "", \
        services(request).clock()
    wait = throttle.wait(address, now)
    if wait > 0:  # too many wrong tokens from here: not even checked
        retry = str(math.ceil(wait))
        response = page(request, "login.html", status=429, next=target, failed=False,
                        wait=retry, title="Log in")
        response.headers["Retry-After"] = retry
        return response
    role = role_for(str(form.get("token") or ""), t)
    if role is None:
        throttle.failed(address, now)
        return page(request, "login.html", status=401, next=target, failed=True,
                    title="Log in")
    throttle.succeeded(address)
    cookie = request.config_dict[UI].sessions.issue(role, t, services(request).clock())
    response = web.Response(status=303, headers={"Location": target})
    response.set_cookie(COOKIE, cookie, max_age=int(SESSION_TTL), path="/ui/", httponly=True,
                        samesite="Strict", secure=_secure(request))
    return response


@routes.post("/logout")
async def logout(request: web.Request) -> web.StreamResponse:
    request.config_dict[UI].sessions.end(request.cookies.get(COOKIE), services(request).clock())
    response = web.Response(status=303, headers={"Location": "/ui/login"})
    response.del_cookie(COOKIE, path="/ui/")
    return response


def _secure(request: web.Request) -> bool:
    """TLS here, or at a proxy that says so (X-Forwarded-Proto: https; see docs)."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"


def _next(target: str | None) -> str:
    """Only a page of this status page: never another site (no open redirect). It goes
    into a Location header: percent-encoded, it holds no control character or non-ASCII."""
    parts = urlsplit(target or "")
    if parts.scheme or parts.netloc or not parts.path.startswith("/ui/") or "\\" in (target or ""):
        return "/ui/"
    return quote(parts.path + (f"?{parts.query}" if parts.query else ""), safe="/?&=%:@!$'()*+,;")


def _query(**values: str) -> str:
    return urlencode(values)
