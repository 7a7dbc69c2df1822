"""More sending processes on the same store (`sending.processes: N`).

Apprise sends are CPU-bound Python under one GIL, so one process tops out at a
few hundred sends a second. With N > 1, `serve` starts N-1 children running
`kourier-relay send-only`: each is a worker without the HTTP server, claiming
from the same store (claims and leases keep them from sending a job twice).
The parent wakes them through their stdin when it accepts jobs; a child
whose stdin closes (its parent died, even by SIGKILL) shuts down cleanly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)
COALESCE = 0.002  # seconds: one wake-up byte per child per this long, however many accepts


class SendingProcesses:
    def __init__(self, config_path: str, count: int, log_args: list[str]) -> None:
        self.config_path = config_path
        self.count = count
        self.log_args = log_args
        self.children: list[subprocess.Popen[bytes]] = []
        self._scheduled = False

    def start(self) -> None:
        for _ in range(self.count):
            child = subprocess.Popen(
                [sys.executable, "-m", "relay", "send-only", "-c", self.config_path,
                 *self.log_args], stdin=subprocess.PIPE)
            assert child.stdin is not None
            os.set_blocking(child.stdin.fileno(), False)
            self.children.append(child)
        log.info("started %d extra sending process(es)", self.count,
                 extra={"fields": {"pids": ",".join(str(c.pid) for c in self.children)}})

    def wake(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_later(COALESCE, self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        for child in self.children:
            try:
                os.write(child.stdin.fileno(), b".")  # type: ignore[union-attr]
            except (BlockingIOError, BrokenPipeError, ValueError):
                pass  # a full pipe already holds a wake-up; a dead child is reported on stop

    def signal(self, sig: int) -> None:
        for child in self.children:
            if child.poll() is None:
                child.send_signal(sig)

    async def stop(self, grace: float) -> None:
        self.signal(signal.SIGTERM)
        for child in self.children:
            try:
                code = await asyncio.to_thread(child.wait, grace + 5.0)
            except subprocess.TimeoutExpired:
                child.kill()
                code = await asyncio.to_thread(child.wait)
            if code:
                log.warning("sending process %d exited with %d", child.pid, code)


def follow_parent(on_wake: Callable[[], None], stop: asyncio.Event) -> None:
    """In a child: stdin bytes are wake-ups; end of file means the parent is gone."""
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    os.set_blocking(fd, False)

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        if not data:
            loop.remove_reader(fd)
            stop.set()
            return
        on_wake()

    loop.add_reader(fd, readable)
