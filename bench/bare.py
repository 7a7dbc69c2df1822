"""The ingest ceiling: a bare aiohttp handler that only checks the token and answers 200.

Same framework, same Python, same machine and the same wrk script as the
relay in scenario 1, so `relay events/s / bare events/s` is the share of the
ceiling the relay keeps. It reads the body (as the relay must) and compares
the bearer token in constant time (as the relay does), nothing else.

    python bench/bare.py --port 9200 --token bench-token
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
from typing import Any

from aiohttp import web


def make_app(token: str, path: str, middlewares: int = 0) -> web.Application:
    expected = hashlib.sha256(token.encode()).digest()

    async def handler(request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
                hashlib.sha256(given.strip().encode()).digest(), expected):
            return web.json_response({"error": "Unauthorized"}, status=401)
        await request.read()
        return web.json_response({"status": "accepted"}, status=200)

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    @web.middleware
    async def passthrough(request: web.Request, handler: Any) -> web.StreamResponse:
        return await handler(request)

    # --middlewares N: N pass-through middlewares, to price the relay's middleware chain
    app = web.Application(middlewares=[passthrough] * middlewares)
    app.router.add_post(path, handler)
    app.router.add_get("/readyz", ready)
    app.router.add_get("/healthz", ready)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--path", default="/webhook")
    parser.add_argument("--middlewares", type=int, default=0,
                        help="pass-through middlewares in front (default none)")
    args = parser.parse_args()
    web.run_app(make_app(args.token, args.path, args.middlewares), host=args.host, port=args.port,
                access_log=None, print=None, backlog=1024)


if __name__ == "__main__":
    main()
