"""Config errors never echo a value that could be a secret; `check` never shows a traceback."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from aiohttp import web

from relay import config
from relay.errors import ConfigError
from tests.conftest import (
    BASE_CONFIG,
    DEFAULTS,
    free_port,
    post_event,
    serve_posts,
    spawn_relay,
    wait_for,
    wait_healthy,
    write_config,
)
from tests.forkserver import run_relay

SECRET = "PASSWORD123secret"
URL = f"mailto://u:{SECRET}@mail.example.com"
TOKEN = "xoxb-1234567890-ABCDEFGHIJKL" + SECRET


def issues_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        config.loads("server: {tokens: [t]}\n" + text, "c.yaml", env={})
    return [str(i) for i in e.value.issues]


# key path and YAML (after the tokens line) -> the message expected, without the secret
CASES = {
    "listen": ("server: {tokens: [t], listen: '%s'}", "server.listen: expected host:port, got"),
    "duration": ("sending: {attempt_timeout: '%s'}", "sending.attempt_timeout: expected a"
                 " duration like 30s, 5m, 2h, got"),
    "rate": ("receivers: [{name: r, urls: ['console://'], rate_limit: '%s'}]",
             "receivers[0].rate_limit: expected a rate like 1/s or 30/min, got"),
    "choice": ("routes: [{receivers: [r], format: '%s'}]\nreceivers: [{name: r, urls: ["
               "'console://']}]", "routes[0].format: must be one of text, markdown, html, got"),
    "timezone": ("timezone: '%s'", ""),
    "unknown-key": ("server: {tokens: [t], '%s': 1}", "server: unknown key"),
    "template": ("routes: [{receivers: [r], template: '%s'}]\nreceivers: [{name: r, urls: ["
                 "'console://']}]", "routes[0].template: undefined template"),
    "credentials": ("server: {tokens: [t], listen: 'u:%s@h'}", "server.listen: expected"),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("secret", [URL, TOKEN, f"admin:{SECRET}@db"])
def test_config_errors_never_echo_a_secret(case, secret):
    yaml_text, expected = CASES[case]
    text = (yaml_text % secret).replace("server: {tokens: [t]}\n", "")
    if text.startswith("server:"):
        with pytest.raises(ConfigError) as e:
            config.loads(text, "c.yaml", env={})
        found = [str(i) for i in e.value.issues]
    elif case == "timezone":
        from relay.templating import Templates
        cfg = config.loads("server: {tokens: [t]}\n" + text, "c.yaml", env={})
        with pytest.raises(ConfigError) as e:
            Templates.from_config(cfg)
        found = [str(i) for i in e.value.issues]
    else:
        found = issues_of(text)
    joined = "\n".join(found)
    assert SECRET not in joined, joined
    assert expected in joined, joined
    assert all(line.startswith("c.yaml:") for line in found)


def test_listen_error_names_the_scheme_only():
    with pytest.raises(ConfigError) as e:
        config.loads(f"server: {{tokens: [t], listen: '{URL}'}}", "c.yaml", env={})
    assert [str(i) for i in e.value.issues] == [
        "c.yaml:1: server.listen: expected host:port, got 'mailto://***'"]


def test_harmless_values_are_still_shown():
    with pytest.raises(ConfigError) as e:
        config.loads("server: {tokens: [t], listen: 'localhost'}", "c.yaml", env={})
    assert "got 'localhost'" in str(e.value.issues[0])


def test_check_reports_a_mapping_in_urls_as_a_config_error_not_a_traceback(tmp_path):
    cfg = write_config(tmp_path / "config.yaml", f"""\
        server: {{tokens: [t]}}
        receivers:
          - name: chat
            urls: [{{url: "slack://T0SECRETA/B0SECRETB/{SECRET}"}}]
        default_receiver: chat
        """)
    done = run_relay(["check", "-c", str(cfg)], capture_output=True, text=True,
                          timeout=60)
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Traceback" not in out and SECRET not in out
    errors = [line for line in out.splitlines() if ": receivers[0]" in line]
    assert errors == [f"{cfg}:4: receivers[0].urls: expected a list of strings, but item 0 is"
                      " a mapping (write the value itself, not a mapping)"]


# ------------------------------------------------------------------ the service's own words

REASON = "hook disabled by its owner; see https://hooks.example/T0/SECRETreasonToken"


def hook_config(tmp_path: Path, sink_port: int | None, path: str, **values: str
                ) -> tuple[Path, int]:
    """A relay config sending every event to one json:// receiver at `path`; its port."""
    port = free_port()
    cfg = write_config(tmp_path / "config.yaml", BASE_CONFIG + f"""
receivers:
  - name: hook
    urls: ["json://127.0.0.1:{sink_port}{path}"]
default_receiver: hook
""", **{**DEFAULTS, "port": port, "db": tmp_path / "relay.db", **values})
    return cfg, port


def update(delivery_id: str) -> dict[str, str]:
    return {"event": "delivery.updated", "delivery_id": delivery_id, "status": "x",
            "timestamp": "2024-09-14T14:30:00Z"}


