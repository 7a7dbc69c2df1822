"""The config file as read (`relay.yamlfile`): aliases, merge keys, odd keys, bytes."""

from __future__ import annotations

import pytest

from relay import config
from relay.errors import ConfigError
from tests.conftest import at_most

SERVER = "server:\n  tokens: [t]\n"
LOG = 'receivers:\n  - name: log\n    urls: ["console://"]\ndefault_receiver: log\n'


def issues(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as e:
        config.loads(text, "c.yaml", env or {})
    return [str(i) for i in e.value.issues]


def bomb(levels: int) -> str:
    """Billion laughs: each anchor holds nine aliases of the one before."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return SERVER + "templates:\n" + "".join(f"  {line}\n" for line in lines)


def test_an_alias_bomb_is_one_error_not_a_spin():
    with at_most(5):
        found = issues(bomb(9))  # 9**9: 387 million values once expanded
    assert found == ["c.yaml:9: templates.a5[0]: the aliases (*name) here expand to more than"
                     " 100000 values: write the values out, or use fewer aliases"]


def test_an_alias_inside_its_own_anchor_is_one_error_not_a_traceback():
    text = SERVER + "receivers: &r\n  - name: log\n    urls: *r\n"
    assert issues(text) == ["c.yaml:5: receivers[0].urls: an alias (*name) inside the value"
                            " its anchor (&name) names: a value cannot contain itself"]


def test_a_mapping_alias_inside_itself_is_one_error_too():
    assert issues("server: &s\n  tokens: [t]\n  x: *s\n") == [
        "c.yaml:3: server.x: an alias (*name) inside the value its anchor (&name) names:"
        " a value cannot contain itself"]


def test_nesting_too_deep_is_one_error_not_a_traceback():
    with at_most(5):
        found = issues(SERVER + "x: " + "[" * 5000 + "]" * 5000 + "\n")
    assert found == ["c.yaml:3: invalid YAML: nested more than 100 levels deep"]


def test_aliases_that_nest_too_deep_are_one_error():
    text = SERVER + "templates:\n  a0: &a0 [1]\n" + "".join(
        f"  a{i}: &a{i} [[[*a{i - 1}]]]\n" for i in range(1, 40))
    assert issues(text)[0].endswith(": invalid YAML: nested more than 100 levels deep")


def test_anchors_and_aliases_reused_by_hand_still_load():
    text = SERVER + """\
receivers:
  - name: log
    urls: &console ["console://"]
  - name: other
    urls: *console
routes:
  - match: &failed {event: delivery.updated, status: failed}
    receivers: [log]
  - match: *failed
    receivers: [other]
    continue: true
"""
    cfg = config.loads(text, "c.yaml", {})
    assert cfg.receivers["other"].urls == ("console://",)
    assert cfg.routes[1].match == {"event": "delivery.updated", "status": "failed"}


def test_merge_keys_merge_as_yaml_says_and_own_keys_win():
    text = SERVER + """\
receivers:
  - &chat
    name: log
    urls: ["console://"]
    concurrency: 2
  - <<: *chat
    name: other
    concurrency: 3
routes:
  - receivers: [log, other]
"""
    cfg = config.loads(text, "c.yaml", {})
    assert cfg.receivers["other"].urls == ("console://",)
    assert cfg.receivers["other"].concurrency == 3  # its own key, not a duplicate
    assert cfg.receivers["log"].concurrency == 2


def test_a_list_of_merges_takes_the_first_mapping_that_has_a_key():
    text = SERVER + LOG + """\
sending:
  retry:
    <<: [{jitter: 0.1}, {jitter: 0.5, max_age: 1h}]
"""
    retry = config.loads(text, "c.yaml", {}).sending.retry
    assert (retry.jitter, retry.max_age) == (0.1, 3600)


def test_a_mistake_in_a_merged_value_is_reported_where_it_is_written():
    text = SERVER + """\
defaults: &d
  concurrency: lots
receivers:
  - <<: *d
    name: log
    urls: ["console://"]
default_receiver: log
"""
    found = issues(text)
    assert "c.yaml:4: receivers[0].concurrency: expected an integer, got a string" in found


def test_merging_something_that_is_not_a_mapping_says_so():
    assert issues(SERVER + LOG + "sending:\n  <<: [1, 2]\n") == [
        "c.yaml:8: sending.<<: a merge key (<<) takes a mapping (<<: *name) or a list of"
        " mappings, got a list holding a number"]


def test_a_key_that_is_a_list_or_mapping_is_named_at_its_line():
    text = SERVER + "  ? [a, b]\n  : 1\n" + LOG
    assert issues(text) == ["c.yaml:3: server: a key must be a name, got a list"]


def test_a_duplicate_key_is_still_an_error_next_to_a_merge():
    text = SERVER + "  <<: {path: /a}\n  path: /b\n  path: /c\n" + LOG
    assert issues(text) == ["c.yaml:5: server.path: duplicate key: path is also at line 4, and"
                            " this one replaces it: keep one"]


def test_a_file_that_is_not_utf8_is_one_error_at_its_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"server:\n  tokens: [t\xe9st]\n")  # Latin-1, as an old editor saves it
    with pytest.raises(ConfigError) as e:
        config.load(cfg, {})
    assert str(e.value) == (f"{cfg}:2: the file is not UTF-8 text: byte 0xe9 at column 13:"
                            " save it as UTF-8")


@pytest.mark.parametrize("content, why", [
    (None, "cannot be read: No such file or directory"),
    (b"\xff\xfesecret", "is not UTF-8 text"),
])
def test_a_secret_file_that_cannot_be_used_says_why_and_never_shows_it(tmp_path, content, why):
    secret = tmp_path / "token"
    if content is not None:
        secret.write_bytes(content)
    found = issues('server:\n  tokens: ["${TOKEN}"]\n' + LOG, {"TOKEN_FILE": str(secret)})
    assert found == [f"c.yaml:2: server.tokens[0]: environment variable TOKEN is not set, and"
                     f" TOKEN_FILE names {secret}, which {why}"]


def test_a_secret_file_that_is_a_folder_says_so(tmp_path):
    found = issues('server:\n  tokens: ["${TOKEN}"]\n' + LOG, {"TOKEN_FILE": str(tmp_path)})
    assert found == [f"c.yaml:2: server.tokens[0]: environment variable TOKEN is not set, and"
                     f" TOKEN_FILE names {tmp_path}, which cannot be read: Is a directory"]


def test_a_mapping_that_merges_itself_is_one_error_not_a_traceback():
    assert issues("server: &s\n  tokens: [t]\n  <<: *s\n") == [
        "c.yaml:3: server.<<: an alias (*name) inside the value its anchor (&name) names:"
        " a value cannot contain itself"]


def test_a_merged_mapping_keeps_its_own_keys_over_what_it_merges():
    text = SERVER + LOG + """\
sending:
  retry:
    <<: &mid
      <<: {jitter: 0.1, max_age: 1h}
      jitter: 0.3
"""
    retry = config.loads(text, "c.yaml", {}).sending.retry
    assert (retry.jitter, retry.max_age) == (0.3, 3600)


def test_merges_that_multiply_are_bounded_like_aliases():
    lines = ["m0: &m0 {k: 1}"] + [
        f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 9)}]}}" for i in range(1, 12)]
    with at_most(5):
        found = issues(SERVER + "templates:\n" + "".join(f"  {line}\n" for line in lines))
    assert any("expand to more than 100000 values" in line for line in found), found
