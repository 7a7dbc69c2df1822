"""The fork server's relays behave as `python -m relay` exec'd: the same output and exit codes."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import (
    ROOT,
    free_port,
    relay_cmd,
    spawn_relay,
    wait_for_sync,
    wait_healthy,
    write_config,
)
from tests.forkserver import RelayProcess, run_relay

ENV = {k: v for k, v in os.environ.items() if not k.startswith(("KOURIER_", "OPS_"))}

COMMANDS = {
    "a broken config": ["check", "-c", "tests/data/unknown_key.yaml"],
    "a route example": ["route", "-c", "config.example.yaml", "examples/events/created.json"],
    "an unset variable": ["check", "-c", "config.example.yaml"],
    "a usage error": ["dead", "replay"],
}


@pytest.mark.parametrize("words", COMMANDS.values(), ids=list(COMMANDS))
def test_a_forked_command_prints_and_exits_as_the_exec_d_one(words):
    env = {**ENV, "KOURIER_RELAY_TOKEN": "t"} if words[0] == "route" else ENV
    execd = subprocess.run(relay_cmd(*words), capture_output=True, text=True, cwd=ROOT,
                           env=env, timeout=60)
    forked = run_relay(words, capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert (forked.returncode, forked.stdout, forked.stderr) == (
        execd.returncode, execd.stdout, execd.stderr)
    assert execd.stdout + execd.stderr  # each says something


def test_a_forked_relay_ends_by_its_signals_as_a_process_does(tmp_path):
    port = free_port()
    cfg = write_config(tmp_path / "config.yaml", f"""\
server:
  listen: 127.0.0.1:{port}
  tokens: ["t0ken"]
store:
  url: "sqlite:relay.db"
receivers:
  - name: log
    urls: ["console://"]
default_receiver: log
""")
    relay = spawn_relay(cfg)
    wait_healthy(port)
    assert relay.pid != os.getpid() and relay.poll() is None
    relay.terminate()
    assert relay.wait(20) == 0  # a drained stop
    assert (tmp_path / "relay.db").exists()  # relative to its own working folder
    relay = spawn_relay(cfg)
    wait_healthy(port)
    relay.send_signal(signal.SIGKILL)
    assert relay.wait(20) == -signal.SIGKILL


def test_a_caller_that_goes_before_its_relay_ends_leaves_the_server_serving(tmp_path):
    gone = RelayProcess(["serve", "-c", "tests/data/unknown_key.yaml"], cwd=ROOT,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    gone._conn.close()  # its Popen look-alike collected before the answer comes
    wait_for_sync(lambda: not Path(f"/proc/{gone.pid}").exists(),  # ended, and reaped
                  message="the abandoned relay to end")
    after = run_relay(["check", "-c", "tests/data/unknown_key.yaml"], capture_output=True,
                      text=True, cwd=ROOT, env=ENV, timeout=60)
    assert after.returncode == 1 and "unknown_key.yaml" in after.stdout + after.stderr


def test_a_relay_that_cannot_start_in_its_folder_says_so_and_exits_127(tmp_path):
    done = run_relay(["check"], capture_output=True, text=True, cwd=tmp_path / "missing",
                     env=ENV, timeout=60)
    assert done.returncode == 127
    assert "cannot start the relay" in done.stderr and "missing" in done.stderr
