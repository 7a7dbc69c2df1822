"""Operator mistakes, run as users run them: one line on stderr, a non-zero exit, no traceback."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import relay_cmd

# Variables the example config reads: unset, so results do not depend on the shell.
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("KOURIER_", "OPS_"))}


def run(*args: str, cwd: Path | None = None, timeout: float = 30,
        **popen: object) -> subprocess.CompletedProcess[str]:
    """The command as a subprocess; a timeout fails the test instead of hanging it."""
    return subprocess.run(relay_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=CLEAN_ENV, **popen)  # type: ignore[call-overload]


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed command (asserting there is one, and no traceback)."""
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert done.returncode != 0
    return lines[0]


SHAPES = {
    "empty": ("", "1: the config is empty: it needs at least a server: section with tokens"
                  " (see config.example.yaml)"),
    "comments only": ("# nothing yet\n", "1: the config is empty: it needs at least a server:"
                                         " section with tokens (see config.example.yaml)"),
    "a list": ("- server\n- routes\n", "1: the top level must be a mapping of sections such as"
                                       " server:, receivers:, routes: (see config.example.yaml),"
                                       " got a list"),
    "a scalar": ("relay\n", "1: the top level must be a mapping of sections such as server:,"
                            " receivers:, routes: (see config.example.yaml), got a string"),
    "no server": ("receivers:\n  - name: log\n    urls: [\"console://\"]\n",
                  '1: missing "server:" section: it needs at least server.tokens, the bearer'
                  " tokens Kourier sends"),
}


@pytest.mark.parametrize("command", ["check", "serve"])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_config_of_the_wrong_shape_is_one_line_not_a_spin(tmp_path, shape, command):
    text, message = SHAPES[shape]
    cfg = tmp_path / "config.yaml"
    cfg.write_text(text)
    done = run(command, "-c", str(cfg), timeout=20)
    found = done.stdout.splitlines() + done.stderr.splitlines()
    assert f"{cfg}:{message}" in found, found
    assert done.returncode == 1
    summary = f"{cfg}: 1 error(s), 0 warning(s)"  # check: findings on stdout, summary here
    assert one_line(done) == (f"{cfg}:{message}" if command == "serve" else summary)
