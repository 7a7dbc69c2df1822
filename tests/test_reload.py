"""Hot reload: POST /-/reload, SIGHUP and server.watch_config, against real servers."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from relay.logs import parse_text_line
from tests.conftest import (
    BASE_CONFIG,
    DEFAULTS,
    TOKEN,
    circuit_opened,
    free_port,
    spawn_relay,
    wait_for,
    wait_for_sync,
    write_config,
)
from tests.forkserver import RelayProcess

ADMIN = {"Authorization": "Bearer admin-secret"}
# Every delivery event to one receiver at `{sink}` (tests/test_send_cli.py adds its own title).
TO_HOOK = """
receivers:
  - name: hook
    urls: ["{sink}"]
routes:
  - name: all
    match: {event: "delivery.*"}
    receivers: [hook]
"""
ROUTES = TO_HOOK + """\
    title: "v1 {{ delivery_id }}"
"""
STAMP = "2024-09-14T14:30:00Z"


def event(delivery_id: str) -> dict[str, str]:
    return {"event": "delivery.updated", "delivery_id": delivery_id, "status": "in_transit",
            "timestamp": STAMP}


def edit(path: str | Path, old: str, new: str) -> None:
    """Change the config file as an operator would: in place."""
    text = Path(path).read_text()
    assert old in text
    Path(path).write_text(text.replace(old, new))


async def reload(url: str, headers: dict[str, str] | None = ADMIN) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, \
            s.post(f"{url}/-/reload", headers=headers or {}) as r:
        return r.status, await r.json()


async def metric(url: str, name: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/metrics") as r:
        text = await r.text()
    return next(sample.value for family in text_string_to_metric_families(text)
                for sample in family.samples if sample.name == name)


async def metric_is(url: str, name: str, value: float) -> bool:
    return await metric(url, name) == value


async def metric_after(url: str, name: str, mark: float) -> bool:
    return await metric(url, name) > mark


RELOAD_OK = "kourier_relay_config_last_reload_successful"
RELOAD_AT = "kourier_relay_config_last_reload_success_timestamp_seconds"


def titles(sink, path: str) -> list[str]:
    return [m["title"] for m in sink.messages(path)]


async def test_valid_change_takes_effect_and_no_request_during_reload_is_dropped(running, sink):
    r = await running(ROUTES, sink=sink.url("a"))
    statuses = []
    for round_ in range(3):
        edit(r.relay.config_path, f'title: "v{round_ + 1}', f'title: "v{round_ + 2}')
        posts = [r.post(event(f"R{round_}-{i}")) for i in range(60)]
        answers = await asyncio.gather(*posts[:30], reload(r.url), *posts[30:])
        assert answers[30] == (200, {"status": "reloaded"})
        statuses += [a[0] for i, a in enumerate(answers) if i != 30]
    assert statuses == [202] * 180
    status, _, _ = await r.post(event("after"))
    assert status == 202
    await wait_for(lambda: len(sink.messages("a")) == 181, message="every notification")
    assert "v4 after" in titles(sink, "a")


async def test_invalid_change_is_rejected_with_the_reason_and_old_routes_keep_working(
        running, sink):
    r = await running(ROUTES, sink=sink.url("a"))
    cfg = r.relay.config_path
    edit(cfg, "receivers: [hook]", "receivers: [pager]")
    status, body = await reload(r.url)
    line = Path(cfg).read_text().splitlines().index("    receivers: [pager]") + 1
    assert (status, body) == (400, {"error": "Reload failed", "details":
                                    f'{cfg}:{line}: routes[0].receivers[0]: undefined receiver'
                                    ' "pager"'})
    assert await metric(r.url, RELOAD_OK) == 0
    status, _, _ = await r.post(event("D-1"))
    assert status == 202
    assert await wait_for(lambda: titles(sink, "a")) == ["v1 D-1"]

    edit(cfg, "receivers: [pager]", "receivers: [hook]")
    assert (await reload(r.url))[0] == 200
    assert await metric(r.url, RELOAD_OK) == 1


async def test_reload_needs_the_admin_token_and_is_off_without_one(running, sink):
    r = await running(ROUTES, sink=sink.url("a"))
    assert await reload(r.url, None) == (401, {"error": "Unauthorized",
                                               "details": "missing or invalid admin token"})
    assert (await reload(r.url, {"Authorization": f"Bearer {TOKEN}"}))[0] == 401
    edit(r.relay.config_path, "admin_token: admin-secret", 'admin_token: ""')
    assert await reload(r.url) == (200, {"status": "reloaded"})
    assert await reload(r.url) == (403, {"error": "Forbidden", "details":
                                         "the admin API is off: set server.admin_token"})


async def test_queued_jobs_keep_their_text_and_follow_the_new_url(running, sink):
    r = await running(ROUTES, sink=sink.url("a"))
    await r.relay.worker.pause()  # hold the job in the queue across the reload
    assert (await r.post(event("D-7")))[0] == 202
    edit(r.relay.config_path, 'title: "v1', 'title: "v2')
    edit(r.relay.config_path, sink.url("a"), sink.url("b"))
    assert (await reload(r.url))[0] == 200
    r.relay.worker.resume()
    assert await wait_for(lambda: titles(sink, "b")) == ["v1 D-7"]  # rendered at ingest
    assert (await r.post(event("D-8")))[0] == 202
    await wait_for(lambda: len(sink.messages("b")) == 2)
    assert titles(sink, "b") == ["v1 D-7", "v2 D-8"] and sink.messages("a") == []


async def test_a_url_fixed_in_place_closes_its_circuit_and_sends_its_waiting_retries_now(
        running, sink, caplog):
    """A revoked webhook, replaced in the config: a reload sends what waited for it at once,
    instead of after the open circuit's cooldown and the retries' backoff (an hour here)."""
    sink.default_status = 500  # the old URL fails every time (`bad?token=…`)
    bad, good = sink.url("bad", token="OLDsecret"), sink.url("good", token="NEWsecret")
    r = await running(TO_HOOK.replace("{sink}", bad), sink="", sending=(
        "circuit: {failures: 2, cooldown: 10m}\n  retry: {schedule: [0, 1h], jitter: 0}"))
    for d in ("D-1", "D-2", "D-3"):
        assert (await r.post(event(d)))[0] == 202
    state = await wait_for(lambda: circuit_opened(r.relay, "hook"))  # after two failures
    assert state.backlog == 3 and sink.hits.count("/bad") == 2
    edit(r.relay.config_path, "name: all", "name: every")
    assert (await reload(r.url))[0] == 200  # the URL did not change: its circuit stays open
    assert [s.open_until for s in await r.relay.store.receivers()] == [state.open_until]
    sink.default_status = 200
    edit(r.relay.config_path, bad, good)
    caplog.clear()
    caplog.set_level(logging.INFO, logger="relay.lifecycle")
    assert (await reload(r.url))[0] == 200
    await wait_for(lambda: len(sink.messages("good")) == 3)
    assert sorted(m["title"].split(":")[0] for m in sink.messages("good")) == [
        "Delivery D-1", "Delivery D-2", "Delivery D-3"]
    assert sink.hits.count("/bad") == 2
    said = [m.getMessage() for m in caplog.records if "another URL now" in m.getMessage()]
    assert said == ['receiver "hook": urls[0] is another URL now: its circuit is closed and its'
                    " 2 waiting retries go now"]
    assert "secret" not in caplog.text.lower()


async def test_a_reload_that_changes_a_url_answers_even_while_the_store_hangs(
        running, sink, tmp_path, caplog, monkeypatch):
    """Closing the changed URL's circuit is bounded: a store that does not answer (another
    process holds SQLite's write lock for longer than it) delays the reload's answer by
    FRESH_START_WAIT, not by the store's own timeout; the new config serves either way."""
    import sqlite3

    from relay import lifecycle

    monkeypatch.setattr(lifecycle, "FRESH_START_WAIT", 0.2)
    r = await running(TO_HOOK.replace("{sink}", sink.url("a")), sink="", store="busy_timeout: 20s")
    edit(r.relay.config_path, sink.url("a"), sink.url("b"))
    other = sqlite3.connect(tmp_path / "relay.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # the store now waits up to 20 s for every write
        caplog.clear()
        assert (await asyncio.wait_for(reload(r.url), 10))[0] == 200
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert 'receiver "hook": urls[0] changed, but its circuit and retries stay as they were:' \
        " the store did not answer in 0.2s (kourier-relay retry-now does it later)" in caplog.text
    assert r.relay.config.receivers["hook"].urls == (sink.url("b"),)


async def test_a_reload_that_moves_a_receivers_urls_says_so_without_naming_them(
        running, sink, caplog):
    """Jobs, live messages and circuits go by a URL's place in `urls`: a reload that moves
    one (a reorder, or a URL removed before it) warns, by index only; one that appends a
    URL or fixes one in place (the documented way to repair a URL) says nothing."""
    a, b, c = (sink.url(p) + "?token=SECRETxyz" for p in ("a", "b", "c"))
    r = await running(TO_HOOK.replace('["{sink}"]', f'["{a}", "{b}", "{c}"]'), sink="")
    edit(r.relay.config_path, f'["{a}", "{b}", "{c}"]', f'["{a}", "{c}", "{sink.url("d")}"]')
    caplog.clear()
    assert (await reload(r.url))[0] == 200
    moved = [m.getMessage() for m in caplog.records if "changed places" in m.getMessage()]
    assert moved == ['receiver "hook": its URLs changed places (urls[2] is now urls[1]); jobs,'
                     " live messages and circuits go by place in urls, so those waiting for a"
                     " place now go to the URL there: put the URLs back in their order, or let"
                     " the receiver's queue empty before moving them"]
    assert "SECRETxyz" not in caplog.text
    edit(r.relay.config_path, f'["{a}", "{c}", "{sink.url("d")}"]',
         f'["{sink.url("e")}", "{c}", "{sink.url("d")}", "{b}"]')  # fixed in place, appended
    caplog.clear()
    assert (await reload(r.url))[0] == 200
    assert "changed places" not in caplog.text


async def test_a_reload_of_a_receiver_that_lists_one_url_twice_moves_nothing(
        running, sink, caplog):
    """Two places holding the same URL (two variables set alike, say) are each where they
    were: a reload that changes nothing, or appends a URL, says no URL changed places; a
    rotation names the places whose URL changed, not the one still holding its URL."""
    a, b = sink.url("a"), sink.url("b")
    r = await running(TO_HOOK.replace('["{sink}"]', f'["{a}", "{a}"]'), sink="")
    caplog.clear()
    assert (await reload(r.url))[0] == 200
    edit(r.relay.config_path, f'["{a}", "{a}"]', f'["{a}", "{a}", "{b}"]')
    assert (await reload(r.url))[0] == 200
    assert "changed places" not in caplog.text
    edit(r.relay.config_path, f'["{a}", "{a}", "{b}"]', f'["{b}", "{a}", "{a}"]')
    caplog.clear()
    assert (await reload(r.url))[0] == 200
    assert [m.getMessage().split(";")[0] for m in caplog.records
            if "changed places" in m.getMessage()] == [
        'receiver "hook": its URLs changed places (urls[0] is now urls[2], urls[2] is now'
        " urls[0])"]


async def test_watch_config_reloads_when_the_file_changes(running, sink):
    r = await running(ROUTES, sink=sink.url("a"))
    cfg = r.relay.config_path
    edit(cfg, "admin_token: admin-secret", "admin_token: admin-secret\n  watch_config: true")
    assert (await reload(r.url))[0] == 200
    loaded_at = await metric(r.url, RELOAD_AT)

    edit(cfg, 'title: "v1', 'title: "v2')
    await wait_for(lambda: r.relay.config.routes[0].template.title == "v2 {{ delivery_id }}",
                   message="the watcher to reload")
    assert await metric(r.url, RELOAD_AT) > loaded_at
    edit(cfg, "receivers: [hook]", "receivers: [pager]")  # a broken edit: old config stays
    await wait_for(lambda: metric_is(r.url, RELOAD_OK, 0), message="the failed reload")
    assert (await r.post(event("D-9")))[0] == 202
    assert await wait_for(lambda: titles(sink, "a")) == ["v2 D-9"]


async def test_a_config_swapped_for_a_device_fails_its_reload_and_the_relay_keeps_going(
        running, sink, tmp_path):
    # The watcher hashed the whole file every half second: a ConfigMap link swapped to
    # /dev/zero by mistake was read until memory ran out, on every pass.
    r = await running(ROUTES, sink=sink.url("a"))
    cfg = r.relay.config_path
    edit(cfg, "admin_token: admin-secret", "admin_token: admin-secret\n  watch_config: true")
    assert (await reload(r.url))[0] == 200
    link = tmp_path / "swap"
    link.symlink_to("/dev/zero")
    os.replace(link, cfg)
    await wait_for(lambda: metric_is(r.url, RELOAD_OK, 0), message="the failed reload")
    assert "the file is larger than a config can be (16 MiB)" in r.relay.reload_failure
    assert (await r.post(event("D-9")))[0] == 202
    assert await wait_for(lambda: titles(sink, "a")) == ["v1 D-9"]


async def ready(port: int, proc: RelayProcess, log: Path) -> bool:
    assert proc.poll() is None, f"the relay exited:\n{log.read_text()}"
    try:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/readyz") as r:
            return r.status == 200
    except aiohttp.ClientError:
        return False


@asynccontextmanager
async def serving(tmp_path: Path, routes: str,
                  sink_url: str) -> AsyncIterator[tuple[Path, int, RelayProcess]]:
    """`kourier-relay serve` in a subprocess of BASE_CONFIG + `routes`, ready: its config,
    port and process; terminated on the way out."""
    port = free_port()
    cfg = write_config(tmp_path / "config.yaml", BASE_CONFIG + routes, port=port,
                       db=tmp_path / "relay.db", sink=sink_url, **DEFAULTS)
    proc = spawn_relay(cfg, log=tmp_path / "relay.log")
    try:
        await wait_for(lambda: ready(port, proc, tmp_path / "relay.log"), 20,
                       message="relay subprocess to be ready")
        yield cfg, port, proc
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 20)


