"""Each URL of a receiver is sent to on its own: its own circuit, rate limit and concurrency.

A real relay on a free port, real json:// HTTP sinks, a real SQLite file. One
receiver `team` has two URLs; before, a failing one paused both.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from relay.ui.views import receiver_rows
from tests.conftest import FakeClock, Sink, serve_posts, wait_for

EVENT = {"event": "delivery.updated", "status": "in_transit", "timestamp": "2024-09-14T14:30:00Z"}
SENDING = ("retry: {schedule: [0, 1, 1, 1], jitter: 0}\n"
           "  circuit: {failures: 2, cooldown: 60}\n  fallback_receiver: log")


def team(good: Sink, bad: Sink, extra: str = "") -> str:
    return (f'receivers:\n  - name: team\n    urls: ["{good.url("team")}", "{bad.url("team")}"]\n'
            f'{extra}  - name: log\n    urls: ["{good.url("log")}"]\n'
            "routes:\n  - {match: {event: delivery.updated}, receivers: [team]}\n")


async def circuits(url: str) -> dict[tuple[str, str], float]:
    """Every `kourier_relay_circuit_open` sample of /metrics, by (receiver, url)."""
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        text = await r.text()
    return {(sample.labels["receiver"], sample.labels["url"]): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name == "kourier_relay_circuit_open"}


def dead_jobs(tmp_path: Path) -> list[Any]:
    """(url_index, last_error) of every dead job in the relay's SQLite file."""
    with sqlite3.connect(tmp_path / "relay.db") as conn:
        return conn.execute("SELECT url_index, last_error FROM jobs WHERE state = 'dead'"
                            " ORDER BY id").fetchall()


@contextlib.asynccontextmanager
async def other_sink() -> AsyncIterator[Sink]:
    """A second real HTTP sink (the `sink` fixture is the first), closed after."""
    s = Sink()
    server = await serve_posts(s.handle)
    s.port = server.port or 0
    try:
        yield s
    finally:
        await server.close()


async def one_url_failing(running, sink: Sink, bad: Sink, events: int) -> tuple[Any, Any]:
    """A relay whose receiver `team` has URL 0 at `sink` and URL 1 at `bad`, which answers
    500: `events` events posted, and the failing-receiver notice once URL 1's circuit
    opened (the relay, the notice's messages)."""
    bad.default_status = 500
    r = await running(team(sink, bad), clock=FakeClock(), sending=SENDING)
    for n in range(events):
        assert (await r.post({**EVENT, "delivery_id": f"d{n}"}))[0] == 202
    return r, await wait_for(lambda: sink.messages("log"), message="the notice")


async def test_a_failing_url_opens_its_own_circuit_and_its_receivers_other_url_gets_everything(
        running, sink, tmp_path):
    async with other_sink() as bad:
        r, notice = await one_url_failing(running, sink, bad, 6)
        await wait_for(lambda: len(sink.messages("team")) == 6, message="all six to URL 0")
        shown = await wait_for(lambda: _open(r.url), message="the circuit gauges")
        assert shown == {("team", "0"): 0.0, ("team", "1"): 1.0, ("log", "0"): 0.0}
        await r.relay.worker.run_once()  # URL 1 is paused: no attempt beyond the two
        assert bad.hits.count("/team") == 2
        assert sorted(m["title"] for m in sink.messages("team")) == \
            sorted({m["title"] for m in sink.messages("team")})  # each once
        [only] = notice
        assert only["title"] == "Receiver team is failing (urls[1]: json://***)"
        assert "team's urls[1] (json://***)" in only["message"] and "HTTP 500" in only["message"]
        assert str(bad.port) not in only["title"] + only["message"]  # never the URL itself
        with sqlite3.connect(tmp_path / "relay.db") as conn:
            state = conn.execute("SELECT name, url_index, failures, open_until > 0 FROM receivers"
                                 " WHERE name = 'team' ORDER BY url_index").fetchall()
            waiting = conn.execute("SELECT url_index, state, count(*) FROM jobs WHERE"
                                   " receiver = 'team' GROUP BY url_index, state").fetchall()
        assert state == [("team", 0, 0, 0), ("team", 1, 2, 1)]
        assert sorted(waiting) == [(0, "sent", 6), (1, "pending", 6)]


async def _open(url: str) -> dict[tuple[str, str], float] | None:
    found = await circuits(url)
    return found if found.get(("team", "1")) == 1.0 and ("team", "0") in found else None


