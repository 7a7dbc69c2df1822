"""A small Chrome DevTools Protocol client on aiohttp's websocket: the system Chromium, headless.

Enough for the status page's browser tests and screenshots: open a page, wait
for it to load, read the DOM through JavaScript, click, type, and collect
console errors and every network request. No new dependency: Chromium speaks
CDP over a websocket, and aiohttp has a websocket client.

Without Chromium the browser tests skip and say why; with
KOURIER_REQUIRE_CHROMIUM=1 (as `.ci/run` sets) they fail instead.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-default-apps", "--disable-extensions", "--remote-debugging-port=0",
         "--hide-scrollbars", "--mute-audio"]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("KOURIER_REQUIRE_CHROMIUM") == "1":
        pytest.fail(f"Chromium is required (KOURIER_REQUIRE_CHROMIUM=1) but {reason}",
                    pytrace=False)
    pytest.skip(f"browser test skipped: {reason} (apt-get install chromium)")


class Page:
    """One tab: CDP commands, plus what the tab logged and fetched."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.waiting: dict[int, asyncio.Future[Any]] = {}
        self.errors: list[str] = []  # console errors, uncaught exceptions, failed loads
        self.requests: list[str] = []  # every URL the page asked for
        self.loaded = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    async def send(self, method: str, **params: Any) -> Any:
        msg_id = next(self.ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting[msg_id] = future
        await self.ws.send_json({"id": msg_id, "method": method, "params": params})
        return await asyncio.wait_for(future, 15)

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self.waiting:
                future = self.waiting.pop(data["id"])
                if "error" in data:
                    future.set_exception(RuntimeError(f"CDP: {data['error']}"))
                else:
                    future.set_result(data.get("result", {}))
            else:
                self._event(data.get("method", ""), data.get("params", {}))

    def _event(self, method: str, p: dict[str, Any]) -> None:
        if method == "Page.loadEventFired":
            self.loaded.set()
        elif method == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
            self.errors.append("console: " + " ".join(str(a.get("value", a.get("description")))
                                                      for a in p["args"]))
        elif method == "Runtime.exceptionThrown":
            self.errors.append("exception: " + p["exceptionDetails"].get("text", ""))
        elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
            self.errors.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}")
        elif method == "Network.requestWillBeSent":
            self.requests.append(p["request"]["url"])

    async def goto(self, url: str) -> None:
        self.loaded.clear()
        await self.send("Page.navigate", url=url)
        await self.wait_loaded()

    async def wait_loaded(self) -> None:
        await asyncio.wait_for(self.loaded.wait(), 15)

    async def js(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                                 awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"JavaScript failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def text(self, selector: str = "body") -> str:
        return await self.js(f"document.querySelector({json.dumps(selector)}).innerText")

    async def submit(self, click_selector: str) -> None:
        """Click a submit button (a real click event) and wait for the next page."""
        self.loaded.clear()
        await self.js(f"document.querySelector({json.dumps(click_selector)}).click()")
        await self.wait_loaded()

    async def fill(self, selector: str, value: str) -> None:
        await self.js(f"document.querySelector({json.dumps(selector)}).value = {json.dumps(value)}")

    async def screenshot(self, path: Path, width: int, height: int, mobile: bool = False) -> None:
        await self.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
                        deviceScaleFactor=1 if not mobile else 2, mobile=mobile)
        await self.js("document.fonts ? document.fonts.ready.then(() => 1) : 1")
        full = await self.js("Math.ceil(document.documentElement.scrollHeight)")
        await self.send("Emulation.setDeviceMetricsOverride", width=width, height=max(height, full),
                        deviceScaleFactor=1 if not mobile else 2, mobile=mobile)
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))


class Browser:
    """A running Chromium's DevTools endpoint; `context` names a browser context of its own
    (cookies, storage) that every new page opens in, when there is one."""

    def __init__(self, endpoint: str, session: aiohttp.ClientSession,
                 control: Page | None = None, context: str = "") -> None:
        self.endpoint = endpoint  # http://127.0.0.1:<port>
        self.session = session
        self.control = control  # the browser-level connection that made the context
        self.context = context

    async def new_page(self) -> Page:
        if self.control is None:
            async with self.session.put(f"{self.endpoint}/json/new?about:blank") as r:
                url = (await r.json())["webSocketDebuggerUrl"]
        else:
            made = await self.control.send("Target.createTarget", url="about:blank",
                                           browserContextId=self.context)
            url = f"ws://{self.endpoint.removeprefix('http://')}/devtools/page/{made['targetId']}"
        ws = await self.session.ws_connect(url, max_msg_size=0)
        page = Page(ws)
        for domain in ("Page", "Runtime", "Log", "Network"):
            await page.send(f"{domain}.enable")
        return page


@contextlib.contextmanager
def chromium_process() -> Iterator[str]:
    """A headless Chromium with a throwaway profile, ended when the block ends; its endpoint."""
    binary = chromium_path()
    if binary is None:
        unavailable("no chromium on PATH")
    with tempfile.TemporaryDirectory(prefix="kourier-chromium-") as profile:
        # Its own process group: Chromium's helper processes (zygote, renderers) outlive
        # a terminated parent and keep writing into the profile while it is removed.
        process = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        try:
            yield f"http://127.0.0.1:{_devtools_port(Path(profile), process)}"
        finally:
            _end_group(process)


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """A headless Chromium of its own, ended when the block ends."""
    with chromium_process() as endpoint:
        async with aiohttp.ClientSession() as session:
            yield Browser(endpoint, session)


@contextlib.asynccontextmanager
async def isolated(endpoint: str) -> AsyncIterator[Browser]:
    """A fresh browser context (no cookies, no storage) in a running Chromium, disposed of
    when the block ends: tests share one Chromium process, never a session."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{endpoint}/json/version") as r:
            url = (await r.json())["webSocketDebuggerUrl"]
        ws = await session.ws_connect(url, max_msg_size=0)
        control = Page(ws)
        context = (await control.send("Target.createBrowserContext"))["browserContextId"]
        try:
            yield Browser(endpoint, session, control, context)
        finally:
            await control.send("Target.disposeBrowserContext", browserContextId=context)
            await ws.close()
            await control.reader


def _end_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM Chromium's whole process group, SIGKILL it after 10 s, and reap the parent."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # helpers still alive after the parent
        return


def _devtools_port(profile: Path, process: subprocess.Popen[bytes]) -> int:
    """Chromium writes the port it chose into the profile's DevToolsActivePort."""
    marker = profile / "DevToolsActivePort"
    for _ in range(300):
        if process.poll() is not None:
            unavailable(f"chromium exited with status {process.returncode} at start")
        if marker.exists() and marker.read_text().strip():
            return int(marker.read_text().split()[0])
        time.sleep(0.05)  # polling a file Chromium writes: no event to wait on
    unavailable("chromium did not open its DevTools port within 15 s")
