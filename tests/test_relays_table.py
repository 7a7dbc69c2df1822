"""The relays serving from a store, as the status page and `kourier-relay receivers` list them,
when the store's relays table holds what no relay wrote: rows it cannot read, hostile host
names, rows of relays long gone. A real relay, a real SQLite file written to directly."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from pathlib import Path

from tests.conftest import DEFAULTS, RunningRelay, wait_for, write_config
from tests.forkserver import run_relay
from tests.uiutil import ADMIN, start_ui_relay

PAGE = {"Authorization": f"Bearer {ADMIN}", "Accept": "text/html"}


def insert(db: Path, *rows: tuple[str, str | None, float | str]) -> None:
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO relays (owner, places, seen_at) VALUES (?, ?, ?)", rows)
    conn.close()


async def announced(r: RunningRelay) -> None:
    await wait_for(lambda: r.relay.store.relays(), message="the relay announced itself")


def receivers(config: Path) -> tuple[int, str, str]:
    out = run_relay(["receivers", "-c", str(config)], capture_output=True, text=True, timeout=30)
    return out.returncode, out.stdout, out.stderr


async def test_relays_rows_the_relay_cannot_read_neither_break_the_page_nor_the_cli(
        running, sink, tmp_path):
    """A number JSON reads as infinity, nesting deeper than the parser goes, a row whose
    time seen is not a number: the page still answers (it answered 500), the command still lists."""
    r = await start_ui_relay(running, sink)
    await announced(r)
    now = time.time()
    insert(tmp_path / "relay.db", ("h1:11:a", '[["chat", 1e999]]', now),
           ("h2:12:b", "[" * 100_000, now), ("h3:13:c", '[["chat", 0]]', "never"),
           ("h4:14:d", '[["chat", 0], ["log", 0]]', now))
    async with r.session.get(r.url + "/ui/", headers=PAGE) as resp:
        page = " ".join((await resp.text()).split())
    assert resp.status == 200, page[:300]
    assert "4 relays serve from this store" in page  # h1, h2, h4 and this one; not h3
    code, out, err = await asyncio.to_thread(receivers, tmp_path / "config.yaml")
    assert (code, err) == (0, "")
    assert "4 relays serve from this store:" in out
    assert "  h1 pid 11: seen " in out and "0 receiver URL(s); lacks chat[0], log[0]" in out


async def test_a_hostile_host_name_is_escaped_on_the_page_and_one_plain_line_in_the_cli(
        running, sink, tmp_path):
    r = await start_ui_relay(running, sink)
    await announced(r)
    now = time.time()
    insert(tmp_path / "relay.db",
           ('<img src=x onerror=alert(1)>\x1b[31m:6\n\x1b[2Jforged:tok', '[["e\\nvil\\u001b[1m", 0]]', now),
           ("nocolons", '[["chat", 0], ["log", 0]]', now))
    async with r.session.get(r.url + "/ui/", headers=PAGE) as resp:
        page = await resp.text()
    assert resp.status == 200 and "<img src=x" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert re.search(r"nocolons\s*</th>", page), "no pid to show: no 'pid' either"
    code, out, err = await asyncio.to_thread(receivers, tmp_path / "config.yaml")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    at = lines.index("3 relays serve from this store:")
    relays = lines[at + 1:]
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
    config = write_config(tmp_path / "config.yaml", """\
        server:
          listen: 127.0.0.1:1
          tokens: ["{token}"]
        store:
          url: "sqlite:{db}"
        receivers:
          - name: log
            urls: ["console://"]
        """, db=tmp_path / "relay.db", token=DEFAULTS["token"])
    out = await asyncio.to_thread(run_relay, ["migrate", "-c", str(config)], capture_output=True,
                                  text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    now = time.time()
    insert(tmp_path / "relay.db", ("gone:1:a", '[["old", 0]]', now - 3600),
           ("here:2:b", '[["log", 0]]', now - 5))
    code, listed, err = await asyncio.to_thread(receivers, config)
    assert (code, err) == (0, "")
    assert "relays serve" not in listed and "gone" not in listed, listed
    assert listed.splitlines()[0].startswith("log[0] console://***: idle")
