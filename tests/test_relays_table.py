"""The relays serving from a store, as the status page and `kourier-relay receivers` list them,
when the store's relays table holds what no relay wrote: rows it cannot read, hostile host
names, rows of relays long gone or killed. Real relays, real SQLite files and a real
PostgreSQL schema, written to directly."""

from __future__ import annotations

import asyncio
import re
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from tests import pgutil
from tests.conftest import DEFAULTS, RunningRelay, wait_for, write_config
from tests.forkserver import run_relay
from tests.uiutil import ADMIN, pg_relay, start_ui_relay

PAGE = {"Authorization": f"Bearer {ADMIN}", "Accept": "text/html"}
SQLITE_CONFIG = """\
server:
  listen: 127.0.0.1:1
  tokens: ["{token}"]
store:
  url: "sqlite:{db}"
receivers:
  - name: log
    urls: ["console://"]
"""


def insert(db: Path, *rows: tuple[str, str, float | str]) -> None:
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO relays (owner, places, seen_at) VALUES (?, ?, ?)", rows)
    conn.close()


async def pg_insert(dsn: str, *rows: tuple[str, str, float]) -> None:
    for row in rows:
        await pgutil.fetch(dsn, "INSERT INTO relays (owner, places, seen_at) VALUES ($1, $2, $3)",
                           *row)


def receivers(config: Path) -> tuple[int, str, str]:
    out = run_relay(["receivers", "-c", str(config)], capture_output=True, text=True, timeout=30)
    return out.returncode, out.stdout, out.stderr


async def sqlite_store(tmp_path: Path) -> Path:
    """A migrated SQLite store that no relay serves, and its config."""
    config = write_config(tmp_path / "config.yaml", SQLITE_CONFIG, db=tmp_path / "relay.db",
                          token=DEFAULTS["token"])
    out = await asyncio.to_thread(run_relay, ["migrate", "-c", str(config)], capture_output=True,
                                  text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return config


async def overview(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url + "/ui/", headers=PAGE) as resp:
        return resp.status, await resp.text()


@pytest.mark.postgres
async def test_relays_rows_the_relay_cannot_read_break_neither_the_page_nor_the_worker(
        tmp_path):
    """A number JSON reads as infinity, nesting deeper than the parser goes: the page still
    answers (it answered 500) and the orphan pass still runs (it raised OverflowError)."""
    async with pg_relay(tmp_path) as (relay, url, dsn, _):
        now = time.time()
        await pg_insert(dsn, ("h1:11:a", '[["chat", 1e999]]', now),
                        ("h2:12:b", "[" * 100_000, now), ("h4:14:d", '[["chat", 0]]', now))
        status, page = await overview(url)
        assert status == 200, page[:300]
        assert "4 relays serve from this store" in " ".join(page.split())
        relay.worker.config_changed()
        await relay.worker.run_once()


async def test_relays_rows_the_cli_cannot_read_are_listed_without_receiver_urls(tmp_path):
    config = await sqlite_store(tmp_path)
    now = time.time()
    insert(tmp_path / "relay.db", ("h1:11:a", '[["log", 1e999]]', now),
           ("h2:12:b", "[" * 100_000, now), ("h3:13:c", '[["log", 0]]', "never"),
           ("h4:14:d", '[["log", 0]]', now))
    code, out, err = await asyncio.to_thread(receivers, config)
    assert (code, err) == (0, "")
    assert "3 relays serve from this store:" in out  # h3's time is no number: left out
    assert "  h1 pid 11: seen " in out and "0 receiver URL(s); lacks log[0]" in out


@pytest.mark.postgres
async def test_a_hostile_host_name_is_escaped_on_the_page_and_one_plain_line_in_the_cli(
        tmp_path):
    async with pg_relay(tmp_path) as (_, url, dsn, cfg):
        now = time.time()
        await pg_insert(dsn, ('<img src=x onerror=alert(1)>\x1b[31m:6\n\x1b[2Jforged:tok',
                              '[["e\\nvil\\u001b[1m", 0]]', now),
                        ("nocolons", '[["chat", 0], ["log", 0]]', now))
        status, page = await overview(url)
        assert status == 200 and "<img src=x" not in page
        assert "&lt;img src=x onerror=alert(1)&gt;" in page
        assert re.search(r"nocolons\s*</th>", page), "no pid to show: no 'pid' either"
        code, out, err = await asyncio.to_thread(receivers, cfg)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    relays = lines[lines.index("3 relays serve from this store:") + 1:]
    assert len(relays) == 3 and all(line.startswith("  ") for line in relays), out
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", out), repr(out)
    [hostile] = [line for line in relays if "onerror" in line]
    assert hostile.startswith("  <img src=x onerror=alert(1)> pid 6 forged: seen ")
    assert "also sends for e vil[0]" in hostile, hostile
    [plain] = [line for line in relays if "nocolons" in line]
    assert plain.startswith("  nocolons: seen "), plain


async def test_relays_not_heard_from_for_long_are_not_listed_as_serving(tmp_path):
    """A relay killed an hour ago left its row (no live relay has forgotten it since): the
    command does not count it among the relays that serve from the store."""
    config = await sqlite_store(tmp_path)
    now = time.time()
    insert(tmp_path / "relay.db", ("gone:1:a", '[["old", 0]]', now - 3600),
           ("here:2:b", '[["log", 0]]', now - 5))
    code, listed, err = await asyncio.to_thread(receivers, config)
    assert (code, err) == (0, "")
    assert "relays serve" not in listed and "gone" not in listed, listed
    assert listed.splitlines()[0].startswith("log[0] console://***: idle")


async def announced(r: RunningRelay) -> None:
    await wait_for(lambda: r.relay.store.relays(), message="the relay announced itself")


async def test_a_killed_relays_fresh_row_is_no_relay_serving_a_sqlite_store(
        running, sink, tmp_path):
    """kill -9, and a restart within 90 s: the killed relay's row is still fresh. Only one
    relay serves a SQLite file, and the orphan pass counts that row as gone; so do the page
    (it said '2 relays serve', and 'not in this config' for what the killed one had) and
    `receivers` (its process is gone)."""
    r = await start_ui_relay(running, sink)
    await announced(r)
    dead = subprocess.Popen(["true"])  # its pid: one no process has now
    dead.wait()
    killed = f"{socket.gethostname()}:{dead.pid}:0badc0de"
    insert(tmp_path / "relay.db", (killed, '[["chat", 0], ["gone", 0]]', time.time()))
    with sqlite3.connect(tmp_path / "relay.db") as conn:  # the killed relay's circuit row
        conn.execute("INSERT INTO receivers (name, url_index) VALUES ('gone', 0)")
    conn.close()
    status, page = await overview(r.url)
    assert status == 200 and "relays serve" not in page
    assert "not in this config" not in page and "not in config" in page
    code, out, err = await asyncio.to_thread(receivers, tmp_path / "config.yaml")
    assert (code, err) == (0, "")
    assert "relays serve" not in out and "not in this config" not in out, out
