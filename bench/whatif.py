"""What-if launcher: `kourier-relay serve` with candidate optimisations patched in, to size them.

    python bench/whatif.py quietlog,switch serve -c bench/config-e2e.yaml
    python bench/run.py --whatif quietlog,switch --scenarios 1,2     # the suite, patched

For measuring only: each patch replaces one function of the relay in this process
with the change proposed in bench/README.md, so the gain can be measured before
anyone edits relay/. The patches copy today's code around the change; once relay/
implements (or changes) a function, its patch here is obsolete and refuses to apply
(it checks the function it replaces still has the expected shape). Patches for changes
that have landed are removed (claim through the index, one wake-up per store batch,
counter request ids, the kept wake-up and Apprise on our own send thread
(AppriseAsset(service_timeout=0)) all landed by e8aa9d1).

Patches:
  quietlog  per-event/per-send INFO lines ("accepted", "sent") not written (WARNING+ only)
  nosync    PRAGMA synchronous=NORMAL instead of FULL (not a proposal for the default:
            shows what the per-batch fsync costs)
  switch    sys.setswitchinterval(0.5 ms) instead of 5 ms (the event loop gets the GIL
            back sooner from send threads)
  ingestonly  this process only ingests; with run.py --extra-workers N the N other
            processes (BENCH_ROLE=worker) deliver from the same store
  keepalive one requests.Session per send thread for Apprise's HTTP plugins (connection
            reuse) instead of a new Session and TCP connection per send
  procpool  Apprise sends run in 3 worker processes (ProcessPoolExecutor) instead of the
            relay's thread pool; the relay process stays the only SQLite writer
  gcfreeze  gc.freeze() after start-up and gc.set_threshold(20000, 50, 100): fewer and
            shorter collector pauses in the event loop
  poll      idle workers re-check the store every 20 ms instead of 1 s (relay/worker.py
            POLL): a delivery process that is not woken by the ingesting one
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _expect(fn: Any, *snippets: str) -> None:
    src = inspect.getsource(fn)
    for s in snippets:
        if s not in src:
            raise SystemExit(f"whatif: {fn.__qualname__} changed ({s!r} not found): this patch"
                             " is obsolete")


def quietlog() -> None:
    import relay.cli

    original = relay.cli.setup

    def setup(level: str = "info", fmt: str = "text") -> None:
        original(level, fmt)
        logging.getLogger("relay").setLevel(logging.WARNING)

    relay.cli.setup = setup


def nosync() -> None:
    from relay.store import sqlite as s

    original = s.SQLiteStore.__init__

    def __init__(self: Any, path: str, synchronous: str = "NORMAL", **kw: Any) -> None:
        original(self, path, synchronous, **kw)

    s.SQLiteStore.__init__ = __init__


def switch() -> None:
    # the GIL is handed over every 5 ms by default: an event loop that waits for it behind
    # Apprise send threads answers late
    sys.setswitchinterval(0.0005)


def ingestonly() -> None:
    """This process only ingests (its worker stays paused); run with --extra-workers, whose
    processes get BENCH_ROLE=worker and deliver."""
    if os.environ.get("BENCH_ROLE") == "worker":
        return
    import relay.worker as w

    original = w.Worker.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.paused = True

    w.Worker.__init__ = __init__


def poll() -> None:
    """Idle workers look for new jobs every 20 ms instead of every 1 s (a worker process
    that is not told about new jobs by the process that accepted them)."""
    import relay.worker as w

    w.POLL = 0.02


def keepalive() -> None:
    """Apprise's HTTP plugins call requests.post(), which builds a new Session (and a new
    TCP/TLS connection) per send; route them through one Session per send thread instead
    (cookies cleared before each request, so nothing carries over between sends)."""
    import threading

    import requests
    import requests.api

    local = threading.local()

    def request(method: str, url: str, **kwargs: Any) -> Any:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        session.cookies.clear()
        return session.request(method=method, url=url, **kwargs)

    requests.api.request = request  # requests.post/get ... look it up here
    requests.request = request  # Apprise's plugins call requests.request(...) directly


_SEND_CACHE: dict[str, Any] = {}


def _proc_send(url: str, timeout: float, title: str, body: str, notify_type: str,
               body_format: str) -> Any:
    """In a send process: today's Notifier.send_blocking for one URL, its objects cached."""
    from relay.config import ReceiverConfig
    from relay.notify import Notifier

    notifier = _SEND_CACHE.get(url)
    if notifier is None:
        notifier = _SEND_CACHE[url] = Notifier({"r": ReceiverConfig(name="r", urls=(url,))},
                                              None, timeout)  # type: ignore[arg-type]
    return notifier.send_blocking("r", 0, title, body, notify_type, body_format)


def gcfreeze() -> None:
    """Fewer, shorter garbage-collector pauses: start-up objects frozen out of the
    collector's view and a larger young generation (ack-latency jitter)."""
    import gc

    import relay.app as app

    original = app.serve

    async def serve(*args: Any, **kwargs: Any) -> Any:
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 50, 100)
        return await original(*args, **kwargs)

    app.serve = serve


CHILD_PATCHES = ("keepalive",)  # patches that matter inside a send process
_APPLIED: list[str] = []


def _child_patches(names: list[str]) -> None:
    import ctypes
    import signal

    # die with the relay: `serve` leaves through os._exit(), which shuts no pool down
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    for name in names:
        PATCHES[name]()


def procpool() -> None:
    """Apprise sends run in a pool of BENCH_SEND_PROCS (3) processes; the relay process keeps
    the store, the worker loop and ingest. Measures moving Apprise's CPU off the relay's GIL
    (a real design needs threads inside each send process for slow receivers)."""
    import asyncio
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import relay.notify as n

    _expect(n.Notifier.send, "loop.run_in_executor(self.executor, self.send_blocking")
    pool = ProcessPoolExecutor(int(os.environ.get("BENCH_SEND_PROCS", "3")),
                               mp_context=multiprocessing.get_context("spawn"),
                               initializer=_child_patches,
                               initargs=([p for p in _APPLIED if p in CHILD_PATCHES],))

    async def send(self: Any, receiver: str, index: int, title: str, body: str,
                   notify_type: str, body_format: str) -> Any:
        if receiver not in self.receivers or index >= len(self.receivers[receiver].urls):
            return n.Outcome("failed", f"receiver {receiver!r} (URL #{index}) is no longer"
                                       " in the config")
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(pool, _proc_send, self.receivers[receiver].urls[index],
                                      self.attempt_timeout, title, body, notify_type,
                                      body_format)
        try:
            return await asyncio.wait_for(future, self.attempt_timeout + 1.0)
        except TimeoutError:
            return n.Outcome("retry", f"timed out after {self.attempt_timeout:g}s",
                             n.MIN_WAIT_AFTER_TIMEOUT)

    n.Notifier.send = send


PATCHES = {"quietlog": quietlog, "nosync": nosync, "switch": switch,
           "ingestonly": ingestonly, "poll": poll, "keepalive": keepalive,
           "procpool": procpool, "gcfreeze": gcfreeze}


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    names = [p for p in sys.argv[1].split(",") if p and p != "none"]
    _APPLIED[:] = names
    for name in names:
        if name not in PATCHES:
            raise SystemExit(f"whatif: unknown patch {name!r}; known: {', '.join(PATCHES)}")
        PATCHES[name]()
    from relay.cli import main as cli

    sys.argv = ["kourier-relay", *sys.argv[2:]]
    cli()


if __name__ == "__main__":
    main()
