"""The HTTP server the relay listens with: read timeouts, a connection cap, quiet refusals.

aiohttp (3.14) closes idle keep-alive connections but bounds neither slow
request headers nor the number of open connections, and its own parser
refusals bypass the app's middlewares: a text/plain answer that echoes the
raw header and a logged traceback holding it (bearer token included). This
module closes those gaps around aiohttp's `RequestHandler`; body read
timeouts are the webhook's (`web.read_body`), because only the handler reads
the body. It leans on private `RequestHandler` parts: `_waiter` (set while it
waits for the next request), `_request_count` (requests parsed so far), and
`_messages` / `_ErrInfo` / `_close` (a parser refusal inside a body fails that
body instead of waiting as a next request); tests/test_hostile.py fails if an
aiohttp upgrade moves them.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from aiohttp import http_exceptions as hx
from aiohttp import web
from aiohttp.web_protocol import RequestHandler, RequestPayloadError, _ErrInfo

from relay.config import Config, ServerConfig

log = logging.getLogger(__name__)
LOG_EVERY = 10.0  # each kind of refusal is logged at most once per this many seconds
LINGER = 10.0  # aiohttp's default for reading the rest of a body it answered early
# After a 408 the connection is half-closed and what the client still sends is read and
# dropped for this long: closing at once makes the kernel reset the connection at the
# client's next byte, and a reset drops the 408 before the client has read it.
DRAIN_FOR = 2.0
FD_RESERVE = 64  # open files besides connections: store, logs, pipes, child processes
FD_PER_SEND = 4  # a send thread's kept-alive sockets (one per receiver host it talks to)
# asyncio accepts up to `backlog` connections per loop pass before any of them reaches the
# cap; a small burst (with the kernel's queue kept long) bounds that overshoot.
ACCEPT_BURST = 16
ACCEPT_SLACK = 4 * ACCEPT_BURST  # accepted connections not yet counted, across loop passes
MIN_CONNECTIONS = 16
_TIMEOUT_BODY = b'{"error": "Request timeout", "details": "the request headers did not arrive in time"}'
REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                   % (len(_TIMEOUT_BODY), _TIMEOUT_BODY))


class LogThrottle:
    """One log line per kind and interval, counting the ones it left out: a flood of bad
    connections must not turn into a flood of log lines."""

    def __init__(self, logger: logging.Logger, every: float = LOG_EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger, self.every, self.clock = logger, every, clock
        self._last: dict[str, float] = {}
        self._left_out: dict[str, int] = {}

    def __call__(self, kind: str, level: int, msg: str, *args: Any) -> None:
        now = self.clock()
        if now - self._last.get(kind, -self.every) < self.every:
            self._left_out[kind] = self._left_out.get(kind, 0) + 1
            return
        self._last[kind] = now
        left_out = self._left_out.pop(kind, 0)
        suffix = f" ({left_out} more like it in the last {self.every:.0f}s)" if left_out else ""
        self.logger.log(level, msg + suffix, *args)


def open_files_cap(send_threads: int) -> int:
    """Connections that fit under the open-files limit, leaving room for everything else."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(MIN_CONNECTIONS, soft - FD_RESERVE - ACCEPT_SLACK - FD_PER_SEND * send_threads)


