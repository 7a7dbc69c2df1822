"""A real Matrix homeserver for tests: Synapse on a free loopback port, SQLite, no rate limits.

Synapse lives in its own virtualenv (`make synapse` puts it in `.cache/synapse`;
`KOURIER_SYNAPSE_PYTHON` names another interpreter that has it), so its many
pinned dependencies never touch the relay's. Without it the Matrix tests skip
and say why; `KOURIER_REQUIRE_SYNAPSE=1` (as `.ci/run` sets) makes that a failure.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

import pytest
import yaml

from tests.conftest import ROOT, free_port

ENV_PYTHON = "KOURIER_SYNAPSE_PYTHON"
NO_LIMIT = {"per_second": 10000, "burst_count": 10000}
LIMITS = {
    "rc_message": NO_LIMIT, "rc_registration": NO_LIMIT, "rc_admin_redaction": NO_LIMIT,
    "rc_joins": {"local": NO_LIMIT, "remote": NO_LIMIT}, "rc_joins_per_room": NO_LIMIT,
    "rc_login": {"address": NO_LIMIT, "account": NO_LIMIT, "failed_attempts": NO_LIMIT},
    "rc_invites": {"per_room": NO_LIMIT, "per_user": NO_LIMIT, "per_issuer": NO_LIMIT},
    "rc_room_creation": NO_LIMIT, "rc_presence": {"per_user": NO_LIMIT},
}
LOG_CONFIG = """\
version: 1
formatters: {plain: {format: '%(asctime)s %(levelname)s %(name)s %(message)s'}}
handlers: {file: {class: logging.FileHandler, filename: "{file}", formatter: plain}}
root: {level: WARNING, handlers: [file]}
disable_existing_loggers: false
"""


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("KOURIER_REQUIRE_SYNAPSE") == "1":
        pytest.fail(f"Synapse is required (KOURIER_REQUIRE_SYNAPSE=1) but {reason}", pytrace=False)
    pytest.skip(f"Matrix test skipped: {reason} (run `make synapse` to install it)")


def synapse_python() -> str | None:
    """The interpreter to run Synapse with (one that cannot start it fails at start-up, clearly)."""
    for candidate in (os.environ.get(ENV_PYTHON, ""), str(ROOT / ".cache/synapse/bin/python")):
        if candidate and Path(candidate).exists():
            return candidate
    return sys.executable if importlib.util.find_spec("synapse") else None


@dataclass
class Homeserver:
    base: str
    server_name: str
    shared_secret: str

    def request(self, method: str, path: str, body: Any = None, token: str = "") -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def register(self, user: str, password: str) -> str:
        """A user through the shared-secret admin API; returns its access token."""
        nonce = self.request("GET", "/_synapse/admin/v1/register")["nonce"]
        mac = hmac.new(self.shared_secret.encode(), "\0".join(
            [nonce, user, password, "notadmin"]).encode(), hashlib.sha1).hexdigest()
        return str(self.request("POST", "/_synapse/admin/v1/register", {
            "nonce": nonce, "username": user, "password": password, "admin": False,
            "mac": mac})["access_token"])

    def create_room(self, token: str, invite: list[str] = (), alias: str = "") -> str:  # type: ignore[assignment]
        body: dict[str, Any] = {"preset": "public_chat", "invite": list(invite)}
        if alias:
            body["room_alias_name"] = alias
        return str(self.request("POST", "/_matrix/client/v3/createRoom", body, token)["room_id"])

    def messages(self, room: str, token: str) -> list[dict[str, Any]]:
        """The room's `m.room.message` events, oldest first."""
        out = self.request("GET", f"/_matrix/client/v3/rooms/{quote(room)}/messages"
                                  "?dir=f&limit=1000", token=token)
        return [e for e in out["chunk"] if e["type"] == "m.room.message"]

    def relations(self, room: str, event_id: str, rel_type: str, token: str) -> list[dict[str, Any]]:
        out = self.request("GET", f"/_matrix/client/v1/rooms/{quote(room)}/relations/"
                                  f"{quote(event_id)}/{rel_type}?limit=1000", token=token)
        return list(out["chunk"])

    def redact(self, room: str, event_id: str, token: str) -> None:
        self.request("PUT", f"/_matrix/client/v3/rooms/{quote(room)}/redact/{quote(event_id)}/"
                            f"r{secrets.token_hex(4)}", {"reason": "test"}, token)


