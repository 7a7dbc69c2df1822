"""The README's walk-through, run line by line with the chat service replaced by a local sink."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys

from tests.conftest import ROOT, free_port, wait_for


def walkthrough_lines() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- walkthrough.*?-->\n```sh\n(.*?)```", readme, re.S)
    assert block, "README.md lost its walk-through block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def argv(line: str) -> list[str]:
    words = shlex.split(line.rstrip("& "))
    assert words[0] == ".venv/bin/kourier-relay", line
    return [sys.executable, "-m", "relay", *words[1:]]


async def test_readme_walkthrough_delivers_the_cancellation_to_the_chat(tmp_path, sink):
    """Pasted as is: `send` runs the moment `serve` is started, with no wait in between."""
    export, serve, send, stop = walkthrough_lines()
    name, _, value = export.removeprefix("export ").partition("=")
    assert name == "OPS_CHAT_URL" and shlex.split(value)[0].startswith("slack://")
    assert serve.endswith("&") and stop == "kill %1"
    shutil.copy(ROOT / "config.example.yaml", tmp_path)
    port = free_port()
    env = {**os.environ, name: sink.url("slack"), "KOURIER_RELAY_LISTEN": f"127.0.0.1:{port}"}
    relay = subprocess.Popen(argv(serve), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
    try:
        done = await asyncio.to_thread(subprocess.run, argv(send), cwd=tmp_path, env=env,
                                       capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert '202 Accepted {"id": 1, "status": "accepted", "notifications": 1}' in done.stdout
        messages = await wait_for(lambda: sink.messages("slack"), message="the chat alert")
        assert messages[0]["title"] == "⚠ Delivery abc123: Cancelled"
    finally:
        relay.send_signal(signal.SIGTERM)  # what `kill %1` sends
        assert relay.wait(timeout=15) == 0
