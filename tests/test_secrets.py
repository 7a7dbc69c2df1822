"""Config errors never echo a value that could be a secret; `check` never shows a traceback."""

from __future__ import annotations

import subprocess

import pytest

from relay import config
from relay.errors import ConfigError
from tests.conftest import relay_cmd, write_config

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
    done = subprocess.run(relay_cmd("check", "-c", str(cfg)), capture_output=True, text=True,
                          timeout=60)
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Traceback" not in out and SECRET not in out
    errors = [line for line in out.splitlines() if ": receivers[0]" in line]
    assert errors == [f"{cfg}:4: receivers[0].urls: expected a list of strings, but item 0 is"
                      " a mapping (write the value itself, not a mapping)"]