def raise_open_files_limit(ceiling: int = 65536) -> None:
    """Lift the soft open-files limit to the hard one (as Go does at start-up): containers
    often start with soft 1024 under a much higher hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = ceiling if hard == resource.RLIM_INFINITY else min(hard, ceiling)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as e:
            log.warning("could not raise the open-files limit from %d: %s", soft, e)


class Connections:
    """Open connections, least recently active first, and the cap on how many."""

    def __init__(self, cap: Callable[[], int], note: LogThrottle) -> None:
        self.cap = cap
        self.note = note
        self.open: OrderedDict[GuardedHandler, None] = OrderedDict()

    def opened(self, conn: GuardedHandler) -> None:
        self.open[conn] = None
        cap = self.cap()
        if len(self.open) <= cap:
            return
        victim = next((c for c in self.open if c is not conn and c.idle()), None)
        if victim is None:  # every other connection is serving a request: refuse this one
            self.note("cap-busy", logging.WARNING,
                      "refused a connection: all %d allowed connections are busy", cap)
            victim = conn
        else:
            self.note("cap-idle", logging.WARNING,
                      "connection cap (%d) reached: closed the longest idle connection", cap)
        self.open.pop(victim, None)
        victim.force_close()

    def active(self, conn: GuardedHandler) -> None:
        if conn in self.open:
            self.open.move_to_end(conn)

    def closed(self, conn: GuardedHandler) -> None:
        self.open.pop(conn, None)


def describe(exc: BaseException | None) -> str:
    """What was wrong with a refused request, in our words: aiohttp's own messages quote
    the raw bytes of the offending line, which may be an Authorization header."""
    if isinstance(exc, RequestPayloadError):  # a body error, wrapped; the cause says which
        exc = exc.__cause__
    for kind, text in _DESCRIPTIONS:
        if isinstance(exc, kind):
            return text
    return "malformed HTTP request"


_DESCRIPTIONS: tuple[tuple[type[BaseException], str], ...] = (
    (hx.LineTooLong, "the request line or a header is too long (limit 8190 bytes)"),
    (hx.BadHttpMethod, "unknown HTTP method"),
    (hx.BadStatusLine, "malformed request line"),
    (hx.InvalidURLError, "malformed request target"),
    (hx.InvalidHeader, "malformed header"),
    (hx.TransferEncodingError, "malformed chunked body"),
    (hx.ContentLengthError, "body shorter than its Content-Length"),
    (hx.ContentEncodingError, "body cannot be decoded by its Content-Encoding"),
    (hx.BadHttpMessage, "malformed request headers"),
)
BODY_ERRORS = (hx.HttpProcessingError, RequestPayloadError)


class GuardedHandler(RequestHandler):
    """aiohttp's request handler with a header read deadline, a place in the connection
    cap and JSON refusals that never quote the request."""

    __slots__ = ("_guard", "_header_timeout", "_header_clock", "_header_count", "_partial",
                 "_body", "_draining", "refused")

    def __init__(self, manager: web.Server, guard: Listener, header_timeout: float,
                 **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._header_timeout = header_timeout
        self._header_clock: asyncio.TimerHandle | None = None
        self._header_count = 0
        self._partial = False
        self._body: Any = None  # the newest request's body stream, while it may be arriving
        self._draining = False
        self.refused = False

    def idle(self) -> bool:
        """Waiting for a request (nothing, or only part of its headers, has arrived)."""
        return self._waiter is not None and not self._waiter.done()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.refused:
            self.force_close()
        else:
            self._start_header_clock()

    def force_close(self) -> None:
        self.refused = True  # before it has a transport: close as soon as it gets one
        super().force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_header_clock()
        self._guard.connections.closed(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._draining:  # answered and half-closed: what still trickles in is dropped
            return
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:  # headers complete (the usual case: one packet)
            self._stop_header_clock()
            message, body = self._messages[-1]  # a request, or the parser's refusal
            if isinstance(message, _ErrInfo):
                self._refused(message)
            else:
                self._body = body
        elif self._header_clock is not None:
            self._partial = True
        elif self.idle():  # the first bytes of the next request on a kept-alive connection
            self._partial = True
            self._start_header_clock()
        self._guard.connections.active(self)

    def _refused(self, message: Any) -> None:
        """A parser refusal while the body before it is still arriving is that body's (its
        chunked framing broke): aiohttp would queue it as a next request, and leave the
        handler waiting out body_timeout for the body."""
        if self._body is not None and not self._body.is_eof():
            self._messages.pop()
            exc = message.exc if isinstance(message.exc, hx.PayloadEncodingError) \
                else hx.TransferEncodingError("broken chunked framing")
            self._body.set_exception(exc)  # the handler's read fails: its 400
            self._close = True  # nothing after broken framing can be read: answer, then close
        self._body = None

    def _start_header_clock(self) -> None:
        self._header_count = self._request_count
        self._header_clock = self._loop.call_later(self._header_timeout, self._headers_late)

    def _stop_header_clock(self) -> None:
        if self._header_clock is not None:
            self._header_clock.cancel()
            self._header_clock = None
        self._partial = False

    def _headers_late(self) -> None:
        self._header_clock = None
        if self._request_count != self._header_count or self.transport is None:
            return
        if self._partial:  # someone is talking: say why before hanging up
            self._guard.note("header-timeout", logging.INFO,
                             "closed a connection: request headers took over %.1fs",
                             self._header_timeout)
            self.transport.write(REQUEST_TIMEOUT)
            if self.transport.can_write_eof():  # a lingering close: see _drain
                self.transport.write_eof()
                self._draining = True
                self._loop.call_later(DRAIN_FOR, self.force_close)
                return
        self.force_close()

    def log_exception(self, *args: Any, **kw: Any) -> None:
        # After an answer, aiohttp reads the rest of the body ("lingering") and logs a
        # traceback when that body is corrupt; the request was already answered: stay quiet.
        if isinstance(kw.get("exc_info"), BODY_ERRORS):
            log.debug("dropped the rest of a malformed body")
            return
        super().log_exception(*args, **kw)

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp: too late for another answer
            raise ConnectionError("response already started")
        if isinstance(exc, hx.HttpProcessingError):
            details = describe(exc)
            self._guard.note("refused", logging.WARNING,
                             "refused a malformed request from %s: %s", request.remote, details)
            resp = _json_error(400, "Bad request", details)
        elif isinstance(exc, ConnectionError):  # the client went away mid-request
            resp = _json_error(400, "Bad request", "connection lost")
        elif status == 504:
            resp = _json_error(504, "Gateway timeout", "the request took too long")
        else:  # a bug of ours: keep the traceback, answer in our shape
            log.error("error handling %s %s", request.method, request.path, exc_info=exc)
            resp = _json_error(500, "Internal server error", "the relay failed; see its log")
        resp.force_close()
        return resp


def _json_error(status: int, err: str, details: str) -> web.Response:
    return web.json_response({"error": err, "details": details}, status=status)


class Listener:
    """Protocol factory for the listening socket: one GuardedHandler per connection,
    settings read from the live config at each connection (so a reload applies)."""

    def __init__(self, server: web.Server, config: Callable[[], Config]) -> None:
        self.server = server
        self.config = config
        self.note = LogThrottle(log)
        self.fd_cap = open_files_cap(config().sending.concurrency)
        self.connections = Connections(self.cap, self.note)
        explicit = config().server.max_connections
        if explicit > self.fd_cap:
            log.warning("server.max_connections %d is more than the open-files limit allows"
                        " (%d): connections may fail with EMFILE", explicit, self.fd_cap)

    def cap(self) -> int:
        return self.config().server.max_connections or self.fd_cap

    def __call__(self) -> GuardedHandler:
        s: ServerConfig = self.config().server
        # aiohttp's Server keeps the AppRunner's handler arguments in `_kwargs`.
        kwargs = {**self.server._kwargs, "keepalive_timeout": s.keepalive_timeout,
                  "lingering_time": min(LINGER, s.body_timeout)}
        conn = GuardedHandler(self.server, self, s.header_timeout,
                              loop=asyncio.get_running_loop(), **kwargs)
        # Counted here, when asyncio has just accepted the socket, not a loop pass later.
        self.connections.opened(conn)
        return conn

    def quiet_accept_errors(self, loop: asyncio.AbstractEventLoop) -> None:
        """asyncio reports EMFILE on accept once per queued connection, with a traceback
        each (tens of MB/s under a flood): log it once per interval instead."""
        previous = loop.get_exception_handler()

        def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            if str(context.get("message", "")).startswith("socket.accept() out of system"):
                exc = context.get("exception")
                self.note("accept", logging.ERROR, "cannot accept connections: %s",
                          getattr(exc, "strerror", None) or exc)
            elif previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        loop.set_exception_handler(handler)


class GuardedSite(web.TCPSite):
    """A TCPSite whose connections are made by a Listener."""

    __slots__ = ("listener", "sock")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, listener: Listener,
                 backlog: int = 1024, sock: socket.socket | None = None) -> None:
        super().__init__(runner, host, port, backlog=backlog)
        self.listener = listener
        self.sock = sock  # bound already (app.bind), so that a taken port fails before start-up

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        self.listener.quiet_accept_errors(loop)
        if self.sock is not None:
            self._server = await loop.create_server(self.listener, sock=self.sock,
                                                    backlog=ACCEPT_BURST)
        else:
            self._server = await loop.create_server(self.listener, self._host, self._port,
                                                    backlog=ACCEPT_BURST)
        for listening in self._server.sockets:  # a dup is the same socket: lengthen its queue
            with socket.fromfd(listening.fileno(), listening.family, listening.type) as same:
                same.listen(self._backlog)
        self._bound_port = self._server.sockets[0].getsockname()[1]


async def listen(runner: web.AppRunner, host: str, port: int,
                 config: Callable[[], Config], sock: socket.socket | None = None) -> GuardedSite:
    """Start serving `runner`'s app on host:port (or on `sock`, bound to it) behind the guards."""
    assert runner.server is not None, "call runner.setup() first"
    raise_open_files_limit()
    site = GuardedSite(runner, host, port, Listener(runner.server, config), sock=sock)
    await site.start()
    return site
