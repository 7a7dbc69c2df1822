"""`check` against a corpus of broken configs (tests/data/), one per kind of mistake.

Each case pins the exact line an operator sees and the exit code; `serve` must
refuse the same configs with the same lines.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from click.testing import CliRunner

from relay.cli import main
from relay.errors import ConfigError
from relay.lifecycle import Relay
from tests.conftest import ROOT
from tests.forkserver import RelayProcess, run_relay

DATA = "tests/data"
SECRET = "SECRETxyz"  # the token inside the corpus' Apprise URLs; must never be printed
# Variables the example config and the corpus read: unset, so results do not depend on the shell.
UNSET = ["KOURIER_TEST_UNSET_CHAT_URL", "OPS_CHAT_URL", "KOURIER_WEBHOOK_TOKEN",
         "KOURIER_ADMIN_TOKEN", "KOURIER_RELAY_LISTEN", "KOURIER_RELAY_STORE",
         "KOURIER_RELAY_TIMEZONE", "KOURIER_RELAY_CONFIG"]

ERRORS = {
    "yaml_syntax": "3: invalid YAML: unclosed [: the [ on this line needs a matching ], or a"
                   " comma is missing between its items (PyYAML: expected ',' or ']', but got"
                   " '<scalar>', while parsing a flow sequence)",
    "unknown_key": '7: receivers[0].rate_limt: unknown key "rate_limt"'
                   ' (did you mean "rate_limit"?)',
    "wrong_type": "5: sending.concurrency: expected an integer, got a string",
    "out_of_range": "6: sending.retry.jitter: must be between 0 and 1",
    "undefined_receiver": '10: routes[0].receivers[1]: undefined receiver "pager"',
    "undefined_template": '14: routes[0].template: undefined template "problme"'
                          ' (did you mean "problem"?)',
    "template_syntax": "11: routes[0].title: template syntax error: unexpected '}'",
    "bad_apprise_url": "8: receivers[1].urls[0]: no Apprise plugin accepts this URL"
                       " (slakc://***); check its scheme and required parts",
    "unset_env": "8: receivers[1].urls[0]: environment variable KOURIER_TEST_UNSET_CHAT_URL"
                 " is not set (nor KOURIER_TEST_UNSET_CHAT_URL_FILE)",
    "bad_regex": "10: routes[0].match.customer.tier: invalid regex 'gold|(vip': missing ),"
                 " unterminated subpattern at position 5",
    "duplicate_receiver": '7: receivers[1].name: duplicate receiver "log"',
    "bad_store_url": "5: store.url: unsupported store URL scheme in 'sqllite': use sqlite:"
                     " or postgresql://",
    "bad_port": "8: receivers[1].urls[0]: the port 99999 of this URL (json://***) is out of"
                " range: it must be 1-65535",
    "unknown_zone": "11: routes[0].body: template error: unknown time zone 'Europe/Pariss' in"
                    ' localtime (did you mean "Europe/Paris"?)',
    "url_as_receiver": "10: routes[0].receivers[0]: expected a receiver name, got a URL"
                       ' (slack://***): put the URL in a receiver under "receivers:" and use'
                       " that receiver's name here",
}
WARNINGS = {
    "unused_receiver": '7: receivers[1].name: warning: receiver "pager" is never used: no route,'
                       " watch, default_receiver or fallback_receiver names it",
    "shadowed_route": '13: routes[1]: warning: route "failed" can never match: the earlier route'
                      ' "all-updates" (line 10) matches every event it would, and has no'
                      " continue: true",
    "undocumented_field": "11: routes[0].body: warning: uses customer_name, which Kourier does not"
                          " document (it documents delivery_id, event, status, timestamp); renders empty"
                          " unless an event carries it (name the fields your events carry in"
                          " deliveries.extra_fields)",
    "unknown_event_type": "9: routes[0].match.event: warning: 'delivery.canceled' matches no"
                          " event type Kourier sends (delivery.cancelled, delivery.created,"
                          " delivery.updated), only one it may add later (did you mean"
                          ' "delivery.cancelled"?)',
    "misspelt_field": "9: routes[0].match.stauts: warning: matches on stauts, which Kourier does not"
                      " document (it documents delivery_id, event, status, timestamp): this matcher"
                      " finds no such field unless an event carries it (did you mean"
                      ' "status"?)',
    "apprise_retry": "8: receivers[1].urls[0]: warning: remove Apprise's retry= parameter:"
                     " the relay owns retries (it is forced to 0)",
}


def path_of(name: str) -> str:
    return f"{DATA}/{name}.yaml"


def expected(name: str) -> str:
    return f"{path_of(name)}:{ERRORS.get(name) or WARNINGS[name]}"


@pytest.fixture(autouse=True)
def in_project_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the printed file names are the relative paths passed in


def check(*args: str):
    return CliRunner().invoke(main, ["check", *args], env=dict.fromkeys(UNSET))


def checked(cfg, text: str):
    """`cfg` written with `text`, and what `check -c cfg` gave."""
    cfg.write_text(text)
    return cfg, check("-c", str(cfg))


def serve_refuses(cfg) -> list[str]:
    """The lines a relay built from `cfg` refuses it with (what `serve` prints)."""
    with pytest.raises(ConfigError) as e:
        Relay(str(cfg), env={})
    return [str(i) for i in e.value.issues]


def test_corpus_has_one_file_per_case():
    files = {p.stem for p in (ROOT / DATA).glob("*.yaml")}
    assert files == set(ERRORS) | set(WARNINGS)


def assert_checked(name: str, *flags: str, summary: str, exit_code: int) -> None:
    """`check` of the corpus file `name` prints its one expected line, then `summary`."""
    result = check(*flags, "-c", path_of(name))
    assert result.stdout.splitlines() == [expected(name)]
    assert result.stderr == f"{path_of(name)}: {summary}\n"
    assert result.exit_code == exit_code


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_error_prints_exact_line_and_exits_1(name):
    assert_checked(name, summary="1 error(s), 0 warning(s)", exit_code=1)


@pytest.mark.parametrize("name", sorted(WARNINGS))
def test_warning_prints_exact_line_and_exits_0(name):
    assert_checked(name, summary="OK (1 warning(s))", exit_code=0)


@pytest.mark.parametrize("name", sorted(WARNINGS))
def test_strict_makes_warnings_fail(name):
    assert_checked(name, "--strict", summary="0 error(s), 1 warning(s)", exit_code=1)


@pytest.mark.parametrize("name", ["bad_apprise_url", "url_as_receiver", "bad_port"])
def test_secret_in_a_bad_url_is_never_printed(name):
    assert SECRET in (ROOT / path_of(name)).read_text()
    result = check("-c", path_of(name))
    assert SECRET not in result.output and "***" in result.stdout


def test_example_config_passes_strict_check():
    result = check("--strict", "-c", "config.example.yaml")
    assert result.stdout == ""
    assert result.stderr == "config.example.yaml: OK (0 warning(s))\n"
    assert result.exit_code == 0


def test_errors_and_warnings_of_one_file_come_together_in_line_order(tmp_path):
    cfg = tmp_path / "relay.yaml"
    cfg.write_text("""\
