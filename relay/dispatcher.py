"""aiohttp's URL dispatcher with one `Expect` handler for every route that names none,
and for the requests no route takes (404, 405).

aiohttp gives a route without `expect_handler=` its default handler, which answers
an expectation other than 100-continue in text/plain, echoing it; its 404 and 405
always get that one. Public aiohttp only: a `web.UrlDispatcher` subclass passed as
`router=` (deprecated since 2018, aio-libs/aiohttp#2766, yet accepted by 3.14; a
release that drops it fails every app at start) and `web.UrlMappingMatchInfo`.
tests/test_hostile.py (every route, 404, 405) and tests/test_dispatcher.py (a
sub-application on aiohttp's own router) fail if either stops giving our handler.
"""

from __future__ import annotations

import warnings
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

Expect = Callable[[web.Request], Awaitable[web.StreamResponse | None]]


class _Unrouted(web.UrlMappingMatchInfo):
    """aiohttp's 404 / 405 (its route, exception and apps) with another Expect handler."""

    __slots__ = ("_exception", "_expect")

    def __init__(self, found: web.UrlMappingMatchInfo, exception: web.HTTPException,
                 expect: Expect) -> None:
        super().__init__({}, found.route)
        self._exception, self._expect = exception, expect
        for app in reversed(found.apps):  # innermost first, as sub-app resources add them
            self.add_app(app)

    @property
    def http_exception(self) -> web.HTTPException:
        return self._exception

    @property
    def expect_handler(self) -> Expect:
        return self._expect


class Router(web.UrlDispatcher):
    def __init__(self, expect: Expect) -> None:
        super().__init__()
        self.expect = expect

    def add_route(self, method: str, path: str, handler: Any, *, name: str | None = None,
                  expect_handler: Expect | None = None) -> web.AbstractRoute:
        return super().add_route(method, path, handler, name=name,
                                 expect_handler=expect_handler or self.expect)

    def add_get(self, path: str, handler: Any, *, name: str | None = None,
                allow_head: bool = True, **kwargs: Any) -> web.AbstractRoute:
        kwargs.setdefault("expect_handler", self.expect)  # aiohttp's add_get skips add_route
        return super().add_get(path, handler, name=name, allow_head=allow_head, **kwargs)

    def add_static(self, prefix: str, path: Any, **kwargs: Any) -> web.AbstractResource:
        kwargs.setdefault("expect_handler", self.expect)
        return super().add_static(prefix, path, **kwargs)

    async def resolve(self, request: web.Request) -> web.UrlMappingMatchInfo:
        found = await super().resolve(request)
        exception = found.http_exception
        if exception is None or isinstance(found, _Unrouted):  # a sub-app's Router's 404
            return found
        return _Unrouted(found, exception, self.expect)


def application(expect: Expect, **kwargs: Any) -> web.Application:
    with warnings.catch_warnings():  # router= is deprecated, not gone: see the docstring
        warnings.simplefilter("ignore", DeprecationWarning)
        return web.Application(router=Router(expect), **kwargs)
