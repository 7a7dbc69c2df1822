"""The send processes of `sending.processes: N`: N-1 children that only send (`relay.sendproc`).

Apprise sends are CPU-bound Python; in the relay process they hold the GIL
against the event loop that acknowledges webhooks, and one process tops out
near one core. Here the relay process keeps the store (SQLite keeps one writer),
claims, decides and records; `SendPool.send()` hands each send to the least
busy child over a pipe and awaits its outcome, exactly like `Notifier.send`.

- A child that dies (killed, crashed) fails the sends it held as retries, so
  their jobs go back to the store with one attempt counted and are sent again
  (at least once, as documented); the pool starts another child, backing off
  while children keep dying young.
- While no child is ready (at start-up, while they load, or while every one is
  being restarted) a send runs in this process (`fallback`, the `Notifier` of
  the live config) instead of waiting: nothing waits on a child, and start-up
  does not wait for them either.
- A send that outlives the attempt timeout is a retry here; the child's thread
  stays counted as busy until the late answer comes, so no child is overfilled.
- `configure(text)` hands a reloaded config to every child (and to children
  started later); frames are ordered, so a send handed over after it uses it.
- `close()` ends the children (end of file on their stdin) after the worker
  has drained; a child also ends by itself when the relay process dies.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from relay import frames
from relay.logs import fields
from relay.notify import MIN_WAIT_AFTER_TIMEOUT, Outcome, Sender

log = logging.getLogger(__name__)
RESTART_DELAY = (0.2, 30.0)  # first and longest wait before starting a child again
YOUNG = 10.0  # a child that dies sooner than this after its start makes the next wait longer
STOP_WAIT = 5.0  # seconds a child gets to leave after end of file, then it is killed
DIED = "the send process stopped during the send (pid {pid}, {how})"


class _Child:
    """One send process: its pipes, the sends it holds, and those it was given up on."""

    def __init__(self, popen: subprocess.Popen[bytes], started: float) -> None:
        self.popen = popen
        self.started = started
        self.writer: asyncio.WriteTransport | None = None
        self.pending: dict[int, asyncio.Future[Outcome]] = {}
        self.late: set[int] = set()  # timed out or cancelled here, still busy there
        self.alive = True
        self.ready = False  # it has loaded its first config

    @property
    def load(self) -> int:
        return len(self.pending) + len(self.late)

    def write(self, message: dict[str, Any]) -> None:
        assert self.writer is not None
        self.writer.write(frames.encode(message))


class _Replies(asyncio.Protocol):
    def __init__(self, pool: SendPool, child: _Child) -> None:
        self.pool = pool
        self.child = child
        self.decoder = frames.Decoder()

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.decoder.feed(data)
        except frames.FrameError as e:
            log.error("send process %d wrote garbage (%s); stopping it", self.child.popen.pid, e)
            self.child.popen.kill()
            return
        for message in messages:
            self.pool._answer(self.child, message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool._lost(self.child)


class SendPool:
    """`count` send processes behind one `send()` (the worker's `Sender`)."""

    def __init__(self, count: int, config_text: str, config_file: str, attempt_timeout: float,
                 env: Mapping[str, str] | None = None, log_args: Sequence[str] = ()) -> None:
        self.fallback: Sender | None = None  # set by the owner: the live config's Notifier
        self.count = count
        self.text = config_text
        self.file = config_file
        self.attempt_timeout = attempt_timeout
        self.env = dict(env) if env is not None else None
        self.log_args = list(log_args)
        self.children: list[_Child] = []
        self.restarts = 0
        self._ids = itertools.count(1)
        self._delay = RESTART_DELAY[0]
        self._closing = False
        self._restarting: set[asyncio.Task[None]] = set()
        self._reaping: set[asyncio.Task[None]] = set()
        self._launched: list[tuple[subprocess.Popen[bytes], int]] = []

    def launch(self) -> None:
        """Start the processes now (they import while the relay process builds the rest)."""
        while len(self._launched) < self.count:
            self._launched.append(self._popen())

    async def start(self) -> None:
        """Connect the launched processes (launching any not yet) and hand them the config."""
        self.launch()
        while self._launched:
            await self._connect(*self._launched.pop(0))
        log.info("started %d send process(es)", self.count,
                 extra=fields(pids=",".join(str(c.popen.pid) for c in self.children)))

    def pids(self) -> list[int]:
        return [c.popen.pid for c in self.children if c.alive]

    def ready_count(self) -> int:
        """Children that have loaded their config and take sends."""
        return sum(1 for c in self.children if c.alive and c.ready)

    def configure(self, text: str, attempt_timeout: float) -> None:
        """A reload: every child (and every later one) loads this config text."""
        self.text = text
        self.attempt_timeout = attempt_timeout
        for child in self.children:
            if child.alive:
                child.write(self._config_frame())

    def _config_frame(self) -> dict[str, Any]:
        # `env`: the mapping the relay process interpolates ${VARS} with, when it is not its
        # environment (tests); the child's own environment is the relay process's.
        return {"op": "config", "text": self.text, "file": self.file, "env": self.env}

    async def send(self, receiver: str, index: int, title: str, body: str, notify_type: str,
                   body_format: str, headers: Mapping[str, str] | None = None) -> Outcome:
        child = self._pick()
        if child is None:
            if self.fallback is None:
                return Outcome("retry", "no send process is running")
            return await self.fallback.send(receiver, index, title, body, notify_type,
                                            body_format, headers)
        loop = asyncio.get_running_loop()
        job_id = next(self._ids)
        future: asyncio.Future[Outcome] = loop.create_future()
        child.pending[job_id] = future
        child.write({"op": "send", "id": job_id, "receiver": receiver, "index": index,
                     "title": title, "body": body, "type": notify_type, "format": body_format,
                     "headers": dict(headers) if headers else None})
        timer = loop.call_later(self.attempt_timeout + 1.0, self._expire, child, job_id)
        try:
            return await future
        except asyncio.CancelledError:  # the worker gave up (shutdown): the child still works
            if child.pending.pop(job_id, None) is not None:
                child.late.add(job_id)
            raise
        finally:
            timer.cancel()

    def _pick(self) -> _Child | None:
        """The least busy child that has loaded its config, if any."""
        ready = [c for c in self.children if c.alive and c.ready]
        return min(ready, key=lambda c: c.load) if ready and not self._closing else None

    def _expire(self, child: _Child, job_id: int) -> None:
        future = child.pending.pop(job_id, None)
        if future is not None and not future.done():
            child.late.add(job_id)
            future.set_result(Outcome("retry", f"timed out after {self.attempt_timeout:g}s",
                                      MIN_WAIT_AFTER_TIMEOUT))

    def _answer(self, child: _Child, message: dict[str, Any]) -> None:
        if message.get("op") == "config":
            if message.get("ok") and not child.ready:
                child.ready = True
                log.info("send process ready", extra=fields(pid=child.popen.pid))
            if not message.get("ok"):
                log.error("send process %d kept its previous config: %s", child.popen.pid,
                          message.get("error", "?"))
            return
        job_id = message.get("id")
        child.late.discard(job_id)  # type: ignore[arg-type]
        future = child.pending.pop(job_id, None)  # type: ignore[arg-type]
        if future is not None and not future.done():
            future.set_result(Outcome(message["kind"], message.get("error", ""),
                                      float(message.get("delay") or 0.0), message.get("status")))

    def _popen(self) -> tuple[subprocess.Popen[bytes], int]:
        """A new send process and the read end of its reply pipe."""
        read_fd, write_fd = os.pipe()
        try:
            popen = subprocess.Popen(
                [sys.executable, "-m", "relay.sendproc", "--reply-fd", str(write_fd),
                 *self.log_args], stdin=subprocess.PIPE, pass_fds=(write_fd,))
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        return popen, read_fd

    async def _connect(self, popen: subprocess.Popen[bytes], read_fd: int) -> None:
        loop = asyncio.get_running_loop()
        child = _Child(popen, time.monotonic())
        assert popen.stdin is not None
        child.writer, _ = await loop.connect_write_pipe(asyncio.Protocol, popen.stdin)
        await loop.connect_read_pipe(lambda: _Replies(self, child),
                                     os.fdopen(read_fd, "rb", buffering=0))
        child.write(self._config_frame())
        self.children.append(child)

    def _lost(self, child: _Child) -> None:
        """The child's reply pipe closed: it exited or was killed."""
        if not child.alive:
            return
        child.alive = False
        code = child.popen.poll()
        how = f"exit code {code}" if code is not None else "its reply pipe closed"
        for future in child.pending.values():
            if not future.done():
                future.set_result(Outcome("retry", DIED.format(pid=child.popen.pid, how=how)))
        child.pending.clear()
        if child.writer is not None:
            child.writer.close()
        self._track(self._reaping, self._reap(child))
        if self._closing:
            return
        log.error("send process %d stopped (%s); starting another", child.popen.pid, how,
                  extra=fields(pid=child.popen.pid))
        delay = 0.0
        if time.monotonic() - child.started < YOUNG:  # dying young: wait, longer each time
            delay, self._delay = self._delay, min(self._delay * 2, RESTART_DELAY[1])
        else:
            self._delay = RESTART_DELAY[0]
        self._track(self._restarting, self._restart(child, delay))

    async def _restart(self, child: _Child, delay: float) -> None:
        while True:
            await asyncio.sleep(delay)
            if self._closing:
                return
            try:
                popen, read_fd = self._popen()
                break
            except OSError as e:  # no process could start (out of memory, files): later
                delay = min(max(delay * 2, RESTART_DELAY[0]), RESTART_DELAY[1])
                log.error("could not start a send process (%s); trying again in %.1fs", e, delay)
        self.children.remove(child)
        self.restarts += 1
        await self._connect(popen, read_fd)

    async def _reap(self, child: _Child) -> None:
        try:
            await asyncio.to_thread(child.popen.wait, STOP_WAIT)
        except subprocess.TimeoutExpired:
            child.popen.kill()
            try:  # bounded too: a wait that never returns would hold the relay's exit
                await asyncio.to_thread(child.popen.wait, STOP_WAIT)
            except subprocess.TimeoutExpired:
                log.error("send process %d did not exit after SIGKILL; leaving it",
                          child.popen.pid, extra=fields(pid=child.popen.pid))

    @staticmethod
    def _track(tasks: set[asyncio.Task[None]], coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def close(self) -> None:
        """End every child (end of file on stdin), killing any that does not leave in time."""
        self._closing = True
        for task in list(self._restarting):
            task.cancel()
        for child in self.children:
            if child.writer is not None:
                child.writer.close()
        await asyncio.gather(*(self._reap(c) for c in self.children if c.alive),
                             *self._reaping, *self._restarting, return_exceptions=True)
        for child in self.children:
            for future in child.pending.values():
                if not future.done():
                    future.set_result(Outcome("retry", "the relay is stopping"))