server:
  tokens: ["t0ken"]
receivers:
  - name: log
    urls: ["console://"]
  - name: spare
    urls: ["console://"]
  - name: chat
    urls: ["slakc://T0000/B0000/SECRETxyz"]
routes:
  - match: {status: failed}
    receivers: [chat]
default_receiver: log
""")
    result = CliRunner().invoke(main, ["check", "-c", str(cfg)])
    assert result.stdout.splitlines() == [
        f'{cfg}:6: receivers[1].name: warning: receiver "spare" is never used: no route,'
        " watch, default_receiver or fallback_receiver names it",
        f"{cfg}:9: receivers[2].urls[0]: no Apprise plugin accepts this URL (slakc://***);"
        " check its scheme and required parts",
    ]
    assert result.stderr == f"{cfg}: 1 error(s), 1 warning(s)\n"
    assert result.exit_code == 1


def test_missing_config_file_is_one_line(tmp_path):
    result = check("-c", str(tmp_path / "nope.yaml"))
    assert result.stdout == f"{tmp_path / 'nope.yaml'}: cannot read config: No such file or" \
                            " directory\n"
    assert result.exit_code == 1


@pytest.mark.parametrize("name", sorted(set(ERRORS) - {"bad_store_url"}))
def test_relay_refuses_to_build_from_broken_config_with_the_same_lines(name):
    """What `serve` prints on a broken config: the issues `Relay` raises, one per line."""
    with pytest.raises(ConfigError) as e:
        Relay(path_of(name), env={})
    assert [str(i) for i in e.value.issues] == [expected(name)]


def test_relay_refuses_an_unknown_store_scheme_with_the_same_line():
    with pytest.raises(ConfigError) as e:
        Relay(path_of("bad_store_url"), env={})
    assert [str(i) for i in e.value.issues] == [expected("bad_store_url")]


SERVED = ["unknown_key", "bad_apprise_url"]  # one found while loading, one while building


@pytest.fixture(scope="module")
def serve_results() -> dict[str, tuple[int, str]]:
    """`serve` as users start it, run side by side (the in-process test above covers all)."""
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    procs = {name: RelayProcess(["serve", "-c", path_of(name)], cwd=ROOT, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for name in SERVED}
    results = {}
    for name, proc in procs.items():
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # it started serving a broken config: a failure
            proc.kill()
            _, err = proc.communicate()
        results[name] = (proc.returncode, err)
    return results


@pytest.mark.parametrize("name", SERVED)
def test_serve_refuses_broken_config_printing_the_check_line(name, serve_results):
    code, stderr = serve_results[name]
    assert stderr.splitlines() == [expected(name)]
    assert code == 1
    assert SECRET not in stderr


def test_check_warns_about_the_old_delivery_section_with_the_new_name(tmp_path):
    cfg = tmp_path / "old.yaml"
    cfg.write_text((ROOT / "config.example.yaml").read_text().replace("sending:", "delivery:", 1))
    result = run_relay(["check", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    line = next(n for n, text in enumerate(cfg.read_text().splitlines(), 1)
                if text.startswith("delivery:"))
    assert f'old.yaml:{line}: delivery: warning: renamed: call this section "sending:"' in out
    assert "Traceback" not in out


TEMPLATES = """\
server:
  tokens: ["t0ken"]
receivers:
  - name: log
    urls: ["console://"]
templates:
  problem:
    title: "{{ status | humanstatus }}"
    body: |
      {{ event }}
      {% if status %}
      Status: {{ status | human_status }}
      {% endif %}
