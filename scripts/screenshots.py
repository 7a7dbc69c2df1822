#!/usr/bin/env python3
"""Regenerate the status page's screenshots in docs/images/ (`make screenshots`).

Starts a real relay on a free port with a temporary SQLite store and a local
json:// sink, sends it an hour of sample traffic through the webhook (a
shifted clock plays the hour in a few seconds), and photographs every page in
the same headless Chromium the browser tests use.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiohttp import ClientSession  # noqa: E402
from aiohttp.test_utils import TestServer  # noqa: E402

from relay.lifecycle import Relay  # noqa: E402
from tests.cdp import chromium  # noqa: E402
from tests.conftest import Sink, free_port, serve_posts, wait_for  # noqa: E402

OUT = ROOT / "docs" / "images"
ADMIN = "screenshot-admin"
CONFIG = """\
server:
  listen: 127.0.0.1:{port}
  tokens: ["hook"]
  admin_token: {admin}
  viewer_token: screenshot-viewer
store:
  url: "sqlite:{db}"
sending:
  retry: {{schedule: [0, 30, 120], jitter: 0}}
receivers:
  - name: ops-chat
    urls: ["json://127.0.0.1:{sink}/chat?token=secret"]
    rate_limit: 30/min
  - name: customer-email
    urls: ["json://127.0.0.1:{sink}/email"]
  - name: pager
    urls: ["json://127.0.0.1:{dead_port}/pager"]
  - name: log
    urls: ["console://"]
routes:
  - name: failed-deliveries
    match: {{event: "delivery.*", status: failed}}
    receivers: [ops-chat, pager]
    type: failure
    title: "Delivery {{{{ delivery_id }}}} failed"
    body: "{{{{ reason | default('no reason given') }}}} (driver {{{{ driver }}}})"
  - name: delivered
    match: {{status: delivered}}
    receivers: [customer-email]
    type: success
    title: "Your parcel {{{{ delivery_id }}}} was delivered"
    body: "Delivered at {{{{ timestamp | localtime('Europe/Berlin') }}}}"
default_receiver: log
watches:
  - name: not-delivered
    start: {{event: delivery.updated, status: out_for_delivery}}
    stop: [{{status: delivered}}, {{event: delivery.cancelled}}]
    after: 2h
    receivers: [ops-chat]
"""


class ShiftedClock:
    """Real time minus an offset the script winds down to zero: an hour in a few seconds."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def __call__(self) -> float:
        return time.time() - self.offset


async def traffic(session: ClientSession, url: str, clock: ShiftedClock, sink: Sink) -> None:
    sink.script["/email"] = [404, 404]  # two addresses the mail gateway refuses: dead letters
    n = 0
    for minute in range(55, -1, -1):
        clock.offset = minute * 60.0
        for i in range(3 + (minute * 7) % 9):
            n += 1
            status = ("in_transit", "out_for_delivery", "delivered", "failed")[(n + minute) % 4]
            payload = {"event": "delivery.updated", "delivery_id": f"D-{1000 + n % 37}",
                       "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(clock() + i)),
                       "status": status, "driver": "Ana", "reason": "address not found"}
            await session.post(url + "/webhook", json=payload,
                               headers={"Authorization": "Bearer hook"})
        await asyncio.sleep(0.05)
    clock.offset = 0.0


async def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    sink = Sink()
    sink_server = await serve_posts(sink.handle)
    sink.port = sink_server.port or 0
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        cfg = Path(tmp) / "config.yaml"
        cfg.write_text(CONFIG.format(port=port, admin=ADMIN, db=Path(tmp) / "relay.db",
                                     sink=sink.port, dead_port=free_port()))
        clock = ShiftedClock(3600.0)
        relay = Relay(str(cfg), env={}, clock=clock)
        server = TestServer(relay.web_app(), host="127.0.0.1", port=port)
        await server.start_server()
        base = f"http://127.0.0.1:{port}"
        try:
            async with ClientSession() as session:
                await traffic(session, base, clock, sink)
            await wait_for(lambda: len(sink.received) > 40, 30, message="traffic at the sink")
            await wait_for(relay.store.dead, 30, message="dead letters")
            await shoot(base)
        finally:
            await server.close()
            await sink_server.close()


async def shoot(base: str) -> None:
    async with chromium() as browser:
        page = await browser.new_page()
        await page.send("Emulation.setDeviceMetricsOverride", width=1280, height=800,
                        deviceScaleFactor=1, mobile=False)
        await page.goto(base + "/ui/login")
        await page.screenshot(OUT / "ui-login.png", 1280, 560)
        await page.fill("#token", ADMIN)
        await page.submit("button.primary")
        for name, path in (("overview", "/ui/"), ("deliveries", "/ui/deliveries"),
                           ("delivery", "/ui/delivery?id=D-1003"), ("dead", "/ui/dead")):
            await page.goto(base + path)
            await page.screenshot(OUT / f"ui-{name}.png", 1280, 800)
        await page.goto(base + "/ui/delivery?id=D-1003")
        await element_shot(page, "#watches", OUT / "ui-watches.png")
        await page.goto(base + "/ui/tester")
        await page.fill("#event", json.dumps({"event": "delivery.updated", "delivery_id": "D-1042",
                                              "timestamp": "2026-01-02T10:00:00Z",
                                              "status": "failed", "driver": "Ana"}))
        await page.submit("form.stack button")
        await page.screenshot(OUT / "ui-tester.png", 1280, 800)
        await page.goto(base + "/ui/")
        await page.screenshot(OUT / "ui-overview-phone.png", 390, 844, mobile=True)
        if page.errors:
            raise SystemExit(f"console errors: {page.errors}")
    print(f"screenshots written to {OUT.relative_to(ROOT)}/")


async def element_shot(page: Any, selector: str, path: Path, margin: int = 12) -> None:
    """One element of the page (the full-page shot is already laid out), with a margin."""
    box = await page.js(f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                        ".getBoundingClientRect(); return [r.left, r.top + window.scrollY,"
                        " r.width, r.height]; })()")
    x, y, w, h = box
    shot = await page.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                           clip={"x": max(0, x - margin), "y": max(0, y - margin),
                                 "width": w + 2 * margin, "height": h + 2 * margin, "scale": 1})
    path.write_bytes(base64.b64decode(shot["data"]))


if __name__ == "__main__":
    asyncio.run(main())