class Overlap:
    """A slow service that counts the requests it holds at once, per path."""

    def __init__(self) -> None:
        self.now: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.most_at_once = 0
        self.done: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        await request.json()
        path = request.path
        self.now[path] = self.now.get(path, 0) + 1
        self.peak[path] = max(self.peak.get(path, 0), self.now[path])
        self.most_at_once = max(self.most_at_once, sum(self.now.values()))
        await asyncio.sleep(0.2)  # the service is slow to answer (not a synchronisation)
        self.now[path] -= 1
        self.done.append(path)
        return web.Response(text="ok")


async def test_concurrency_1_holds_for_each_url_and_the_urls_send_side_by_side(running, tmp_path):
    overlap = Overlap()
    server = await serve_posts(overlap.handle)
    try:
        base = f"json://127.0.0.1:{server.port}"
        r = await running(
            f'receivers:\n  - name: team\n    urls: ["{base}/a", "{base}/b"]\n'
            "    concurrency: 1\n"
            "routes:\n  - {match: {event: delivery.updated}, receivers: [team]}\n")
        await r.relay.worker.pause()
        for n in range(4):
            assert (await r.post({**EVENT, "delivery_id": f"d{n}"}))[0] == 202
        r.relay.worker.resume()
        await wait_for(lambda: len(overlap.done) == 8, message="eight sends", timeout=20)
        assert overlap.peak == {"/a": 1, "/b": 1}  # never two at once on one URL
        assert overlap.most_at_once == 2  # but the receiver's two URLs at the same time
    finally:
        await server.close()


async def test_a_url_removed_from_a_receiver_has_its_jobs_go_dead_and_the_others_are_sent(
        running, sink, tmp_path):
    async with other_sink() as bad:
        r = await running(team(sink, bad))
        await r.relay.worker.pause()
        for n in range(2):
            assert (await r.post({**EVENT, "delivery_id": f"d{n}"}))[0] == 202
        cfg = Path(r.relay.config_path)
        cfg.write_text(cfg.read_text().replace(f', "{bad.url("team")}"', ""))
        await r.relay.reload()  # the orphan pass runs after each reload
        r.relay.worker.resume()
        await wait_for(lambda: len(sink.messages("team")) == 2, message="URL 0's two")

        assert await wait_for(lambda: len(dead_jobs(tmp_path)) == 2 and dead_jobs(tmp_path)) == \
            [(1, "receiver 'team' (URL #1) is no longer in the config")] * 2
        assert bad.hits == []
        shown = await circuits(r.url)
        assert ("team", "1") not in shown  # a URL no longer in the config has no series
        rows = receiver_rows(r.relay.config, await r.relay.store.receivers(),
                             r.relay.clock(), {"team": ["json://***"]})
        assert [(row.name, row.url_index, row.url, row.state) for row in rows
                if row.name == "team"] == [("team", 0, "json://***", "idle"),
                                           ("team", 1, "", "not in config")]
        r.relay.worker.config_changed()  # the next orphan pass: no job needs URL 1's row
        await r.relay.worker.run_once()
        assert [(s.name, s.url_index) for s in await r.relay.store.receivers()
                if s.name == "team"] == [("team", 0)]


async def test_a_removed_url_whose_circuit_is_open_has_its_jobs_go_dead_at_the_reload(
        running, sink, tmp_path):
    """The usual way a URL leaves: it kept failing (its circuit is open), the operator
    removes it. Its jobs go dead at once, not one probe per cooldown."""
    async with other_sink() as bad:
        bad.default_status = 500
        clock = FakeClock()
        r = await running(team(sink, bad), clock=clock, sending=SENDING)
        for n in range(3):
            assert (await r.post({**EVENT, "delivery_id": f"d{n}"}))[0] == 202
        await wait_for(lambda: sink.messages("log"), message="the notice")
        clock.advance(5)  # the retries are due; the circuit is open for 60 s more
        cfg = Path(r.relay.config_path)
        cfg.write_text(cfg.read_text().replace(f', "{bad.url("team")}"', ""))
        await r.relay.reload()

        assert await wait_for(lambda: len(dead_jobs(tmp_path)) == 3 and dead_jobs(tmp_path)) == \
            [(1, "receiver 'team' (URL #1) is no longer in the config")] * 3
        assert bad.hits.count("/team") == 2  # no probe was sent to it
        assert len(sink.messages("team")) == 3