routes:
  - name: a
    match: {status: failed}
    receivers: [log]
    template: problem
  - name: b
    match: {status: lost}
    receivers: [log]
    template: problem
  - name: c
    match: {status: delivered}
    receivers: [log]
    title: "{{ delivery_id | upperr }}"
    body: |
      first line
      {% if status is nosuchtest %}x{% endif %}
  - name: d
    match: {status: returned}
    receivers: [log]
    body: |
      {% if status %}{{ status | nope }}{% endif %}
      second
      {{ delivery_id }
default_receiver: log
"""


def test_every_template_error_names_its_own_key_and_line_once(tmp_path):
    """Filters and tests inside {% if %} too; a named template used twice is reported once."""
    cfg, result = checked(tmp_path / "templates.yaml", TEMPLATES)
    assert result.stdout.splitlines() == [
        f'{cfg}:8: templates.problem.title: template error: unknown filter "humanstatus"'
        ' (did you mean "human_status"?)',
        f'{cfg}:26: routes[2].title: template error: unknown filter "upperr"'
        ' (did you mean "upper"?)',
        f'{cfg}:29: routes[2].body: template error: unknown test "nosuchtest"',
        f"{cfg}:36: routes[3].body: template syntax error: unexpected '}}'",
    ]
    assert result.exit_code == 1
    # and serve refuses it, instead of falling back later
    assert serve_refuses(cfg) == result.stdout.splitlines()


def test_an_unknown_filter_inside_if_is_found_before_the_first_event(tmp_path):
    cfg = tmp_path / "if.yaml"
    cfg.write_text(TEMPLATES.split("templates:")[0] + """\
routes:
  - receivers: [log]
    body: "{% if status %}{{ status | nope }}{% endif %}"
default_receiver: log
""")
    assert check("-c", str(cfg)).stdout == (
        f'{cfg}:8: routes[0].body: template error: unknown filter "nope"\n')


def test_check_warns_when_the_lease_does_not_outlive_a_send(tmp_path):
    cfg = tmp_path / "lease.yaml"
    cfg.write_text("server:\n  tokens: [\"t0ken\"]\nsending:\n  attempt_timeout: 30s\n"
                   "  lease: 20s\nreceivers:\n  - name: log\n    urls: [\"console://\"]\n"
                   "routes:\n  - match: {}\n    receivers: [log]\n")
    result = run_relay(["check", "--strict", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert ("lease.yaml:5: sending.lease: warning: the lease (20s) is not longer than"
            " attempt_timeout (30s)") in out
    assert "Traceback" not in out
    cfg.write_text(cfg.read_text().replace("lease: 20s", "lease: 2m"))
    result = run_relay(["check", "--strict", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_warns_when_the_first_circuit_pause_is_longer_than_the_longest(tmp_path):
    cfg = tmp_path / "circuit.yaml"
    cfg.write_text("server:\n  tokens: [\"t0ken\"]\nsending:\n  circuit:\n    cooldown: 20m\n"
                   "    max_cooldown: 10m\nreceivers:\n  - name: log\n"
                   "    urls: [\"console://\"]\ndefault_receiver: log\n")
    assert check("-c", str(cfg)).stdout == (
        f"{cfg}:5: sending.circuit.cooldown: warning: the cooldown (1200s) is longer than"
        " max_cooldown (600s): pauses after the first would be shorter, not longer; raise"
        " max_cooldown\n")
    cfg.write_text(cfg.read_text().replace("max_cooldown: 10m", "max_cooldown: 1h"))
    assert check("-c", str(cfg)).stdout == ""


def test_a_receiver_url_variable_set_but_empty_is_named(tmp_path):
    """`OPS_CHAT_URL=` in a shell or an env file: say so, not "no plugin accepts ?://***"."""
    cfg = tmp_path / "relay.yaml"
    cfg.write_text('server: {tokens: [t]}\nreceivers:\n  - name: chat\n'
                   '    urls: ["${OPS_CHAT_URL}"]\ndefault_receiver: chat\n')
    result = CliRunner().invoke(main, ["check", "-c", str(cfg)], env={"OPS_CHAT_URL": ""})
    assert result.stdout == (f"{cfg}:4: receivers[0].urls[0]: the URL is empty: the environment"
                             " variable OPS_CHAT_URL is set but empty\n")
    assert result.exit_code == 1


PORTS = """\
server:
  tokens: ["t0ken"]
receivers:
  - name: hook
    urls:
      - "json://relay:SECRETxyz@127.0.0.1:99999/hook"
      - "json://127.0.0.1:0/hook"
      - "json://relay:SECRETxyz@127.0.0.1:abc/hook"
      - "json://127.0.0.1/hook?port=70000"
      - "matrix://relay:SECRETxyz@matrix.example.com:99999/#ops"
      - "json://127.0.0.1:65535/hook"
      - "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/"
      - "tgram://123456789:AAHSECRETxyzSECRETxyzSECRETxyzSECRE/12345"
      - "mailto://relay:SECRETxyz@example.com:0?to=ops@example.com"
routes:
  - match: {}
    receivers: [hook]
"""


def test_a_port_out_of_range_or_not_a_number_is_an_error_naming_the_url(tmp_path):
    """Apprise takes json://host:99999 (every send then fails as a connection error, retried
    until dead) and refuses host:abc; a Telegram token after its colon is no port, and
    email's :0 is Apprise's default port."""
    cfg, result = checked(tmp_path / "ports.yaml", PORTS)
    assert result.stdout.splitlines() == [
        f"{cfg}:6: receivers[0].urls[0]: the port 99999 of this URL (json://***) is out of"
        " range: it must be 1-65535",
        f"{cfg}:7: receivers[0].urls[1]: the port 0 of this URL (json://***) is out of range:"
        " it must be 1-65535",
        f"{cfg}:8: receivers[0].urls[2]: no Apprise plugin accepts this URL (json://***): its"
        " port must be a number 1-65535",
        f"{cfg}:9: receivers[0].urls[3]: the port 70000 of this URL (json://***) is out of"
        " range: it must be 1-65535",
        f"{cfg}:10: receivers[0].urls[4]: no Apprise plugin accepts this URL (matrix://***):"
        " its port must be a number 1-65535",
    ]
    assert SECRET not in result.output
    assert result.exit_code == 1
    assert serve_refuses(cfg) == result.stdout.splitlines()  # serve too


ZONES = """\
server:
  tokens: ["t0ken"]
receivers:
  - name: log
    urls: ["console://"]
templates:
  late:
    body: "{{ timestamp | localtime(tz='Europe/Pariss') }}"
routes:
  - match: {status: failed}
    receivers: [log]
    title: "{{ timestamp | localtime('Mars/Olympus') }}"
    body: |
      {{ timestamp | localtime('Europe/Berlin', '%H:%M') }}
      {% if status %}{{ timestamp | localtime(5) }}{% endif %}
  - match: {status: lost}
    receivers: [log]
    template: late
    title: "{{ timestamp | localtime(status) }} {{ timestamp | localtime(none) }}"
    body: "{{ timestamp | localtime('') }} {{ timestamp | localtime(fmt='%H') }}"
watches:
  - name: stuck
    start: {event: delivery.created}
    stop: [{status: delivered}]
    after: 1h
    receivers: [log]
    title: "{% filter localtime('Nowhere/Land') %}{{ last.timestamp }}{% endfilter %}"
