"""Relay processes for the tests, forked from a relay that has done its imports.

Starting `python -m relay` costs about half a second of CPU, nearly all of it
imports (aiohttp, Apprise loading its plugins); the suite starts about a hundred
relays and commands. So a test run starts one fork server (under xdist the
controller starts it for all workers; else the first test that needs it), which
imports what `python -m relay` imports and waits. `RelayProcess(args)` (a
`subprocess.Popen` look-alike) and `run_relay(args)` (`subprocess.run`) ask it to
fork; the child runs `python -m relay ARGS` as the interpreter would (`runpy`,
`sys.argv`, the working folder, the environment, resource limits, the caller's
files as fds 0-2, every other fd closed) and ends as the interpreter does (atexit,
the exit code, a traceback and 1 for an uncaught exception). The child is a real, separate relay
process: its own pid, signals, store, sockets and send processes. What differs
from an exec is only that the imports were done before the fork (and their objects
frozen out of the garbage collector's sight, `gc.freeze`); the tests that
prove the installed entry point itself (tests/test_forkserver.py,
tests/test_walkthrough.py, the import checks) exec the real command line.

Protocol, one SOCK_SEQPACKET connection per child: the client sends a JSON
request (argv, cwd, env, resource limits) with three fds; the server answers the
child's pid, then, when it has reaped the child, its return code as `Popen.returncode` has it
(negative: the signal that ended it). When the test process goes (its pipe to the
server closes), the server kills the children still running and exits.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import json
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import pytest

MAIN = str(Path(__file__).resolve().parent.parent / "relay" / "__main__.py")


# --- the server -----------------------------------------------------------------------


def _preload() -> None:
    """Import what `python -m relay` and its commands import, and let Apprise load its plugins."""
    import apprise

    import relay.app  # noqa: F401
    import relay.cli  # noqa: F401
    import relay.cli_client  # noqa: F401
    import relay.explain  # noqa: F401
    import relay.lint  # noqa: F401
    import relay.store.postgres  # noqa: F401
    import relay.store.sqlite  # noqa: F401
    import relay.ui  # noqa: F401

    apprise.Apprise.instantiate("json://localhost")
    # The preloaded heap is the same in every child: keep it out of their collections, as an
    # exec'd relay's start-up objects are once `settle_garbage_collector` has frozen them
    # (a child's first full collection otherwise walks all of it: ~40 % of a relay's start).
    gc.collect()
    gc.freeze()


def _child(request: dict[str, Any], fds: list[int]) -> None:
    """In the forked child: become `python -m relay ARGS`; never returns."""
    import atexit as _atexit
    import runpy
    import traceback

    try:  # whatever happens, this process never goes back to the server's loop
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        for kind, soft, hard in request["limits"]:
            resource.setrlimit(kind, (soft, hard))
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = [MAIN, *request["args"]]
    except BaseException as e:  # where an exec would have failed: say so, as exit 127
        with contextlib.suppress(BaseException):
            print(f"fork server: cannot start the relay: {e}", file=sys.stderr, flush=True)
        os._exit(127)
    code = 0
    try:
        runpy.run_module("relay", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 128 + signal.SIGINT
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        threading._shutdown()  # type: ignore[attr-defined]  # join non-daemon threads, as at exit
        _atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def serve(path: str) -> None:
    _preload()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(wake_r, selectors.EVENT_READ, "reap")
    selector.register(sys.stdin, selectors.EVENT_READ, "parent")
    print("ready", flush=True)
    waiting: dict[int, socket.socket] = {}
    while True:
        for key, _ in selector.select():
            if key.data == "parent":  # the test process is gone: so are its relays
                for pid in waiting:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                os.unlink(path)
                os.rmdir(os.path.dirname(path))
                return
            if key.data == "accept":
                conn, _ = listener.accept()
                message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
                if not message or len(fds) != 3:  # not one of our requests
                    for fd in fds:
                        os.close(fd)
                    conn.close()
                    continue
                pid = os.fork()
                if pid == 0:
                    _child(json.loads(message), fds)
                for fd in fds:
                    os.close(fd)
                _answer(conn, pid)
                waiting[pid] = conn
            else:
                while True:
                    try:
                        os.read(wake_r, 512)
                    except BlockingIOError:
                        break
            while waiting:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                conn = waiting.pop(pid)
                _answer(conn, os.waitstatus_to_exitcode(status))
                conn.close()


def _answer(conn: socket.socket, number: int) -> None:
    """A pid or a return code; a client that has gone (its RelayProcess collected unread)
    must not take the server down with it."""
    with contextlib.suppress(OSError):
        conn.send(str(number).encode())


# --- the client -----------------------------------------------------------------------

SHARED = "KOURIER_TEST_FORK_SERVER"  # its address, when the xdist controller started one
_lock = threading.Lock()
_server: tuple[subprocess.Popen[bytes], str] | None = None


def _start() -> tuple[subprocess.Popen[bytes], str]:
    """A fork server that this process owns: it goes when this process does."""
    path = os.path.join(tempfile.mkdtemp(prefix="kourier-fork-"), "server")
    proc = subprocess.Popen([sys.executable, "-m", "tests.forkserver", path],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            cwd=Path(MAIN).parent.parent)
    atexit.register(proc.stdin.close)  # type: ignore[union-attr]
    return proc, path


def _ready(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdout is not None
    if proc.stdout.readline() != b"ready\n":
        raise RuntimeError("the test fork server did not start")


def share_under_xdist(config: pytest.Config) -> None:
    """Under xdist, one fork server for the run, started by the controller while the
    workers start (each would otherwise import the relay once more for its own)."""
    if not hasattr(config, "workerinput") and config.getoption("numprocesses", None):
        global _server
        _server = _start()
        os.environ[SHARED] = _server[1]  # the workers inherit it


def _connect() -> socket.socket:
    global _server
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    shared = os.environ.get(SHARED)
    if shared:
        # The controller's server binds its socket once it has done its imports.
        deadline = time.monotonic() + 60
        while True:
            try:
                conn.connect(shared)
                return conn
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the run's fork server at {shared} never answered") from None
                time.sleep(0.05)  # polling the socket's appearance, bounded above
    with _lock:
        if _server is None or _server[0].poll() is not None:
            _server = _start()
            _ready(_server[0])
    conn.connect(_server[1])
    return conn


Target = int | IO[Any] | None


class RelayProcess:
    """`subprocess.Popen([python, -m, relay, *args], ...)`, forked from the fork server."""

    def __init__(self, args: Sequence[str], *, stdin: Target = None, stdout: Target = None,
                 stderr: Target = None, cwd: str | os.PathLike[str] | None = None,
                 env: dict[str, str] | None = None, text: bool = False,
                 limits: Mapping[int, tuple[int, int]] | None = None) -> None:
        """`limits`: resource limits the child sets before it starts (`resource.RLIMIT_*`)."""
        self.args = [sys.executable, "-m", "relay", *args]
        self.returncode: int | None = None
        self.stdin: IO[Any] | None = None
        self.stdout: IO[Any] | None = None
        self.stderr: IO[Any] | None = None
        self._readers: list[threading.Thread] = []
        self._read: dict[str, Any] = {}
        mine: list[int] = []  # the child's ends, closed here once sent

        def target(spec: Target, fd: int, reading: bool) -> int:
            if spec is None:
                return fd
            if spec == subprocess.DEVNULL:
                null = os.open(os.devnull, os.O_RDONLY if reading else os.O_WRONLY)
                mine.append(null)
                return null
            if spec == subprocess.PIPE:
                r, w = os.pipe()
                ours, theirs = (w, r) if reading else (r, w)
                mine.append(theirs)
                f: IO[Any] = os.fdopen(ours, "w" if reading else "r", encoding="utf-8") \
                    if text else os.fdopen(ours, "wb" if reading else "rb")
                setattr(self, ("stdin", "stdout", "stderr")[fd], f)
                return theirs
            return spec if isinstance(spec, int) else spec.fileno()

        fds = [target(stdin, 0, True), target(stdout, 1, False)]
        fds.append(fds[1] if stderr == subprocess.STDOUT else target(stderr, 2, False))
        request = {"args": list(args), "cwd": os.fspath(cwd or os.getcwd()),
                   "env": dict(os.environ if env is None else env),
                   "limits": [(kind, *pair) for kind, pair in (limits or {}).items()]}
        try:
            self._conn = _connect()
            socket.send_fds(self._conn, [json.dumps(request).encode()], fds)
            self.pid = int(self._conn.recv(64))
        finally:
            for fd in mine:
                os.close(fd)

    def _returned(self, timeout: float | None) -> int | None:
        if self.returncode is None:
            self._conn.settimeout(timeout)
            try:
                answer = self._conn.recv(64)
            except (BlockingIOError, TimeoutError):
                return None
            if not answer:
                raise RuntimeError(f"the test fork server went away before relay {self.pid} ended")
            self.returncode = int(answer)
            self._conn.close()
        return self.returncode

    def poll(self) -> int | None:
        return self._returned(0)

    def wait(self, timeout: float | None = None) -> int:
        code = self._returned(timeout)
        if code is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, input: str | bytes | None = None,
                    timeout: float | None = None) -> tuple[Any, Any]:
        """Popen.communicate: write input, read stdout and stderr to the end, then wait."""
        if self.stdin is not None and not self.stdin.closed:
            if input:
                self.stdin.write(input)
            self.stdin.close()
        if not self._readers:  # a second call, after a timeout, goes on with the same reads
            def drain(name: str) -> None:
                f = getattr(self, name)
                self._read[name] = f.read() if f is not None else None

            self._readers = [threading.Thread(target=drain, args=(n,), daemon=True)
                             for n in ("stdout", "stderr")]
            for t in self._readers:
                t.start()
        for t in self._readers:
            t.join(timeout)
            if t.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
        self.wait(timeout)
        for f in (self.stdout, self.stderr):
            if f is not None:
                f.close()
        return self._read["stdout"], self._read["stderr"]

    def __enter__(self) -> RelayProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.poll() is None:
            self.kill()
            self.wait()


def run_relay(args: Sequence[str], *, capture_output: bool = False, text: bool = False,
              timeout: float | None = None, cwd: str | os.PathLike[str] | None = None,
              env: dict[str, str] | None = None, stdout: Target = None, stderr: Target = None,
              input: str | bytes | None = None) -> subprocess.CompletedProcess[Any]:
    """subprocess.run for `python -m relay ARGS`: a timeout kills the child and raises."""
    if capture_output:
        stdout = stderr = subprocess.PIPE
    proc = RelayProcess(args, stdin=subprocess.PIPE if input is not None else None,
                        stdout=stdout, stderr=stderr, cwd=cwd, env=env, text=text)
    try:
        out, err = proc.communicate(input, timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    return subprocess.CompletedProcess(proc.args, proc.wait(), out, err)


if __name__ == "__main__":
    serve(sys.argv[1])