async def test_sighup_reloads_a_running_relay_and_survives_a_broken_config(tmp_path, sink):
    async with serving(tmp_path, ROUTES, sink.url("a")) as (cfg, port, proc):
        url = f"http://127.0.0.1:{port}"
        loaded_at = await metric(url, RELOAD_AT)
        edit(cfg, 'title: "v1', 'title: "v2')
        os.kill(proc.pid, signal.SIGHUP)
        await wait_for(lambda: metric_after(url, RELOAD_AT, loaded_at), message="the reload")

        edit(cfg, "receivers: [hook]", "receivers: [pager]")
        os.kill(proc.pid, signal.SIGHUP)
        await wait_for(lambda: metric_is(url, RELOAD_OK, 0), message="the failed reload")
        async with aiohttp.ClientSession() as s, s.post(
                f"{url}/webhook", json=event("D-5"),
                headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 202
        assert await wait_for(lambda: titles(sink, "a")) == ["v2 D-5"]
        assert proc.poll() is None
        lines = (tmp_path / "relay.log").read_text().splitlines()
        # A multi-line message is one escaped log line: read it back to look inside.
        log = "\n".join(parse_text_line(line)[3] for line in lines if line.startswith("20"))
        assert "config reload failed; keeping the running config" in log
        assert 'undefined receiver "pager"' in log


async def readyz(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/readyz") as r:
        return r.status, await r.json()


async def test_readyz_says_the_file_no_longer_loads_while_the_old_config_serves(running, sink):
    # Still ready (it serves, and every replica given the same broken file would go
    # out of rotation at once), but the next restart would fail: /readyz says so.
    r = await running(ROUTES, sink=sink.url("a"))
    cfg = Path(r.relay.config_path)
    good = cfg.read_bytes()
    edit(cfg, "receivers: [hook]", "receivers: [pager]")
    assert (await reload(r.url))[0] == 400
    line = cfg.read_text().splitlines().index("    receivers: [pager]") + 1
    status, body = await readyz(r.url)
    assert status == 200 and body["checks"] == {"config": True, "store": True, "worker": True}
    assert body["reasons"] == {"config": (
        "the file no longer loads, so a restart would fail; serving the config loaded"
        f' before: {cfg}:{line}: routes[0].receivers[0]: undefined receiver "pager"')}

    cfg.write_bytes(good.replace(b'title: "v1', b'title: "v\xe9'))  # any failure, one line
    assert (await reload(r.url))[0] == 400
    assert (await readyz(r.url))[1]["reasons"]["config"].endswith(": the file is not UTF-8"
                                                                  " text: byte 0xe9 at column"
                                                                  " 14: save it as UTF-8")

    cfg.write_bytes(good.replace(b'title: "v1', b'title: "v2'))
    assert (await reload(r.url))[0] == 200
    assert await readyz(r.url) == (200, {"status": "ready", "checks": {
        "config": True, "store": True, "worker": True}})
    assert (await r.post(event("D-2")))[0] == 202
    assert await wait_for(lambda: titles(sink, "a")) == ["v2 D-2"]


def starting(tmp_path: Path) -> tuple[RelayProcess, Path]:
    """A relay still starting: its database refuses connections, so it waits and retries
    (what it logs goes to the returned file)."""
    cfg = write_config(tmp_path / "config.yaml", BASE_CONFIG + ROUTES, port=free_port(),
                       db=tmp_path / "relay.db", sink="json://127.0.0.1:9/", **DEFAULTS)
    edit(cfg, f'url: "sqlite:{tmp_path / "relay.db"}"',
         f'url: "postgresql://u@127.0.0.1:{free_port()}/x"')  # refused: it waits and retries
    log = tmp_path / "relay.log"
    proc = spawn_relay(cfg, log=log)
    wait_for_sync(lambda: "store not available yet" in log.read_text(), 20, message="start-up")
    return proc, log


def test_a_sigterm_while_the_relay_starts_stops_it_at_once_with_status_0(tmp_path):
    # SIGTERM's default action ended a relay waiting for its database with status 143 and
    # no log line; as PID 1 of a container it was ignored, and `docker stop` waited for its
    # SIGKILL.
    proc, log = starting(tmp_path)
    try:
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(10) == 0, log.read_text()
        text = log.read_text()
        assert "SIGTERM while starting: stopping" in text and "stopped while starting" in text
        assert "Traceback" not in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(20)


def test_a_sighup_while_the_relay_starts_is_kept_for_later_not_fatal(tmp_path):
    # A config reloader may signal while the relay still waits for its database: SIGHUP's
    # default action ended the process before its handler was installed.
    proc, log = starting(tmp_path)
    try:
        def logged(text: str) -> bool:
            assert proc.poll() is None, f"the relay exited:\n{log.read_text()}"
            return text in log.read_text()

        os.kill(proc.pid, signal.SIGHUP)
        wait_for_sync(lambda: logged("retrying in 2.0s"), 20, message="start-up to go on")
        assert "SIGHUP while starting: the config is reloaded once the relay is up" in \
            log.read_text()
    finally:
        proc.terminate()
        proc.wait(20)
