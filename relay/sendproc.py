"""A send process (`sending.processes: N`): sends what the relay process hands it, nothing else.

    python -m relay.sendproc --reply-fd N [--log-level info] [--log-format text]

It never opens the store: the relay process claims, decides and records. Frames
(`relay.frames`) arrive on stdin: the config text first and again after every
reload of the relay process (so both resolve a receiver URL from the same text),
then sends as plain values (receiver name, URL index, title, body, type,
format, extra headers such as an email's thread headers). Each send runs on a
thread of its own with the in-process code (`Notifier.send_blocking`: borrowed
Apprise objects, the status tap, kept-alive sessions, redaction, timeouts),
and its outcome goes back on the reply pipe.

End of file on stdin (the relay process stopped, or died) ends it at once: the
relay process has already recorded or released every job it cares about, and
a send cut short is retried from the store like any other. SIGINT, SIGTERM and
SIGHUP are left to the relay process, which may be draining while a terminal or
a service manager signals the whole process group.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from relay import frames
from relay.config import loads
from relay.errors import ConfigError
from relay.httptap import install_requests_tap
from relay.logs import scrub, setup
from relay.notify import Notifier, Outcome

log = logging.getLogger("relay.sendproc")
# Threads start only as sends overlap; the relay process never has more in flight
# than sending.concurrency (at most 512, the schema's bound) plus sends it gave up on.
MAX_THREADS = 512


class SendProcess:
    """The loop of one send process: frames in, sends on threads, outcomes out."""

    def __init__(self, reply_fd: int) -> None:
        self.reply_fd = reply_fd
        self.notifier: Notifier | None = None
        self.threads = ThreadPoolExecutor(MAX_THREADS, thread_name_prefix="send")
        self._write_lock = threading.Lock()

    def run(self, stream: Any) -> None:
        while (message := frames.read(stream)) is not None:
            op = message.get("op")
            if op == "send":
                # the notifier of the config in force when the send was handed over
                self.threads.submit(self._send, self.notifier, message)
            elif op == "config":
                self._configure(message)
            else:
                log.error("unknown frame %r from the relay process", str(op)[:40])

    def _configure(self, message: dict[str, Any]) -> None:
        try:
            config = loads(message["text"], message.get("file", "<config>"), message.get("env"))
        except ConfigError as e:  # the relay process validated this text; the environment moved
            log.error("send process could not load the config; keeping the one it had:\n%s", e)
            self._reply({"op": "config", "ok": False, "error": scrub(str(e))[:2000]})
            return
        first = self.notifier is None
        self.notifier = Notifier(config.receivers, self.threads, config.sending.attempt_timeout)
        self._reply({"op": "config", "ok": True})
        if first:
            _settle_garbage_collector()

    def _send(self, notifier: Notifier | None, m: dict[str, Any]) -> None:
        if notifier is None:
            outcome = Outcome("retry", "the send process has no config yet")
        else:
            try:
                outcome = notifier.send_blocking(m["receiver"], m["index"], m["title"], m["body"],
                                                 m["type"], m["format"], m.get("headers"))
            except Exception as e:  # a bug: one failed attempt, never a dead process
                outcome = Outcome("retry", scrub(f"{type(e).__name__}: {e}"))
        self._reply({"op": "outcome", "id": m["id"], "kind": outcome.kind,
                     "error": outcome.error, "delay": outcome.min_delay,
                     "status": outcome.status})

    def _reply(self, message: dict[str, Any]) -> None:
        data = memoryview(frames.encode(message))
        with self._write_lock:
            while data:
                data = data[os.write(self.reply_fd, data):]


# Below the relay process's CPU priority: when the cores are busy, the kernel runs ingest
# (an acknowledgement someone waits for) first, and sends take the rest of the CPU; with
# a core to spare they run at full speed all the same (bench/README.md, issue 17).
NICENESS = 10


def _settle_garbage_collector() -> None:
    """As in the relay process: start-up objects out of the collector's sight (relay.app)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m relay.sendproc")
    parser.add_argument("--reply-fd", type=int, required=True)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", default="text")
    args = parser.parse_args(argv)
    os.nice(NICENESS)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    setup(args.log_level, args.log_format)
    install_requests_tap()
    code = 0
    try:
        SendProcess(args.reply_fd).run(sys.stdin.buffer)
    except (frames.FrameError, OSError) as e:  # the relay process is gone or wrote garbage
        log.error("send process stops: %s", e)
        code = 1
    logging.shutdown()
    sys.stdout.flush()
    os._exit(code)  # do not wait for a send thread stuck in a socket: nobody awaits it


if __name__ == "__main__":
    main()
