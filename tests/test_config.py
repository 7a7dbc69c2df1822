"""Config loading: env secrets, *_FILE secrets, and a file:line + key path for every mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay import config
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


@pytest.mark.parametrize("text", [MINIMAL, MINIMAL.replace("${TOKEN}", "${TOKEN:-change-me}")],
                         ids=["no default", "with a default"])
def test_a_secret_file_that_cannot_be_read_is_an_error_not_a_default(tmp_path, text):
    """A mis-mounted Docker secret must not leave the relay on the default token."""
    missing = tmp_path / "secrets" / "token"
    with pytest.raises(ConfigError) as e:
        load(text, {"TOKEN_FILE": str(missing)})
    assert str(e.value) == (f"relay.yaml:2: server.tokens[0]: TOKEN is not set and TOKEN_FILE"
                            f" names a file that cannot be read ({missing}: No such file or"
                            " directory)")


def test_a_secret_file_that_is_not_text_is_one_line_that_does_not_quote_it(tmp_path):
    secret = tmp_path / "token"
    secret.write_bytes(b"\xff\xfesecret")
    with pytest.raises(ConfigError) as e:
        load(MINIMAL, {"TOKEN_FILE": str(secret)})
    assert str(e.value) == (f"relay.yaml:2: server.tokens[0]: TOKEN is not set and TOKEN_FILE"
                            f" names a file that cannot be read ({secret}: not UTF-8 text)")


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
        "relay.yaml:11: routes[0].continue: expected true or false, got a string",
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