async def test_dead_letter_keeps_the_services_reason_under_serve_redacted(tmp_path):
    async def gone(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"ok": False, "error": REASON}, status=404)

    sink = await serve_posts(gone)
    cfg, port = hook_config(tmp_path, sink.port, "/hook")
    proc = spawn_relay(cfg, log=tmp_path / "relay.log")
    try:
        await asyncio.to_thread(wait_healthy, port, 15.0)
        assert await post_event(port, update("D-404")) == 202

        def dead() -> list:
            with closing(sqlite3.connect(tmp_path / "relay.db")) as db:
                return db.execute("SELECT last_error FROM jobs WHERE state='dead'").fetchall()
        [(error,)] = await wait_for(dead, 15.0, message="the job to go dead")
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        await sink.close()

    listed = run_relay(["dead", "list", "-c", str(cfg), "--json"],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    [job] = json.loads(listed.stdout)
    shown = json.dumps(job)
    assert error.startswith("HTTP 404: ")
    assert "hook disabled by its owner" in error and "hook disabled by its owner" in shown
    assert "error=404" in error  # Apprise's own warning line is captured under serve too
    for text in (error, shown, (tmp_path / "relay.log").read_text()):
        assert "SECRETreasonToken" not in text


@pytest.mark.parametrize("processes", ["1", "2"], ids=["in the relay process", "send processes"])
async def test_debug_logging_never_shows_a_webhook_urls_path_or_query(tmp_path, processes):
    """A Slack or Discord webhook's secret is its URL path: `--log-level debug` shows
    what the relay does, never the request lines that the HTTP library logs."""
    got: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        got.append(request.path_qs)
        return web.Response(text="ok")

    sink = await serve_posts(hook)
    cfg, port = hook_config(tmp_path, sink.port, "/services/T0/B0/SECRETpath?-token=SECRETquery",
                            sending=f"processes: {processes}")
    log = tmp_path / "relay.log"
    proc = spawn_relay(cfg, log=log, args=["--log-level", "debug"])
    try:
        await asyncio.to_thread(wait_healthy, port, 15.0)
        assert await post_event(port, update("D-1")) == 202
        await wait_for(lambda: b" sent " in log.read_bytes(), 15.0, message="the sent line")
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 15)
        await sink.close()
    assert got == ["/services/T0/B0/SECRETpath?token=SECRETquery"]
    text = log.read_text()
    assert " DEBUG " in text  # debug lines were written
    assert "SECRET" not in text


SHORT = "hunter2"  # a short password: nothing about it looks like a secret, but it is one


@pytest.mark.parametrize("yaml_text, found", [
    ("server: {tokens: [t], listen: '${PW}'}",
     "c.yaml:1: server.listen: expected host:port, got a value from ${PW} (not shown)"),
    ("server: {tokens: [t]}\nsending: {attempt_timeout: '${PW}'}",
     "c.yaml:2: sending.attempt_timeout: expected a duration like 30s, 5m, 2h, got a value"
     " from ${PW} (not shown)"),
    ("server: {tokens: [t]}\nroutes: [{receivers: [r], format: '${PW}'}]\n"
     "receivers: [{name: r, urls: ['console://']}]",
     "c.yaml:2: routes[0].format: must be one of text, markdown, html, got a value from ${PW}"
     " (not shown)"),
    ("server: {tokens: [t]}\nreceivers: [{name: r, urls: ['console://'], quiet_hours:"
     " {timezone: '${PW}', windows: [{days: daily, from: '01:00', to: '02:00'}]}}]\n"
     "default_receiver: r",
     "c.yaml:2: receivers[0].quiet_hours.timezone: unknown time zone a value from ${PW}"
     " (not shown)"),
    # a message that does not quote the value named no variable: which one to fix?
    ("server: {tokens: [t]}\nsending: {concurrency: '${PW}'}",
     "c.yaml:2: sending.concurrency: expected an integer, got a string (a value from ${PW},"
     " not shown)"),
])
def test_a_value_from_the_environment_is_named_by_its_variable_never_shown(yaml_text, found):
    with pytest.raises(ConfigError) as e:
        config.loads(yaml_text, "c.yaml", env={"PW": SHORT})
    assert [str(i) for i in e.value.issues] == [found]


@pytest.mark.parametrize("zone, found", [
    ("'${PW}'", "c.yaml:2: timezone: unknown time zone a value from ${PW} (not shown)"),
    # a hint would tell what the value is close to: none for a value from the environment
    ("'${ZONE}'", "c.yaml:2: timezone: unknown time zone a value from ${ZONE} (not shown)"),
    ("Europe/Pariss", "c.yaml:2: timezone: unknown time zone 'Europe/Pariss'"
                      ' (did you mean "Europe/Paris"?)'),
])
def test_a_timezone_from_the_environment_is_not_shown_either(zone, found):
    from relay.templating import Templates

    cfg = config.loads(f"server: {{tokens: [t]}}\ntimezone: {zone}\n", "c.yaml",
                       env={"PW": SHORT, "ZONE": "Europe/Pariss"})
    with pytest.raises(ConfigError) as e:
        Templates.from_config(cfg)
    assert [str(i) for i in e.value.issues] == [found]


def test_a_store_url_that_is_no_url_is_not_echoed(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", "server: {tokens: [t]}\nstore: {url: '{pw}'}\n"
                       "receivers: [{name: r, urls: ['console://']}]\ndefault_receiver: r\n",
                       pw=SHORT)
    done = run_relay(["check", "-c", str(cfg)], capture_output=True, text=True, timeout=30)
    assert SHORT not in done.stdout + done.stderr
    assert done.stdout == (f"{cfg}:2: store.url: expected sqlite:PATH or postgresql://…, got"
                           " no URL\n")
