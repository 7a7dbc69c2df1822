"""Process entry points, the composition root: `serve` and `send-only`, their signals.

Both processes install the `requests` tap, build a `Relay`
(`relay.lifecycle`), share one signal set-up (SIGTERM/SIGINT stop, SIGHUP
reloads) and settle the garbage collector once start-up is done.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
from collections.abc import Callable, Mapping

from aiohttp import web

from relay import server
from relay.lifecycle import Relay
from relay.logs import fields
from relay.notify import install_requests_tap
from relay.processes import SendingProcesses, follow_parent

log = logging.getLogger(__name__)


def on_signals(relay: Relay, stop: asyncio.Event,
               hangup: Callable[[], None] = lambda: None) -> None:
    """SIGTERM/SIGINT set `stop`; SIGHUP reloads the config (then calls `hangup`)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def reload() -> None:
        relay.tasks.spawn("reload", relay.reload_quietly())
        hangup()

    loop.add_signal_handler(signal.SIGHUP, reload)


async def serve(config_path: str, env: Mapping[str, str] | None = None,
                listen: str | None = None, log_args: list[str] | None = None) -> None:
    """Run until SIGTERM/SIGINT; SIGHUP reloads the config."""
    install_requests_tap()
    relay = Relay(config_path, env)
    host, _, port = (listen or relay.config.server.listen).rpartition(":")
    # Bind before the store and worker start: a relay that cannot listen (the port is
    # taken, say by another relay on the same store) must not start sending either.
    sock = bind(host or "0.0.0.0", int(port))
    extra = SendingProcesses(config_path, relay.config.sending.processes - 1, log_args or [])
    app = relay.web_app()
    if extra.count:
        app.on_startup.append(lambda _: _start_extra(relay, extra))
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = await server.listen(runner, host or "0.0.0.0", int(port), lambda: relay.config, sock)
    settle_garbage_collector()
    stop = asyncio.Event()
    on_signals(relay, stop, lambda: extra.signal(signal.SIGHUP))
    log.info("listening", extra=fields(listen=f"{host}:{port}", path=relay.config.server.path,
                                       store=relay.config.store.url.split(":", 1)[0],
                                       pid=os.getpid()))
    await stop.wait()
    log.info("shutting down (grace %.0fs)", relay.config.sending.grace_period)
    await site.stop()
    await asyncio.gather(runner.cleanup(), extra.stop(relay.config.sending.grace_period))
    log.info("stopped")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; raises OSError (`socket.gaierror` for a name that does not resolve)."""
    host = host.removeprefix("[").removesuffix("]")  # [::1]:8080 names an IPv6 address
    family, *_ = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                    flags=socket.AI_PASSIVE)[0]
    return socket.create_server((host, port), family=family, backlog=1024)


async def _start_extra(relay: Relay, extra: SendingProcesses) -> None:
    extra.start()
    relay.store.subscribe(extra.wake)


async def send_only(config_path: str) -> int:
    """A sending-only process (`sending.processes`): the worker without the HTTP server.

    Returns the exit code: 1 after a crash of a background task, which nobody
    could see here otherwise (the parent logs a child's non-zero exit).
    """
    install_requests_tap()
    relay = Relay(config_path)
    stop = asyncio.Event()
    relay.tasks.on_crash = lambda name, error: stop.set()
    await relay.start()
    settle_garbage_collector()
    on_signals(relay, stop)
    follow_parent(relay.worker.wake, stop)
    log.info("sending only", extra=fields(pid=os.getpid()))
    await stop.wait()
    await relay.stop()
    return 1 if relay.tasks.crashed else 0


def settle_garbage_collector() -> None:
    """Move start-up objects out of the collector's sight and collect less often.

    Measured (bench/README.md): the collector's pauses made up much of the ack
    p99 under load; freezing the long-lived start-up heap cut p99 by about a
    quarter at no memory cost.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)