async def test_every_due_job_of_a_removed_url_goes_dead_in_one_orphan_pass(running, sink,
                                                                          tmp_path):
    """More than one claim's batch (100): the pass goes on until a batch is not full,
    instead of burying 100 every 30 s."""
    from relay.worker import ORPHAN_BATCH

    async with other_sink() as bad:
        r = await running(team(sink, bad))
        await r.relay.worker.pause()
        count = ORPHAN_BATCH + 30
        for n in range(count):
            assert (await r.post({**EVENT, "delivery_id": f"d{n}"}))[0] == 202
        cfg = Path(r.relay.config_path)
        cfg.write_text(cfg.read_text().replace(f', "{bad.url("team")}"', ""))
        await r.relay.reload()  # the orphan pass is due after the reload
        r.relay.worker.resume()

        def dead() -> int:
            with sqlite3.connect(tmp_path / "relay.db") as conn:
                return conn.execute("SELECT count(*) FROM jobs WHERE url_index = 1"
                                    " AND state = 'dead'").fetchone()[0]

        await wait_for(lambda: dead() == count, message=f"{count} dead, not {ORPHAN_BATCH}")
        assert bad.hits == []


async def test_the_status_page_shows_one_row_per_receiver_url_with_its_own_state(
        running, sink, tmp_path):
    from tests.uiutil import ADMIN

    async with other_sink() as bad:
        r, _ = await one_url_failing(running, sink, bad, 2)
        async with r.session.get(r.url + "/ui/", headers={"Authorization": f"Bearer {ADMIN}"}
                                 ) as resp:
            page = await resp.text()
        assert resp.status == 200
        zero, one = (page[page.index(f'id="receiver-team-{i}"'):].split("</tr>")[0] for i in (0, 1))
        assert "urls[0]" in zero and "json://***" in zero and "st-idle" in zero
        assert "urls[1]" in one and "json://***" in one and "st-circuit-open" in one
        assert "paused after 2 failures" in one and "HTTP 500" in one
        assert str(bad.port) not in page and str(sink.port) not in page


async def test_the_receivers_command_prints_each_receiver_urls_own_state(running, sink, tmp_path):
    """`kourier-relay receivers`: the overview's receivers table in a terminal, one line per
    receiver URL with its own state, never the URL itself (its secrets)."""
    from tests.forkserver import run_relay

    async with other_sink() as bad:
        await one_url_failing(running, sink, bad, 2)
        out = await asyncio.to_thread(run_relay, ["receivers", "-c", str(tmp_path / "config.yaml")],
                                      capture_output=True, text=True, timeout=30)
        assert (out.returncode, out.stderr) == (0, "")
        log, team0, team1 = out.stdout.splitlines()
        assert log.startswith("log[0] json://***: idle (nothing waiting); 0 waiting; rate limit"
                              " none; last success ")
        assert team0.startswith("team[0] json://***: idle (nothing waiting); 0 waiting; rate"
                                " limit none; last success ")
        assert team1.startswith("team[1] json://***: circuit open (paused after 2 failures;"
                                " probes again in ")
        assert "; 2 waiting; rate limit none; last success never; last error " in team1
        assert team1.endswith("HTTP 500: Failed to send JSON POST notification: Internal server"
                              " error., error=500.; the service said: ok")
        assert str(bad.port) not in out.stdout and str(sink.port) not in out.stdout


@pytest.mark.parametrize("where", ["this pid", "another host"])
async def test_a_relay_killed_and_restarted_buries_at_start_up(running, sink, tmp_path, where):
    """The killed relay's `relays` row names this very pid (PID 1 in a restarted container)
    or another host name (the container was recreated). On SQLite only this process serves
    the file, so that row is no live relay's: the URL removed meanwhile has its jobs go dead
    at start-up, not once the row is 90 s old."""
    import os
    import socket
    import time

    async with other_sink() as bad:
        r = await running(team(sink, bad))
        await r.relay.worker.pause()
        for n in range(2):
            assert (await r.post({**EVENT, "delivery_id": f"d{n}"}))[0] == 202
        await r.relay.stop()
        host = socket.gethostname() if where == "this pid" else "c0ffee0c0ffe"
        killed = f"{host}:{os.getpid()}:0killed0"  # what kill -9 leaves
        with sqlite3.connect(tmp_path / "relay.db") as conn:
            conn.execute("INSERT INTO relays (owner, places, seen_at) VALUES (?, ?, ?)",
                         (killed, '[["log", 0], ["team", 0], ["team", 1]]', time.time()))
        again = await running(team(sink, bad).replace(f', "{bad.url("team")}"', ""),
                              config_name="after.yaml")
        assert await wait_for(lambda: len(dead_jobs(tmp_path)) == 2 and dead_jobs(tmp_path),
                              timeout=5) == [(1, "receiver 'team' (URL #1) is no longer in"
                                                 " the config")] * 2
        assert bad.hits == [] and again.relay.worker.running