default_receiver: log
"""


def test_every_literal_zone_given_to_localtime_is_checked_where_it_is_written(tmp_path):
    """In `templates:`, routes and watches, positional or `tz=`, inside {% if %} too; a zone
    computed at render time (`localtime(status)`), none and '' (the config's timezone) are
    not checked."""
    cfg, result = checked(tmp_path / "zones.yaml", ZONES)
    assert result.stdout.splitlines() == [
        f"{cfg}:8: templates.late.body: template error: unknown time zone 'Europe/Pariss' in"
        ' localtime (did you mean "Europe/Paris"?)',
        f"{cfg}:12: routes[0].title: template error: unknown time zone 'Mars/Olympus' in"
        " localtime",
        f"{cfg}:15: routes[0].body: template error: localtime's time zone must be a name such"
        " as 'Europe/Berlin', got 5",
        f"{cfg}:27: watches[0].title: template error: unknown time zone 'Nowhere/Land' in"
        " localtime",
    ]
    assert result.exit_code == 1
    # serve refuses it, instead of falling back later
    assert serve_refuses(cfg) == result.stdout.splitlines()


def test_event_types_kourier_does_not_send_are_named_in_routes_and_watches(tmp_path):
    """Globs and lists item by item; `{not: ...}` and `{regex: ...}` are left alone."""
    cfg = tmp_path / "types.yaml"
    cfg.write_text("""\
server:
  tokens: ["t0ken"]
receivers:
  - name: log
    urls: ["console://"]
routes:
  - match: {event: [delivery.created, delivery.cancelld]}
    receivers: [log]
  - match: {event: "deliveries.*"}
    receivers: [log]
  - match: {event: {not: delivery.x}, status: {regex: "x"}}
    receivers: [log]
watches:
  - name: stuck
    start: {event: "delivery.*"}
    stop: [{event: delivery.update}]
    after: 1h
    receivers: [log]
default_receiver: log
""")
    sent = "(delivery.cancelled, delivery.created, delivery.updated), only one it may add later"
    assert check("-c", str(cfg)).stdout.splitlines() == [
        f"{cfg}:7: routes[0].match.event: warning: 'delivery.cancelld' matches no event type"
        f' Kourier sends {sent} (did you mean "delivery.cancelled"?)',
        f"{cfg}:9: routes[1].match.event: warning: 'deliveries.*' matches no event type"
        f" Kourier sends {sent}",
        # not also "it matches only delivery.created": it matches no type Kourier sends
        f"{cfg}:16: watches[0].stop[0].event: warning: 'delivery.update' matches no event type"
        f' Kourier sends {sent} (did you mean "delivery.updated"?)',
    ]


def test_a_missing_field_computed_with_is_said_to_fail_the_template_not_to_render_empty(
        tmp_path):
    """`{{ weight / 1000 }}` on an event without `weight` fails (the built-in template is
    used), while `{{ note }}` renders empty: the warning says which does what."""
    cfg, result = checked(tmp_path / "computed.yaml", """\
server:
  tokens: ["t0ken"]
receivers: [{name: log, urls: ["console://"]}]
routes:
  - match: {status: failed}
    receivers: [log]
    title: "{{ delivery_id }} weighs {{ weight / 1000 }} kg"
    body: "{{ note }} {{ -depth }} {{ weight ~ 'g' }}"
default_receiver: log
""")
    sent = "it documents delivery_id, event, status, timestamp"
    assert result.stdout.splitlines() == [
        f"{cfg}:7: routes[0].title: warning: uses weight, which Kourier does not document ({sent});"
        " unless an event carries it, weight fails the template, which computes with it (the"
        " built-in one is used)",
        f"{cfg}:8: routes[0].body: warning: uses depth, note, weight, which Kourier does not document"
        f" ({sent}); unless an event carries it, note, weight renders empty and depth fails"
        " the template, which computes with it (the built-in one is used)"]
    assert result.exit_code == 0


def test_a_near_miss_of_a_field_kourier_sends_is_named_in_matchers_and_templates(tmp_path):
    """`stauts`, `timestmap`, `dleivery_id.x` are taken for misspellings; `state` and
    `customer.tier` are not (events may carry such fields: docs/configuration.md's own
    `customer.tier` example), and a watch's start and stops are read like a route's match."""
    cfg, result = checked(tmp_path / "near.yaml", """\
server:
  tokens: ["t0ken"]
receivers: [{name: log, urls: ["console://"]}]
routes:
  - match: {dleivery_id.x: {exists: true}, state: x, customer.tier: gold}
    receivers: [log]
    title: "{{ stauts }} {{ timestmap }} {{ state }}"
    body: "{{ evnet }} {{ customer.tier }}"
watches:
  - name: stuck
    start: {evnet: delivery.created}
    stop: [{status: delivered}, {Status: cancelled}]
    after: 1h
    receivers: [log]
default_receiver: log
""")
    sent = "which Kourier does not document (it documents delivery_id, event, status, timestamp)"
    finds = "this matcher finds no such field unless an event carries it"
    assert result.stdout.splitlines() == [
        f"{cfg}:5: routes[0].match.dleivery_id.x: warning: matches on dleivery_id.x, {sent}:"
        f' {finds} (did you mean "delivery_id"?)',
        f"{cfg}:7: routes[0].title: warning: uses state, stauts, timestmap, {sent}; renders"
        ' empty unless an event carries it (did you mean "status" for stauts, "timestamp" for'
        " timestmap?)",
        f"{cfg}:8: routes[0].body: warning: uses customer, evnet, {sent}; renders empty unless"
        ' an event carries it (did you mean "event" for evnet?)',
        f"{cfg}:11: watches[0].start.evnet: warning: matches on evnet, {sent}: {finds} (did you"
        ' mean "event"?)',
        f"{cfg}:12: watches[0].stop[1].Status: warning: matches on Status, {sent}: {finds} (did"
        ' you mean "status"?)']
    assert result.exit_code == 0


def test_extra_fields_names_what_events_carry_so_check_stops_warning_about_it(tmp_path):
    """`deliveries.extra_fields: [hub, tracking_url]`: templates, matchers and a watch's
    `last` use them without a warning; their near misses get "did you mean"; a field still
    not named gets the advice to name it; and `check --strict` passes a config that uses
    only named fields (it could not before: examples/events carry such fields)."""
    cfg, result = checked(tmp_path / "extra.yaml", """\
server:
  tokens: ["t0ken"]
deliveries:
  extra_fields: [hub, tracking_url]
receivers: [{name: log, urls: ["console://"]}]
routes:
  - match: {hub: "3", trackign_url: {exists: true}}
    receivers: [log]
    title: "{{ delivery_id }} at {{ hub }}: {{ tracking_url }}"
    body: "{{ courier }}"
watches:
  - name: stuck
    start: {event: delivery.created, hub: "3"}
    stop: {status: delivered}
    after: 1h
    receivers: [log]
    body: "{{ last.hub }} {{ last.tracking_url }} {{ last.hbu }}"
default_receiver: log
""")
    expected = ("which Kourier does not document (it documents delivery_id, event, status,"
                " timestamp; deliveries.extra_fields names hub, tracking_url)")
    assert result.stdout.splitlines() == [
        f"{cfg}:7: routes[0].match.trackign_url: warning: matches on trackign_url, {expected}:"
        " this matcher finds no such field unless an event carries it (did you mean"
        ' "tracking_url"?)',
        f"{cfg}:10: routes[0].body: warning: uses courier, {expected}; renders empty unless an"
        " event carries it (name the fields your events carry in deliveries.extra_fields)",
        f"{cfg}:17: watches[0].body: warning: uses last.hbu, {expected}; renders empty unless an"
        ' event carries it (did you mean "hub"?)']
    named_only = cfg.read_text().replace(', trackign_url: {exists: true}', "") \
        .replace("{{ courier }}", "{{ status }}").replace(" {{ last.hbu }}", "")
    cfg, result = checked(cfg, named_only)
    assert (result.stdout, result.exit_code) == ("", 0)
    assert check("--strict", "-c", str(cfg)).exit_code == 0


@pytest.mark.parametrize("value, message", [
    ("[customer.tier]", "item 0 ('customer.tier') is not a field name: name the field at the"
                        " top of the event (customer, not customer.tier)"),
    ('["hub", ""]', "item 1 ('') is not a field name: name the field at the top of the event"
                    " (customer, not customer.tier)"),
    ("[{hub: 1}]", "expected a list of strings, but item 0 is a mapping (write the value"
                   " itself, not a mapping)"),
])
def test_extra_fields_takes_top_level_field_names_only(tmp_path, value, message):
    cfg, result = checked(tmp_path / "bad.yaml", f"""\
server:
  tokens: ["t0ken"]
deliveries:
  extra_fields: {value}
receivers: [{{name: log, urls: ["console://"]}}]
default_receiver: log
""")
    assert result.stdout.splitlines() == [f"{cfg}:4: deliveries.extra_fields: {message}"]
    assert result.exit_code == 1


# Mistakes an operator makes while editing, and the one answer each must get (found by a
# sweep of realistic edits: each answer was doubled, misleading or without a hint before).
LOG = 'receivers:\n  - name: log\n    urls: ["console://"]\n'
HEAD = 'server:\n  tokens: ["t0ken"]\n' + LOG
MISTAKES = {
    "inline template under template": (
        HEAD + "routes:\n  - name: all\n    match: {}\n    receivers: [log]\n    template:\n"
        '      body: "{{ delivery_id }}"\n',
        ["10: routes[0].template: expected a string, got a mapping (template names a template"
         " from templates:; an inline template is title: and body: on the route itself)"]),
    "unquoted template": (
        HEAD + "routes:\n  - receivers: [log]\n    title: {{ delivery_id }}\n",
        ['8: routes[0].title: a value that starts with "{" must be in quotes: unquoted {{ ... }}'
         ' is read by YAML as a mapping (write title: "{{ ... }}")']),
    "misspelt section, no second missing-section error": (
        'serverr:\n  tokens: ["t0ken"]\n' + LOG + "default_receiver: log\n",
        ['1: serverr: unknown key "serverr" (did you mean "server"?)']),
    "server as a list, no second tokens error": (
        'server:\n  - tokens: ["t0ken"]\n' + LOG + "default_receiver: log\n",
        ["1: server: expected a mapping, got a list"]),
    "misspelt route receivers, no second needs-a-receiver error": (
        HEAD + "routes:\n  - recievers: [log]\n",
        ['7: routes[0].recievers: unknown key "recievers" (did you mean "receivers"?)']),
    "misspelt receiver urls, no second needs-a-URL error": (
        'server:\n  tokens: ["t0ken"]\nreceivers:\n  - name: log\n    url: "console://"\n'
        "default_receiver: log\n",
        ['5: receivers[0].url: unknown key "url" (did you mean "urls"?)']),
    "a receiver that is a name only, no second missing-name error": (
        HEAD + "  - pager\ndefault_receiver: log\n",
        ["6: receivers[1]: expected a mapping, got a string (a receiver is name: and urls:"
         ' lines, e.g. {name: ops, urls: ["..."]})']),
    "misspelt watch after, no second missing error": (
        HEAD + "watches:\n  - name: late\n    start: {event: delivery.created}\n    aftr: 4h\n"
        "    receivers: [log]\n",
        ['9: watches[0].aftr: unknown key "aftr" (did you mean "after"?)']),
    "misspelt digest window, no second needed error": (
        HEAD + "routes:\n  - receivers: [log]\n    digest: {windw: 10m}\n",
        ['8: routes[0].digest.windw: unknown key "windw" (did you mean "window"?)']),
    "a template on a watch": (
        HEAD + "watches:\n  - name: late\n    start: {event: delivery.created}\n    after: 4h\n"
        "    receivers: [log]\n    template: problem\n",
        ['11: watches[0].template: unknown key "template" (a watch names no template from'
         " templates: write its title: and body: on the watch itself)"]),
    "until for to in a quiet window": (
        HEAD.replace('["console://"]\n', '["console://"]\n    quiet_hours:\n      timezone: UTC\n'
                     '      windows: [{days: [mon], from: "22:00", until: "07:00"}]\n')
        + "default_receiver: log\n",
        ['8: receivers[0].quiet_hours.windows[0].until: unknown key "until" (did you mean'
         ' "to"?)']),
    "a zone abbreviation": (
        HEAD + "timezone: CEST\ndefault_receiver: log\n",
        ["6: timezone: unknown time zone 'CEST' (an abbreviation, not a zone name: write a name"
         " such as Europe/Berlin, which also follows its daylight saving time)"]),
    "a zone written as an offset": (
        HEAD + 'timezone: "UTC+2"\ndefault_receiver: log\n',
        ["6: timezone: unknown time zone 'UTC+2' (an offset, not a zone name: write a zone such"
         " as Europe/Berlin, which follows daylight saving time, or Etc/GMT-2 for a fixed UTC+2:"
         " its sign is reversed)"]),
    "a negative duration written with a unit": (
        HEAD + "sending:\n  attempt_timeout: -5s\ndefault_receiver: log\n",
        ["7: sending.attempt_timeout: must not be negative"]),
    "a duration too long is shown (digits and a unit are no secret)": (
        HEAD + "store:\n  retention: 99999999999999999d\ndefault_receiver: log\n",
        ["7: store.retention: must be at most 3650d, got '99999999999999999d'"]),
    "a number in quotes": (
        HEAD + 'sending:\n  concurrency: "4"\ndefault_receiver: log\n',
        ["7: sending.concurrency: expected an integer, got a string (write the number in plain"
         ' digits, without quotes: YAML reads 1e3 or "5" as text)']),
    "a boolean in quotes": (
        HEAD + 'routes:\n  - receivers: [log]\n    live: "yes"\n',
        ["8: routes[0].live: expected true or false, got a string (write true or false,"
         " without quotes)"]),
    "a token that is a number": (
        "server:\n  tokens: 12345\n" + LOG + "default_receiver: log\n",
        ["2: server.tokens: expected a list of strings, got a number (put it in quotes)"]),
    "matchers as a list": (
        HEAD + "routes:\n  - receivers: [log]\n    match:\n      - event: delivery.cancelled\n",
        ['8: routes[0].match: expected a mapping, got a list (matchers are key: value lines of'
         ' one mapping: drop the "- ")']),
    "a watch start that is an event type alone": (
        HEAD + "watches:\n  - name: late\n    start: delivery.created\n    after: 4h\n"
        "    receivers: [log]\n",
        ["8: watches[0].start: expected a mapping, got a string (matchers, e.g. start: {event:"
         " delivery.created})"]),
    "routes as a mapping": (
        HEAD + "routes:\n  all:\n    receivers: [log]\n",
        ['6: routes: expected a list, got a mapping (a list: put "- " before each route)']),
    "a retry schedule that is one duration": (
        HEAD + "sending:\n  retry:\n    schedule: 5s\ndefault_receiver: log\n",
        ["8: sending.retry.schedule: expected a list of durations, got a string (a list, e.g."
         " schedule: [0, 30s, 5m, 1h])"]),
    "retry delays without schedule:": (
        HEAD + "sending:\n  retry: [0, 5s, 1m]\ndefault_receiver: log\n",
        ["7: sending.retry: expected a mapping, got a list (the delays go under schedule:"
         " retry: {schedule: [0, 30s, 5m]})"]),
    "quiet windows without windows: and timezone:": (
        HEAD.replace('["console://"]\n', '["console://"]\n    quiet_hours: [{days: [mon],'
                     ' from: "22:00", to: "07:00"}]\n') + "default_receiver: log\n",
        ["6: receivers[0].quiet_hours: expected a mapping, got a list (the windows go under"
         " windows:, beside timezone: quiet_hours: {timezone: Europe/Berlin, windows: [...]})"]),
    "quiet windows as a mapping": (
        HEAD.replace('["console://"]\n', '["console://"]\n    quiet_hours:\n      timezone: UTC\n'
                     '      windows: {days: [mon], from: "22:00", to: "07:00"}\n')
        + "default_receiver: log\n",
        ['8: receivers[0].quiet_hours.windows: expected a list of windows, got a mapping (a'
         ' list: put "- " before each window, or [ ] around it)']),
    "a day written out": (
        HEAD.replace('["console://"]\n', '["console://"]\n    quiet_hours:\n      timezone: UTC\n'
                     '      windows: [{days: [monday], from: "22:00", to: "07:00"}]\n')
        + "default_receiver: log\n",
        ["8: receivers[0].quiet_hours.windows[0].days: unknown day 'monday' (did you mean"
         ' "mon"?): use mon, tue, wed, thu, fri, sat, sun, a range like mon-fri, weekdays,'
         " weekend or daily"]),
    "a template that is only text": (
        HEAD + 'templates:\n  problem: "Delivery {{ delivery_id }}"\ndefault_receiver: log\n',
        ['7: templates.problem: expected a mapping, got a string (a template is title: and'
         ' body: lines, e.g. {title: "...", body: "..."})']),
    "templates as a list, no second undefined-template error": (
        HEAD + "templates:\n  - problem: {title: x}\nroutes:\n  - receivers: [log]\n"
        "    template: problem\n",
        ["6: templates: expected a mapping, got a list"]),
    "receivers as a mapping, no undefined-receiver errors after it": (
        'server:\n  tokens: ["t0ken"]\nreceivers:\n  name: log\n  urls: ["console://"]\n'
        "routes:\n  - receivers: [log]\ndefault_receiver: log\nsending: {fallback_receiver: log}\n",
        ['3: receivers: expected a list, got a mapping (a list: put "- " before each'
         " receiver's name:)"]),
    "a route that is a name only, no second needs-a-receiver error": (
        HEAD + "routes:\n  - log\n",
        ["7: routes[0]: expected a mapping, got a string (a route is receivers: and match:"
         " lines, e.g. {match: {event: ...}, receivers: [ops]})"]),
    "a watch that is a name only, no four missing-key errors": (
        HEAD + "watches:\n  - not-delivered\n",
        ["7: watches[0]: expected a mapping, got a string (a watch is name:, start:, after:"
         " and receivers: lines)"]),
    "a body size with a unit": (
        'server:\n  tokens: ["t0ken"]\n  max_body_bytes: 64KiB\n' + LOG
        + "default_receiver: log\n",
        ["3: server.max_body_bytes: expected an integer, got a string (a number of bytes, e.g."
         " 65536 for 64 KiB)"]),
    "a list of default receivers": (
        HEAD + "default_receiver: [log]\n",
        ["6: default_receiver: expected a string, got a list (one receiver's name: a route can"
         " name several)"]),
    "a store that is its URL alone": (
        HEAD + "store: sqlite:relay.db\ndefault_receiver: log\n",
        ["6: store: expected a mapping, got a string (store: takes url: and more, e.g. store:"
         " {url: sqlite:relay.db})"]),
    "a number too long to read (was an unexpected ValueError, exit 70)": (
        'server:\n  tokens: ["t0ken"]\n  max_body_bytes: ' + "9" * 5000 + "\n" + LOG
        + "default_receiver: log\n",
        ["3: server.max_body_bytes: a number of 5000 digits, too long to read: write a number"
         " of sensible size"]),
    "a fraction where a whole number belongs": (
        HEAD + "sending:\n  concurrency: 1.5\ndefault_receiver: log\n",
        ["7: sending.concurrency: expected an integer, got a number (a whole number)"]),
    "a digest grouped by a template or an empty field": (
        HEAD + 'routes:\n  - receivers: [log]\n    digest: {window: 5m, group_by: ["{{ hub }}"]}\n'
        '  - receivers: [log]\n    digest: {window: 5m, group_by: [hub, ""]}\n',
        ["8: routes[0].digest.group_by: item 0 is a template: name the field itself (hub, not"
         " {{ hub }})",
         "10: routes[1].digest.group_by: item 1 ('') is not a field path: name a field of the"
         " event, or a dotted path into one (hub, customer.tier)"]),
    "dedup fields with an empty step": (
        HEAD + "store:\n  dedup_fields: [delivery_id, customer..tier]\ndefault_receiver: log\n",
        ["7: store.dedup_fields: item 1 ('customer..tier') is not a field path: name a field of"
         " the event, or a dotted path into one (hub, customer.tier)"]),
    "a PostgreSQL URL without its scheme (its user was shown as the scheme)": (
        HEAD + 'store:\n  url: "relayuser:hunter2@db/relay"\ndefault_receiver: log\n',
        ["7: store.url: expected sqlite:PATH or postgresql://…, got no URL"]),
    "an hour with one digit (it is between 00:00 and 23:59)": (
        HEAD.replace('["console://"]\n', '["console://"]\n    quiet_hours:\n      timezone: UTC\n'
                     '      windows: [{days: [mon], from: "22:00", to: "7:00"}]\n')
        + "default_receiver: log\n",
        ['8: receivers[0].quiet_hours.windows[0].to: write the hour with two digits: "07:00",'
         " got '7:00'"]),
    "a receiver name where a URL belongs": (
        HEAD + '  - name: pager\n    urls: ["log"]\nroutes:\n  - receivers: [pager]\n'
        "default_receiver: log\n",
        ["7: receivers[1].urls[0]: not an Apprise URL: it has no scheme:// (such as slack://,"
         " mailto://, json://) ('log' is a receiver's name: urls takes the URLs themselves)"]),
}


@pytest.mark.parametrize("text, lines", MISTAKES.values(), ids=list(MISTAKES))
def test_a_mistake_gets_one_answer_that_fits_what_was_written(tmp_path, text, lines):
    cfg, result = checked(tmp_path / "c.yaml", text)
    assert result.stdout.splitlines() == [f"{cfg}:{line}" for line in lines]
    assert result.stderr == f"{cfg}: {len(lines)} error(s), 0 warning(s)\n"
    assert result.exit_code == 1
    assert serve_refuses(cfg) == [f"{cfg}:{line}" for line in lines]


def test_a_url_without_a_scheme_is_not_echoed(tmp_path):
    cfg, result = checked(tmp_path / "c.yaml", HEAD.replace(
        '"console://"', f'"hooks.slack.com/services/T0/B0/{SECRET}{SECRET}"')
        + "default_receiver: log\n")
    assert result.stdout == f"{cfg}:5: receivers[0].urls[0]: not an Apprise URL: it has no" \
                            " scheme:// (such as slack://, mailto://, json://)\n"
    assert SECRET not in result.output


def test_warnings_found_while_loading_are_shown_next_to_its_errors(tmp_path):
    """The old `delivery:` section's warnings were shown only once the config had no error."""
    cfg, result = checked(tmp_path / "c.yaml", HEAD + "delivery:\n  concurrency: 4\n"
                          "  suppress_stale: true\nroutes:\n  - receivers: [log]\n    titel: x\n")
    assert result.stdout.splitlines() == [
        f'{cfg}:6: delivery: warning: renamed: call this section "sending:" (the old name still'
        ' works for now); "delivery" only ever means a Kourier parcel delivery',
        f'{cfg}:8: delivery.suppress_stale: warning: renamed: write "deliveries: {{suppress_stale:'
        ' ...}" (it is about parcel deliveries)',
        f'{cfg}:11: routes[0].titel: unknown key "titel" (did you mean "title"?)']
    assert result.stderr == f"{cfg}: 1 error(s), 2 warning(s)\n"
    assert result.exit_code == 1


def test_a_section_with_every_entry_commented_out_is_an_empty_one(tmp_path):
    """`routes:` with nothing under it said "expected a list, got nothing"; `server:` with
    nothing under it was always read as empty."""
    cfg, result = checked(tmp_path / "c.yaml", HEAD + "routes:\n  # - receivers: [log]\n"
                          "watches:\ntemplates:\ndefault_receiver: log\n")
    assert (result.stdout, result.exit_code) == ("", 0)


def test_live_and_hold_on_a_digest_route_are_named_as_ignored(tmp_path):
    cfg, result = checked(tmp_path / "c.yaml", HEAD + "routes:\n  - receivers: [log]\n"
                          "    live: true\n    hold: 30s\n    digest: {window: 5m}\n")
    ignored = "ignored: this route sends a digest (one message for the deliveries of a window)"
    assert result.stdout.splitlines() == [
        f"{cfg}:8: routes[0].live: warning: {ignored}, which is never edited as a live message;"
        " remove live:, or give it a route of its own",
        f"{cfg}:9: routes[0].hold: warning: {ignored}, which is never held; remove hold:, or"
        " give it a route of its own"]
    assert result.exit_code == 0


def test_a_status_written_as_an_event_type_is_told_where_a_status_goes(tmp_path):
    """`delivery.delivered` was told "did you mean delivery.cancelled?"."""
    cfg, result = checked(tmp_path / "c.yaml", HEAD + "routes:\n  - receivers: [log]\n"
                          "    match: {event: [delivery.delivered, delivery.canceled]}\n")
    none = ("matches no event type Kourier sends (delivery.cancelled, delivery.created,"
            " delivery.updated), only one it may add later")
    assert result.stdout.splitlines() == [
        f"{cfg}:8: routes[0].match.event: warning: 'delivery.delivered' {none} (if delivered"
        " is a status: a status change is the event delivery.updated, so match {event:"
        " delivery.updated, status: delivered})",
        f"{cfg}:8: routes[0].match.event: warning: 'delivery.canceled' {none} (did you mean"
        ' "delivery.cancelled"?)']


def test_a_number_too_long_for_python_from_a_variable_is_an_error_not_a_crash(tmp_path):
    """Python reads no integer of more than 4,300 digits: its own words (and its advice to
    call sys.set_int_max_str_digits) were the message."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text('server:\n  tokens: ["t0ken"]\n  max_body_bytes: "${N}"\n' + LOG
                   + "default_receiver: log\n")
    result = CliRunner().invoke(main, ["check", "-c", str(cfg)], env={"N": "9" * 5000})
    assert result.stdout == f"{cfg}:3: server.max_body_bytes: expected an integer, got a" \
                            " string (a value from ${N}, not shown)\n"
    assert result.exit_code == 1


def test_bad_matchers_of_every_route_are_reported_at_once(tmp_path):
    """Compiling stopped at the first route with a bad matcher: a fix, a new check, the
    next one. An empty field name (`"": x`) looked up nothing and was never an error."""
    cfg, result = checked(tmp_path / "c.yaml", HEAD + "routes:\n"
                          "  - receivers: [log]\n    match: {hub: []}\n"
                          "  - receivers: [log]\n    match: {status: {regex: \"(\"}}\n"
                          "  - receivers: [log]\n    match: {\"\": x}\n")
    assert result.stdout.splitlines() == [
        f"{cfg}:8: routes[0].match.hub: an any-of list needs at least one value",
        f"{cfg}:10: routes[1].match.status: invalid regex '(': missing ), unterminated"
        " subpattern at position 0",
        f"{cfg}:12: routes[2].match: expected a field name or a dotted path (status,"
        " customer.tier)"]
    assert result.exit_code == 1


def test_a_value_listed_twice_is_one_warning_and_a_receiver_listed_twice_is_named(tmp_path):
    """`event: [delivery.canceled, delivery.canceled]` printed the same warning line twice."""
    cfg, result = checked(tmp_path / "c.yaml", HEAD + "routes:\n  - receivers: [log, log]\n"
                          "    match: {event: [delivery.canceled, delivery.canceled]}\n")
    assert result.stdout.splitlines() == [
        f'{cfg}:7: routes[0].receivers[1]: warning: receiver "log" is listed twice here:'
        " remove one",
        f"{cfg}:8: routes[0].match.event: warning: 'delivery.canceled' matches no event type"
        " Kourier sends (delivery.cancelled, delivery.created, delivery.updated), only one it"
        ' may add later (did you mean "delivery.cancelled"?)']
    assert result.exit_code == 0


def test_a_template_after_a_hash_is_named_as_the_comment_yaml_made_it(tmp_path):
    """`title: Delivery #{{ delivery_id }}` rendered "Delivery": the rest was a comment, and
    check said OK. A plain comment after a value stays quiet."""
    cfg, result = checked(tmp_path / "c.yaml", HEAD + "routes:\n  - receivers: [log]\n"
                          "    title: Delivery #{{ delivery_id }}\n    body: Delivered  # body\n")
    assert result.stdout.splitlines() == [
        f"{cfg}:8: routes[0].title: warning: a # after a space starts a YAML comment, so the"
        " value ends before it and the template after the # is left out: put the whole value"
        " in quotes"]
    assert result.exit_code == 0


def test_a_matcher_value_yaml_reads_as_another_kind_is_named(tmp_path):
    """`country: NO` is false to YAML 1.1 and `hub: 010` is 8: an event's "NO" or "010"
    never matched them, and check said OK."""
    cfg, result = checked(tmp_path / "c.yaml", HEAD + "routes:\n  - receivers: [log]\n"
                          "    match: {country: NO, hub: 010, express: true, n: 5}\n")
    assert result.stdout.splitlines() == [
        f"{cfg}:8: routes[0].match.country: warning: YAML reads NO as false: write false for"
        ' the boolean, or "NO" in quotes for the text',
        f"{cfg}:8: routes[0].match.hub: warning: YAML reads 010 as 8: write 8 for the number,"
        ' or "010" in quotes for the text']
    assert result.exit_code == 0


def test_a_token_shared_between_roles_is_a_warning_that_never_shows_the_token(tmp_path):
    base = ('server:\n  tokens: ["hook-SECRETxyz"]\n  admin_token: "{admin}"\n'
            '  viewer_token: "{viewer}"\nreceivers:\n  - name: log\n    urls: ["console://"]\n'
            "routes:\n  - match: {{}}\n    receivers: [log]\n")
    for admin, viewer, said in [
            ("hook-SECRETxyz", "v-SECRETxyz", ["3: server.admin_token: warning: is also a"
                                               " webhook token: whoever sends webhooks may use"
                                               " the admin API too (replay, reload, every"
                                               " delivery's timeline): give it a token of its"
                                               " own"]),
            ("a-SECRETxyz", "hook-SECRETxyz", ["4: server.viewer_token: warning: is also a"
                                               " webhook token: whoever sends webhooks may read"
                                               " the status page too: give it a token of its"
                                               " own"]),
            ("a-SECRETxyz", "a-SECRETxyz", ["4: server.viewer_token: warning: is the admin"
                                            " token: a viewer logs in as the admin (and may"
                                            " replay): give it a token of its own"])]:
        cfg, result = checked(tmp_path / "roles.yaml", base.format(admin=admin, viewer=viewer))
        assert result.output.splitlines()[:-1] == [f"{cfg}:{line}" for line in said]
        assert result.exit_code == 0 and SECRET not in result.output
    cfg, result = checked(tmp_path / "roles.yaml", base.format(admin="a-SECRETxyz",
                                                               viewer="v-SECRETxyz"))
    assert result.output.splitlines() == [f"{cfg}: OK (0 warning(s))"]


def test_serve_says_at_start_that_a_webhook_token_is_the_examples(tmp_path, caplog):
    """The example's ${KOURIER_WEBHOOK_TOKEN:-change-me} with the variable unset: a relay
    anyone who read the README can post to. `check` may run where the variable is set, so
    the relay that serves says it (and the example still passes check --strict)."""
    cfg = tmp_path / "c.yaml"
    head = "server:\n  tokens: [{token}]\nreceivers:\n  - name: log\n    urls: [\"console://\"]\n"
    for token, env, said in [
            ('"${KOURIER_WEBHOOK_TOKEN:-change-me}"', {}, "set KOURIER_WEBHOOK_TOKEN to a long"
                                                          " random token"),
            ("change-me-to-a-long-random-string", {}, "replace it with a long random token"),
            ('"${KOURIER_WEBHOOK_TOKEN:-change-me}"', {"KOURIER_WEBHOOK_TOKEN": "x" * 32}, "")]:
        cfg.write_text(head.format(token=token) + f'store:\n  url: "sqlite:{tmp_path}/r.db"\n')
        caplog.clear()
        Relay(str(cfg), env=env)
        found = [r.getMessage() for r in caplog.records if "change-me" in r.getMessage()]
        if said:
            assert len(found) == 1 and found[0].startswith(
                "server.tokens[0] is change-me, the example's token: anyone who has read the"
                " README can post events to this relay; ") and said in found[0], found
        else:
            assert found == []
    assert check("--strict", "-c", "config.example.yaml").exit_code == 0


def test_the_example_token_is_named_by_its_place_in_the_file_when_a_token_before_is_empty(
        tmp_path, caplog):
    """Rotating: `${NEW_TOKEN:-}` (not set yet) before the example's token. The warning names
    the example's place and its variable, not the empty one's (it said tokens[0], NEW_TOKEN:
    setting NEW_TOKEN left change-me open)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text('server:\n  tokens: ["${NEW_TOKEN:-}", "${KOURIER_WEBHOOK_TOKEN:-change-me}"]\n'
                   'receivers:\n  - name: log\n    urls: ["console://"]\n'
                   f'store:\n  url: "sqlite:{tmp_path}/r.db"\n')
    caplog.clear()
    Relay(str(cfg), env={})
    [said] = [r.getMessage() for r in caplog.records if "change-me" in r.getMessage()]
    assert said.startswith("server.tokens[1] is change-me, the example's token: ") and \
        "set KOURIER_WEBHOOK_TOKEN to a long random token" in said, said
