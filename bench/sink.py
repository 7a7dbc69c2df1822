"""The benchmark's receiver: a local HTTP sink behind Apprise's `json://`.

Run in its own process by bench/run.py:

    python bench/sink.py --port 9100

Apprise's json:// plugin POSTs `{"version", "title", "message", "type", ...}`.
The bench routes render `title: "{{ delivery_id }}"` and `body: "{{ sent_at }}"`,
so every arrival carries the delivery id and the time (epoch microseconds) at
which wrk sent the original webhook. The sink records per message the path,
the arrival time and that send time, and answers summaries:

    POST /fast, /fast2 ...   200 at once (a healthy receiver)
    POST /slow               200 after --slow seconds (2 s by default)
    POST /fail               500, every time
    GET  /-/summary?path=/fast&expect=N   count, distinct ids, duplicates,
                             first/last arrival, latency p50/p90/p99/max (ms)
    POST /-/reset            forget everything
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from aiohttp import web

ARRIVALS = web.AppKey("arrivals", dict)


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(q / 100.0 * (len(sorted_values) - 1))))
    return sorted_values[k]


def make_app(slow: float) -> web.Application:
    app = web.Application(client_max_size=1024 * 1024)
    # path -> list of (arrival_us, sent_at_us or None, delivery_id)
    app[ARRIVALS] = {}

    async def receive(request: web.Request) -> web.Response:
        arrival = time.time_ns() // 1000
        path = request.path
        raw = await request.read()
        sent_at = None
        ident = ""
        try:
            data = json.loads(raw)
            ident = str(data.get("title", ""))
            sent_at = int(str(data.get("message", "")).strip())
        except (ValueError, TypeError, AttributeError):
            pass
        if path.startswith("/slow"):
            await asyncio.sleep(slow)
        if path.startswith("/fail"):
            app[ARRIVALS].setdefault(path, []).append((arrival, sent_at, ident))
            return web.Response(status=500, text="failing on purpose")
        app[ARRIVALS].setdefault(path, []).append((arrival, sent_at, ident))
        return web.Response(text="ok")

    async def summary(request: web.Request) -> web.Response:
        path = request.query.get("path", "/fast")
        rows = app[ARRIVALS].get(path, [])
        out: dict[str, object] = {"path": path, "count": len(rows)}
        if rows:
            ids = {r[2] for r in rows}
            lat = sorted((r[0] - r[1]) / 1000.0 for r in rows if r[1] is not None)
            first = min(r[0] for r in rows)
            last = max(r[0] for r in rows)
            out.update(
                distinct=len(ids), duplicates=len(rows) - len(ids),
                first_arrival_us=first, last_arrival_us=last,
                first_sent_us=min((r[1] for r in rows if r[1] is not None), default=None),
                latency_ms={"p50": percentile(lat, 50), "p90": percentile(lat, 90),
                            "p99": percentile(lat, 99), "max": lat[-1] if lat else None,
                            "n": len(lat)},
            )
        return web.json_response(out)

    async def reset(request: web.Request) -> web.Response:
        app[ARRIVALS].clear()
        return web.json_response({"status": "reset"})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.router.add_get("/-/summary", summary)
    app.router.add_post("/-/reset", reset)
    app.router.add_get("/-/health", health)
    app.router.add_post("/{tail:.*}", receive)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--slow", type=float, default=2.0, help="seconds /slow waits")
    args = parser.parse_args()
    web.run_app(make_app(args.slow), host=args.host, port=args.port, access_log=None,
                print=None, backlog=1024)


if __name__ == "__main__":
    main()
