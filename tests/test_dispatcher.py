"""relay.dispatcher: aiohttp's router with one Expect handler, sub-applications included."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from relay import dispatcher
from tests.conftest import free_port
from tests.guarded import request, response, until_eof


async def _refuse(request: web.Request) -> web.Response | None:
    return web.Response(status=417, text="ours")


@web.middleware
async def _mark(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as e:
        response = web.Response(status=e.status, text="marked")
    response.headers["X-Sub"] = "ran"
    return response


async def _here(request: web.Request) -> web.Response:
    return web.Response(text="here")


async def _exchange(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    try:
        return await until_eof(reader)
    finally:
        writer.close()


async def test_a_sub_app_on_aiohttps_own_router_keeps_its_middlewares_and_gets_our_expect():
    """Its 404 is rebuilt by the parent's Router: the sub-app must stay in the match's
    apps (its middleware answers the 404), and the Expect handler must be ours."""
    sub = web.Application(middlewares=[_mark])
    sub.router.add_get("/here", _here)
    app = dispatcher.application(_refuse)
    app.add_subapp("/sub/", sub)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        code, headers, text = response(await _exchange(port, request("GET", "/sub/nope")))
        assert (code, headers.get("x-sub"), text) == (404, "ran", "marked")
        raw = request("GET", "/sub/nope", headers={"Expect": "x-nope"})
        code, _, text = response(await _exchange(port, raw))
        assert (code, text) == (417, "ours")
    finally:
        await runner.cleanup()
