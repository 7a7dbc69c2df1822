"""The status page under `/ui/`: an aiohttp sub-application the web app mounts.

Server-rendered with its own Jinja2 environment (autoescape on: payload values
are hostile; never the sandboxed notification environment), static CSS and
one small script as package data, nothing loaded from elsewhere. Access is the
admin token (may replay) or the viewer token (may look), as a bearer header or
a login session (relay.ui.access).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from aiohttp import web
from jinja2 import Environment, PackageLoader, StrictUndefined
from multidict import MultiDictProxy

from relay.events import unstorable
from relay.server import BODY_ERRORS
from relay.ui.access import COOKIE, LoginThrottle, Sessions, Tokens, Visitor, bearer_role, csrf_ok
from relay.ui.views import ago, counts, iso, when
from relay.web import SERVICES, application, error, utf8

STATIC = Path(__file__).parent / "static"
STATIC_FILES = {p.name: p for p in STATIC.iterdir() if p.is_file()}
# Everything from the relay itself; no inline script, no frames, forms post only here.
CSP = ("default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self';"
       " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
OPEN_PATHS = ("/ui/login", "/ui/static/")
_UNSTORABLE = "a value holds NUL or an unpaired surrogate, which no delivery id or name can"


@dataclass
class UiState:
    env: Environment
    sessions: Sessions
    logins: LoginThrottle


UI = web.AppKey("ui", UiState)
VISITOR = web.RequestKey("visitor", Visitor)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@functools.cache
def environment() -> Environment:
    """The pages' templates (package files, the same for every relay of a process): one
    environment, so each template compiles once per process, not once per app."""
    env = Environment(loader=PackageLoader("relay.ui", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["when"] = when
    env.filters["ago"] = ago
    env.filters["iso"] = iso
    env.filters["counts"] = counts
    env.globals["static"] = _static_urls()
    env.filters["pretty"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False, sort_keys=True)
    return env


def _static_urls() -> dict[str, str]:
    """Each static file's URL with its content hash: cached for good, never stale."""
    return {name: f"/ui/static/{name}?v={hashlib.sha256(p.read_bytes()).hexdigest()[:12]}"
            for name, p in STATIC_FILES.items()}


async def static_file(request: web.Request) -> web.StreamResponse:
    """One of the package's static files; any other name is a JSON 404 (aiohttp's own
    static route answers a missing file with an empty octet-stream 404)."""
    path = STATIC_FILES.get(request.match_info["name"])
    if path is None:
        raise web.HTTPNotFound(text="no such static file")
    return web.FileResponse(path)


def tokens(request: web.Request) -> Tokens:
    server = request.config_dict[SERVICES].runtime().config.server
    return Tokens(server.admin_token, server.viewer_token)


def wants_page(request: web.Request) -> bool:
    """A browser asking for a page (gets HTML and the login form), not an API client."""
    return request.method in ("GET", "HEAD") and "text/html" in request.headers.get("Accept", "")


def visitor_of(request: web.Request, now: float) -> Visitor | None:
    t = tokens(request)
    role = bearer_role(request.headers.get("Authorization"), t)
    if role:
        return Visitor(role)
    return request.config_dict[UI].sessions.check(request.cookies.get(COOKIE), t, now)


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await _guarded(request, handler)
    response.headers.update({"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                             "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"})
    if not request.path.startswith("/ui/static/"):
        response.headers["Cache-Control"] = "no-store"
    return response


async def _guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not tokens(request).enabled:
        return error(403, "Forbidden", "the status page is off: set server.admin_token"
                     " (or server.viewer_token)")
    if any(unstorable(v) for v in request.query.values()):  # PostgreSQL cannot look them up
        return error(400, "Invalid request data", _UNSTORABLE)
    if request.path.startswith(OPEN_PATHS):
        return await handler(request)
    visitor = visitor_of(request, request.config_dict[SERVICES].clock())
    if visitor is None:
        if wants_page(request):
            raise web.HTTPSeeOther(f"/ui/login?next={quote(request.path_qs, safe='')}")
        return error(401, "Unauthorized", "log in at /ui/login or send the admin or viewer"
                     " token as a bearer token", {"WWW-Authenticate": 'Bearer realm="kourier-relay"'})
    if request.method == "POST":
        form = await read_form(request)
        given = form.get("csrf")
        if not csrf_ok(visitor, given if isinstance(given, str) else None):
            return error(403, "Forbidden", "the form's CSRF token is missing or wrong:"
                         " reload the page and try again")
    request[VISITOR] = visitor
    return await handler(request)


async def read_form(request: web.Request) -> MultiDictProxy[str | bytes | bytearray | web.FileField]:
    """The posted form of a status-page request, never a 500: one in a charset other than
    UTF-8 is a 415; a malformed one (bad multipart, broken framing, a field in a charset
    Python cannot decode) or one holding text no store can keep a JSON 400; one that
    does not arrive in time a 408."""
    if not utf8(request.charset):  # aiohttp decodes with any codec named, or raises
        raise web.HTTPUnsupportedMediaType(reason="Unsupported media type",
                                           text="forms must be UTF-8 (charset=utf-8)")
    timeout = request.config_dict[SERVICES].runtime().config.server.body_timeout
    try:
        async with asyncio.timeout(timeout):
            form = await request.post()
    except TimeoutError:
        raise web.HTTPRequestTimeout(reason="Request timeout",
                                     text=f"the form did not arrive within {timeout:g}s") from None
    except (ValueError, LookupError, *BODY_ERRORS):
        raise web.HTTPBadRequest(reason="Invalid body", text="the form cannot be read") from None
    if any(isinstance(v, str) and unstorable(v) for v in form.values()):
        raise web.HTTPBadRequest(reason="Invalid request data", text=_UNSTORABLE)
    return form


def create_ui() -> web.Application:
    from relay.ui import pages

    app = application(middlewares=[guard])
    app[UI] = UiState(environment(), Sessions(), LoginThrottle())
    app.router.add_routes(pages.routes)
    app.router.add_get("/static/{name}", static_file)
    return app


def mount(app: web.Application) -> None:
    """Serve the status page under /ui/ of the relay's web app."""
    app.add_subapp("/ui/", create_ui())
