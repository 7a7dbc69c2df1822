"""Config loading: env secrets, *_FILE secrets, and a file:line + key path for every mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay import config, yamlfile
from relay.errors import ConfigError
from tests.conftest import at_most

MINIMAL = """\
server:
  tokens: ["${TOKEN}"]
receivers:
  - name: chat
    urls: ["${CHAT_URL:-console://}"]
default_receiver: chat
"""


def load(text, env=None, tmp_path=None):
    return config.loads(text, "relay.yaml", env or {})


def test_env_reference_and_default_are_resolved():
    cfg = load(MINIMAL, {"TOKEN": "s3cret"})
    assert cfg.server.tokens == ("s3cret",)
    assert cfg.receivers["chat"].urls == ("console://",)


def test_env_file_variant_reads_the_secret_from_a_file(tmp_path):
    secret = tmp_path / "token"
    secret.write_text("from-file\n")
    cfg = load(MINIMAL, {"TOKEN_FILE": str(secret), "CHAT_URL": "json://localhost"})
    assert cfg.server.tokens == ("from-file",)
    assert cfg.receivers["chat"].urls == ("json://localhost",)


def test_unset_variable_fails_with_one_line_naming_it_and_its_place():
    with pytest.raises(ConfigError) as e:
        load(MINIMAL, {})
    assert str(e.value) == ("relay.yaml:2: server.tokens[0]: environment variable TOKEN is not"
                            " set (nor TOKEN_FILE)")


@pytest.mark.parametrize("tokens, env, said", [
    ('["${TOKEN}"]', {"TOKEN": ""}, " (${TOKEN} is empty)"),
    ('["${TOKEN}", "${SPARE:-}"]', {"TOKEN": ""}, " (${TOKEN}, ${SPARE} are empty)"),
    ('[""]', {}, ""),
])
def test_no_non_empty_token_names_the_variables_that_came_out_empty(tokens, env, said):
    """`TOKEN=` set but empty (a compose file's `KOURIER_WEBHOOK_TOKEN:`): the error names
    the variable to set, not only the key."""
    with pytest.raises(ConfigError) as e:
        load(MINIMAL.replace('["${TOKEN}"]', tokens), env)
    assert str(e.value) == ("relay.yaml:2: server.tokens: at least one non-empty webhook token"
                            f" is required{said}")


@pytest.mark.parametrize("text", [MINIMAL, MINIMAL.replace("${TOKEN}", "${TOKEN:-change-me}")],
                         ids=["no default", "with a default"])
def test_a_secret_file_that_cannot_be_read_is_an_error_not_a_default(tmp_path, text):
    """A mis-mounted Docker secret must not leave the relay on the default token."""
    missing = tmp_path / "secrets" / "token"
    with pytest.raises(ConfigError) as e:
        load(text, {"TOKEN_FILE": str(missing)})
    assert str(e.value) == (f"relay.yaml:2: server.tokens[0]: environment variable TOKEN is not"
                            f" set, and TOKEN_FILE names {missing}, which cannot be read: No such"
                            " file or directory")


def test_a_secret_file_that_is_not_text_is_one_line_that_does_not_quote_it(tmp_path):
    secret = tmp_path / "token"
    secret.write_bytes(b"\xff\xfesecret")
    with pytest.raises(ConfigError) as e:
        load(MINIMAL, {"TOKEN_FILE": str(secret)})
    assert str(e.value) == (f"relay.yaml:2: server.tokens[0]: environment variable TOKEN is not"
                            f" set, and TOKEN_FILE names {secret}, which is not UTF-8 text")


@pytest.mark.parametrize("name", ["a large file", "/dev/zero"])
def test_a_secret_file_larger_than_a_secret_is_refused_without_reading_it_all(tmp_path, name):
    # `TOKEN_FILE=/dev/zero` (a mount gone wrong) was read until memory ran out.
    secret = tmp_path / "token"
    if name == "/dev/zero":
        secret = Path("/dev/zero")
    else:
        secret.write_bytes(b"t" * (yamlfile.MAX_SECRET_BYTES + 1))
    with pytest.raises(ConfigError) as e:
        load(MINIMAL, {"TOKEN_FILE": str(secret)})
    assert str(e.value) == (f"relay.yaml:2: server.tokens[0]: environment variable TOKEN is not"
                            f" set, and TOKEN_FILE names {secret}, which is larger than a secret"
                            " can be (64 KiB)")
    if name != "/dev/zero":  # the largest a secret may be still reads
        secret.write_bytes(b"t" * yamlfile.MAX_SECRET_BYTES)
        assert load(MINIMAL, {"TOKEN_FILE": str(secret)}).server.tokens == \
            ("t" * yamlfile.MAX_SECRET_BYTES,)


@pytest.mark.parametrize("name", ["a large file", "/dev/zero"])
def test_a_config_file_larger_than_a_config_is_one_line_without_reading_it_all(tmp_path, name):
    # `-c /dev/zero`, or a log named by mistake: read whole, it never ended.
    path = Path("/dev/zero") if name == "/dev/zero" else tmp_path / "relay.yaml"
    if name != "/dev/zero":
        path.write_bytes(MINIMAL.encode() + b"#" * yamlfile.MAX_BYTES)
    with pytest.raises(ConfigError) as e:
        config.load(path, {"TOKEN": "t"})
    assert str(e.value) == f"{path}: the file is larger than a config can be (16 MiB): is it" \
                           " the right file?"


def test_dollar_dollar_is_a_literal_dollar():
    cfg = load(MINIMAL.replace("${TOKEN}", "pa$$word"), {})
    assert cfg.server.tokens == ("pa$word",)


def test_every_issue_is_reported_at_once_in_line_order():
    text = """\
server:
  tokens: [t]
  listen: nowhere
receivers:
  - name: a
    urls: ["console://"]
    concurrency: 0
routes:
  - match: {event: delivery.created}
    receivers: [b]
    continue: "yes"
"""
    with pytest.raises(ConfigError) as e:
        load(text)
    assert [str(i) for i in e.value.issues] == [
        "relay.yaml:3: server.listen: expected host:port, got 'nowhere'",
        "relay.yaml:7: receivers[0].concurrency: must be between 1 and 64",
        "relay.yaml:10: routes[0].receivers[0]: undefined receiver \"b\"",
        "relay.yaml:11: routes[0].continue: expected true or false, got a string (write true"
        " or false, without quotes)",
    ]


@pytest.mark.parametrize("text, seconds", [("500ms", 0.5), ("5s", 5), ("2m", 120), ("1h", 3600),
                                           ("7d", 604800), (30, 30.0)])
def test_durations(text, seconds):
    assert config.duration(text) == seconds


@pytest.mark.parametrize("text, count, per", [("1/s", 1, 1), ("30/min", 30, 60), ("100/5m", 100, 300)])
def test_rates(text, count, per):
    assert config.rate(text) == config.RateLimit(count, per)


def test_missing_file_is_one_clear_line(tmp_path):
    with pytest.raises(ConfigError) as e:
        config.load(tmp_path / "nope.yaml")
    assert str(e.value) == f"{tmp_path / 'nope.yaml'}: cannot read config: No such file or directory"


OLD_DELIVERY = MINIMAL + """\
delivery:
  concurrency: 4
  suppress_stale: true
  retry: {schedule: [0, 5s]}
"""


def test_the_old_delivery_section_still_runs_as_sending_and_deliveries():
    cfg = load(OLD_DELIVERY, {"TOKEN": "t"})
    assert cfg.sending.concurrency == 4
    assert cfg.sending.retry.schedule == (0.0, 5.0)
    assert cfg.deliveries.suppress_stale is True
    assert [str(w) for w in cfg.warnings] == [
        'relay.yaml:7: delivery: warning: renamed: call this section "sending:" (the old name'
        ' still works for now); "delivery" only ever means a Kourier parcel delivery',
        'relay.yaml:9: delivery.suppress_stale: warning: renamed: write "deliveries:'
        ' {suppress_stale: ...}" (it is about parcel deliveries)']


def test_the_new_sections_load_without_warnings():
    cfg = load(MINIMAL + "sending: {concurrency: 3}\ndeliveries: {suppress_stale: true}\n",
               {"TOKEN": "t"})
    assert (cfg.sending.concurrency, cfg.deliveries.suppress_stale, cfg.warnings) == (3, True, ())


def test_old_and_new_sections_together_are_an_error_at_the_old_one():
    with pytest.raises(ConfigError) as e:
        load(MINIMAL + "sending: {concurrency: 3}\ndelivery: {concurrency: 2}\n", {"TOKEN": "t"})
    assert [str(i) for i in e.value.issues] == [
        'relay.yaml:8: delivery: the old "delivery:" section and "sending:" are both here:'
        ' move everything into "sending:"']


def test_an_error_inside_the_old_section_names_the_old_key():
    with pytest.raises(ConfigError) as e:
        load(MINIMAL + "delivery: {concurrency: many}\n", {"TOKEN": "t"})
    assert str(e.value.issues[0]) == \
        "relay.yaml:7: delivery.concurrency: expected an integer, got a string"


@pytest.mark.parametrize("path, line", [
    ("server", 1),                    # a first key with no dot: looped forever before
    ("server.tokens", 1),             # nothing of it recorded
    ("receivers[0].urls[1]", 3),      # falls back to the nearest recorded parent
    ("routes[4]", 1),
    ("", 1),
    ("weird..path[x]", 1),            # a shape the trimming does not know
])
def test_source_line_finds_a_line_for_every_path_shape(path, line):
    source = config.Source("c.yaml", {"": 1, "receivers": 2, "receivers[0]": 3})
    with at_most(5):  # a path without a dot used to loop forever
        assert source.line(path) == line


@pytest.mark.parametrize("url, resolved", [
    ("sqlite:relay.db", "sqlite:/etc/kr/relay.db"),
    ("sqlite:data/relay.db", "sqlite:/etc/kr/data/relay.db"),
    ("sqlite://relay.db", "sqlite:/etc/kr/relay.db"),
    ("sqlite:/var/lib/relay.db", "sqlite:/var/lib/relay.db"),
    ("sqlite:///var/lib/relay.db", "sqlite:///var/lib/relay.db"),
    ("sqlite:////var/lib/relay.db", "sqlite:////var/lib/relay.db"),
    ("sqlite:", "sqlite:"),
    ("postgresql://u@db/relay", "postgresql://u@db/relay"),
])
def test_a_relative_sqlite_path_is_relative_to_the_config_folder(url, resolved):
    assert config.store_beside(url, Path("/etc/kr")) == resolved


def test_load_resolves_the_store_beside_the_config_file(tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "c.yaml").write_text(MINIMAL + "store: {url: 'sqlite:r.db'}\n")
    monkeypatch.chdir(tmp_path)
    loaded = config.load("cfg/c.yaml", {"TOKEN": "x"})
    assert loaded.store.url == f"sqlite:{tmp_path / 'cfg' / 'r.db'}"


BASE = MINIMAL.replace("${TOKEN}", "t")


@pytest.mark.parametrize("snippet, found", [
    # Not a number of seconds at all: YAML's .nan / .inf are floats.
    ("sending: {attempt_timeout: .nan}", "sending.attempt_timeout: must be a finite duration, got nan"),
    ("  header_timeout: .nan", "server.header_timeout: must be a finite duration, got nan"),
    ("store: {retention: .inf}", "store.retention: must be a finite duration, got inf"),
    ("sending: {retry: {schedule: [0, .nan]}}",
     "sending.retry.schedule: must be a finite duration, got nan"),
    ("deliveries: {}\nwatches: [{name: w, start: {event: delivery.created}, after: .inf,"
     " receivers: [chat]}]", "watches[0].after: must be a finite duration, got inf"),
    # Longer than anything a relay waits for: a date past what datetime can show.
    ("routes: [{receivers: [chat], digest: {window: 1.0e+300}}]",
     "routes[0].digest.window: must be at most 3650d, got 1e+300"),
    ("store: {retention: 99999d}", "store.retention: must be at most 3650d, got '99999d'"),
    # Zero where zero means every send fails (requests refuses a timeout of 0).
    ("sending: {attempt_timeout: 0}", "sending.attempt_timeout: must be more than 0"),
    # A rate over no time: the token bucket divides by it.
    ("receivers:\n  - {name: chat, urls: ['console://'], rate_limit: 1/0s}",
     "receivers[0].rate_limit: the period must be more than 0, got '1/0s'"),
])
def test_values_no_relay_can_run_with_are_refused_at_their_key(snippet, found):
    if snippet.startswith("  "):  # a key of server:
        text = BASE.replace("server:\n", f"server:\n{snippet}\n")
    elif snippet.startswith("receivers:"):
        text = BASE.replace('receivers:\n  - name: chat\n    urls: ["${CHAT_URL:-console://}"]\n',
                            f"{snippet}\n")
    else:
        text = f"{BASE}{snippet}\n"
    with pytest.raises(ConfigError) as e:
        load(text)
    assert [i.path + ": " + i.message for i in e.value.issues] == [found]


def test_two_routes_of_one_name_are_an_error_at_the_second():
    # Templates, digest windows and holds are keyed by the route's name: the second
    # route's title was used for the first route's events.
    text = BASE + """\
routes:
  - name: problems
    match: {status: failed}
    receivers: [chat]
    title: "failed {{ delivery_id }}"
  - name: problems
    match: {event: delivery.cancelled}
    receivers: [chat]
    title: "cancelled {{ delivery_id }}"
"""
    with pytest.raises(ConfigError) as e:
        load(text)
    assert [str(i) for i in e.value.issues] == [
        'relay.yaml:12: routes[1].name: duplicate route "problems" (also routes[0], line 8):'
        " each route needs its own name"]


@pytest.mark.parametrize("path, message", [
    ("/hook/{id}", "must not hold { or }"),
    ("/hook{", "must not hold { or }"),
    ("/web hook", "must not hold spaces"),
    ("/-/reload", "is under /-/, the relay's own admin API: choose another path"),
    ("/ui/login", "is under /ui/, the relay's own status page: choose another path"),
    ("/ui", "is under /ui/, the relay's own status page: choose another path"),
])
def test_a_webhook_path_the_server_cannot_route_is_refused(path, message):
    with pytest.raises(ConfigError) as e:
        load(BASE.replace("server:\n", f"server:\n  path: '{path}'\n"))
    assert [str(i) for i in e.value.issues] == [f"relay.yaml:2: server.path: {message}"]


def test_the_paths_a_webhook_may_not_take_are_the_ones_the_relay_serves():
    from typing import cast

    from relay.schema import RESERVED_PATHS
    from relay.web import Services, create_app

    app = create_app(cast(Services, None), "/webhook", 65536)  # routes only: nothing runs
    own = {r.canonical for r in app.router.resources()} - {"/webhook", "/healthz", "/readyz",
                                                          "/metrics"}
    assert own and all(f"{p}/".startswith(tuple(RESERVED_PATHS)) for p in own), own


def test_a_number_or_boolean_from_the_environment_is_one_where_the_key_wants_one():
    text = """\
server:
  tokens: ["${TOKEN}"]
  watch_config: ${WATCH}
  max_body_bytes: ${BODY}
sending: {concurrency: "${N}", retry: {jitter: "${J}"}}
receivers: [{name: chat, urls: ["console://"]}]
default_receiver: chat
"""
    cfg = load(text, {"WATCH": "true", "BODY": "1024", "TOKEN": "1234", "N": "4", "J": "0.5"})
    assert (cfg.server.watch_config, cfg.server.max_body_bytes) == (True, 1024)
    assert (cfg.sending.concurrency, cfg.sending.retry.jitter) == (4, 0.5)
    assert cfg.server.tokens == ("1234",)  # a key that wants text keeps the text


def test_a_value_from_the_environment_of_the_wrong_type_is_still_an_error():
    with pytest.raises(ConfigError) as e:
        load(BASE + "sending: {concurrency: '${N}'}\n", {"N": "lots"})
    assert [str(i) for i in e.value.issues] == [
        "relay.yaml:7: sending.concurrency: expected an integer, got a string (a value from"
        " ${N}, not shown)"]