def _config(workdir: Path, port: int, secret: str) -> Path:
    path = workdir / "homeserver.yaml"
    (workdir / "log.yaml").write_text(LOG_CONFIG.replace("{file}", str(workdir / "synapse.log")))
    config = {
        **LIMITS, "server_name": "localhost", "pid_file": str(workdir / "homeserver.pid"),
        "listeners": [{"port": port, "bind_addresses": ["127.0.0.1"], "type": "http",
                       "tls": False, "x_forwarded": False,
                       "resources": [{"names": ["client"], "compress": False}]}],
        "database": {"name": "sqlite3", "args": {"database": str(workdir / "homeserver.db")}},
        "log_config": str(workdir / "log.yaml"), "media_store_path": str(workdir / "media"),
        "signing_key_path": str(workdir / "signing.key"), "registration_shared_secret": secret,
        "macaroon_secret_key": secrets.token_hex(16), "form_secret": secrets.token_hex(16),
        "enable_registration": False, "enable_registration_without_verification": True,
        "trusted_key_servers": [], "suppress_key_server_warning": True, "report_stats": False,
        "presence": {"enabled": False}, "url_preview_enabled": False,
        "bcrypt_rounds": 4,  # each register/login hashes a password: keep the tests quick
    }
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class _Boot:
    """A Synapse process being started (or the reason it could not be)."""

    hs: Homeserver | None = None
    pid: int = 0
    workdir: Path | None = None
    problem: str = ""
    proc: subprocess.Popen[bytes] | None = None  # when this process started it
    owned: bool = True  # this process stops it (else the xdist controller does)

    def exited(self) -> int | None:
        """Its exit status once it has exited (it may be another worker's child)."""
        if self.proc is not None:
            return self.proc.poll()
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return -1
        return None


_boot: list[_Boot] = []
SHARED = "KOURIER_SYNAPSE_SHARED"  # the folder where xdist workers share one Synapse


def _start() -> _Boot:
    python = synapse_python()
    if python is None:
        return _Boot(problem="no Python with Synapse (matrix-synapse) was found")
    workdir = Path(tempfile.mkdtemp(prefix="kourier-synapse-"))
    port, secret = free_port(), secrets.token_hex(16)
    config = _config(workdir, port, secret)
    # Its signing key as `--generate-keys` writes one (an ed25519 seed, unpadded base64),
    # written here: that option is a whole second Synapse start (~2 s of CPU).
    seed = base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    (workdir / "signing.key").write_text(f"ed25519 a_test {seed}\n")
    with open(workdir / "stderr", "wb") as err:
        proc = subprocess.Popen([python, "-m", "synapse.app.homeserver", "-c", str(config)],
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    return _Boot(Homeserver(f"http://127.0.0.1:{port}", "localhost", secret), proc.pid, workdir,
                 proc=proc)


def _start_shared(folder: Path) -> _Boot:
    """One Synapse for all the xdist workers of a run: the first worker that needs it starts
    it, the others read where it is; the controller stops it at the end of the run."""
    with open(folder / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = folder / "synapse.json"
        if state.exists():
            known = json.loads(state.read_text())
            if known["hs"] is None:  # the first worker found no Synapse to start: say why
                return _Boot(problem=known["problem"])
            return _Boot(Homeserver(**known["hs"]), known["pid"], Path(known["workdir"]),
                         known["problem"])
        boot = _start()
        state.write_text(json.dumps({
            "hs": boot.hs.__dict__ if boot.hs else None, "pid": boot.pid,
            "workdir": str(boot.workdir) if boot.workdir else None, "problem": boot.problem}))
        boot.owned = False  # the controller stops it, not this worker
        return boot


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput") and config.getoption("numprocesses", None):
        os.environ[SHARED] = tempfile.mkdtemp(prefix="kourier-synapse-run-")  # workers inherit it


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = os.environ.get(SHARED)
    if hasattr(config, "workerinput") or not folder:
        return
    state = Path(folder) / "synapse.json"
    if state.exists():
        known = json.loads(state.read_text())
        if known["pid"]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(known["pid"], signal.SIGKILL)  # a throwaway server: no graceful stop
        if known["workdir"]:
            shutil.rmtree(known["workdir"], ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)


def _boot_once() -> _Boot:
    if not _boot:
        folder = os.environ.get(SHARED)
        _boot.append(_start_shared(Path(folder)) if folder else _start())
    return _boot[0]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Boot Synapse while the other tests run, when any collected test needs it (~10 s)."""
    if any("homeserver" in getattr(item, "fixturenames", ()) for item in session.items):
        _boot_once()


def pytest_sessionfinish(session: pytest.Session) -> None:
    for boot in _boot:
        if boot.proc is not None and boot.owned:
            boot.proc.kill()  # a throwaway server: its graceful shutdown takes seconds
            boot.proc.wait()
            if boot.workdir is not None:
                shutil.rmtree(boot.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def homeserver() -> Homeserver:
    boot = _boot_once()
    if boot.hs is None or not boot.pid or boot.workdir is None:
        unavailable(boot.problem)
    _wait_up(boot.hs, boot, boot.workdir)
    return boot.hs


def _wait_up(hs: Homeserver, boot: _Boot, workdir: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if (status := boot.exited()) is not None:
            tail = (workdir / "stderr").read_text(errors="replace")[-500:]
            unavailable(f"Synapse exited at start ({status}): {tail}")
        try:
            hs.request("GET", "/_matrix/client/versions")
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)  # a child process starting: nothing to wait on but its port
    unavailable("Synapse did not answer within 90 s")
