"""The fork server's relays behave as `python -m relay` exec'd: the same output and exit codes."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from tests.conftest import ROOT, free_port, relay_cmd, spawn_relay, wait_healthy, write_config
from tests.forkserver import run_relay

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
