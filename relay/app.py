"""Process entry point, the composition root: `serve` and its signals.

It installs the `requests` tap, builds a `Relay` (`relay.lifecycle`, which
starts the send processes of `sending.processes`), sets up the signals
(SIGTERM/SIGINT stop, SIGHUP reloads, in the send processes too) and settles
the garbage collector once start-up is done.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
from collections.abc import Mapping

from aiohttp import web

from relay import server
from relay.config import Config
from relay.httptap import install_requests_tap
from relay.lifecycle import Relay
from relay.logs import fields

log = logging.getLogger(__name__)


def on_signals(relay: Relay, stop: asyncio.Event) -> None:
    """SIGTERM/SIGINT set `stop`; SIGHUP reloads the config.

    A reload reaches the send processes through their pipe (`Relay.reload`).
    """
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def reload() -> None:
        relay.tasks.spawn("reload", relay.reload_quietly())

    loop.add_signal_handler(signal.SIGHUP, reload)


async def serve(config_path: str, env: Mapping[str, str] | None = None, *,
                listen: str | None = None, log_args: list[str] | None = None,
                loaded: tuple[str, Config] | None = None) -> None:
    """Run until SIGTERM/SIGINT; SIGHUP reloads the config. `loaded`: the file's text and
    config as the caller read them (else read here)."""
    install_requests_tap()
    # SIGHUP's default action ends the process: until on_signals() takes it over, one that
    # comes in (a config reloader, while the store is still awaited) is kept for later.
    early_hup = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, _early_hup, early_hup)
    # SIGTERM's default action ends the process with status 143, and PID 1 of a container
    # ignores it: `docker stop` of a relay still waiting for its database waited for its
    # SIGKILL. Until on_signals() takes over, a stop cancels the start-up.
    early_stop: list[int] = []
    starting = asyncio.current_task()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _early_stop, early_stop, sig, starting)
    relay = Relay(config_path, env, log_args=log_args or (), loaded=loaded)
    host, _, port = (listen or relay.config.server.listen).rpartition(":")
    # Bind before the store and worker start: a relay that cannot listen (the port is
    # taken, say by another relay on the same store) must not start sending either.
    sock = bind(host or "0.0.0.0", int(port))
    app = relay.web_app()
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    try:
        await runner.setup()
        site = await server.listen(runner, host or "0.0.0.0", int(port), lambda: relay.config,
                                   sock)
    except asyncio.CancelledError:
        if not early_stop:
            raise
        await runner.cleanup()  # what had started (the store, say) stops as at any stop
        log.info("stopped while starting")
        return
    settle_garbage_collector()
    stop = asyncio.Event()
    on_signals(relay, stop)
    if early_hup.is_set():  # the file may have changed after start-up read it
        relay.tasks.spawn("reload", relay.reload_quietly())
    log.info("listening", extra=fields(listen=f"{host}:{port}", path=relay.config.server.path,
                                       store=relay.config.store.url.split(":", 1)[0],
                                       pid=os.getpid()))
    await stop.wait()
    log.info("shutting down (grace %.0fs)", relay.config.sending.grace_period)
    await site.stop()
    await runner.cleanup()
    log.info("stopped")


def _early_stop(seen: list[int], sig: int, starting: asyncio.Task[None] | None) -> None:
    if not seen and starting is not None:
        log.info("%s while starting: stopping", signal.Signals(sig).name)
        starting.cancel()
    seen.append(sig)


def _early_hup(seen: asyncio.Event) -> None:
    if not seen.is_set():
        log.info("SIGHUP while starting: the config is reloaded once the relay is up")
    seen.set()


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; raises OSError (`socket.gaierror` for a name that does not resolve)."""
    host = host.removeprefix("[").removesuffix("]")  # [::1]:8080 names an IPv6 address
    family, *_ = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                    flags=socket.AI_PASSIVE)[0]
    return socket.create_server((host, port), family=family, backlog=1024)


def settle_garbage_collector() -> None:
    """Move start-up objects out of the collector's sight and collect less often.

    Measured (bench/README.md): the collector's pauses made up much of the ack
    p99 under load; freezing the long-lived start-up heap cut p99 by about a
    quarter at no memory cost.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)
