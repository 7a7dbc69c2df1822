"""Config of digests and quiet hours: every mistake is one issue with file:line and key path."""

from __future__ import annotations

import pytest

from relay import config
from relay.errors import ConfigError
from relay.message import Message
from relay.quiet import Window

HEAD = """\
server:
  tokens: [t]
receivers:
  - name: ops
    urls: ["console://"]
"""
QUIET = HEAD + """\
    quiet_hours:
      timezone: Europe/Berlin
      windows:
        - {days: [mon], from: "22:00", to: "07:00"}
"""
ROUTE = HEAD + """\
routes:
  - name: failures
    receivers: [ops]
"""


def issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        config.loads(text, "relay.yaml", {})
    return [str(i) for i in e.value.issues]


def test_a_valid_digest_and_quiet_hours_load() -> None:
    cfg = config.loads(QUIET + ROUTE.removeprefix(HEAD) + "    digest: {window: 10m,"
                       " group_by: [hub], max_events: 50}\n", "relay.yaml", {})
    assert cfg.routes[0].digest == config.DigestConfig(600.0, ("hub",), 50)
    hours = cfg.receivers["ops"].quiet_hours
    assert hours is not None and hours.timezone == "Europe/Berlin"
    assert hours.windows == (Window(frozenset({0}), 22 * 60, 7 * 60),)


@pytest.mark.parametrize("quiet, expected", [
    ('      timezone: Mars/Olympus\n      windows: [{days: [mon], from: "22:00", to: "07:00"}]',
     "relay.yaml:7: receivers[0].quiet_hours.timezone: unknown time zone 'Mars/Olympus'"),
    ('      timezone: Europe/Berln\n      windows: [{days: [mon], from: "22:00", to: "07:00"}]',
     "relay.yaml:7: receivers[0].quiet_hours.timezone: unknown time zone 'Europe/Berln'"
     ' (did you mean "Europe/Berlin"?)'),
    ('      windows: [{days: [mon], from: "22:00", to: "07:00"}]',
     "relay.yaml:6: receivers[0].quiet_hours.timezone: needed: the time zone the windows are"
     " in (e.g. Europe/Berlin)"),
    ("      timezone: UTC",
     'relay.yaml:6: receivers[0].quiet_hours.windows: needs at least one window like'
     ' {days: [mon], from: "22:00", to: "07:00"}'),
    ("      timezone: UTC\n      windows: []",
     'relay.yaml:8: receivers[0].quiet_hours.windows: needs at least one window like'
     ' {days: [mon], from: "22:00", to: "07:00"}'),
    ('      timezone: UTC\n      windows: [{days: [mon], from: 22:00, to: "07:00"}]',
     'relay.yaml:8: receivers[0].quiet_hours.windows[0].from: expected a time like "07:00" in'
     " quotes (unquoted, YAML reads it as a number)"),
    ('      timezone: UTC\n      windows: [{days: [mon], from: "24:00", to: "07:00"}]',
     'relay.yaml:8: receivers[0].quiet_hours.windows[0].from: "24:00" is only allowed as the'
     ' end ("to") of a window'),
    ('      timezone: UTC\n      windows: [{days: [mon], from: "22:00", to: "25:00"}]',
     "relay.yaml:8: receivers[0].quiet_hours.windows[0].to: expected a time from 00:00 to"
     " 24:00, got '25:00'"),
    ('      timezone: UTC\n      windows: [{days: [mondays], from: "22:00", to: "07:00"}]',
     "relay.yaml:8: receivers[0].quiet_hours.windows[0].days: unknown day 'mondays' (did you"
     ' mean "mon"?): use mon, tue, wed, thu, fri, sat, sun, a range like mon-fri, weekdays,'
     " weekend or daily"),
    ('      timezone: UTC\n      windows: [{days: [mon], from: "22:00", to: "22:00"}]',
     'relay.yaml:8: receivers[0].quiet_hours.windows[0].to: the same time as "from": write'
     ' from "00:00" to "24:00" for a whole day'),
    ('      timezone: UTC\n      windows: [{days: [mon], from: "22:00"}]',
     'relay.yaml:8: receivers[0].quiet_hours.windows[0].to: missing "to"'),
    ('      timezone: UTC\n      windows: [{days: [mon], from: "22:00", to: "07:00",'
     ' till: "08:00"}]',
     'relay.yaml:8: receivers[0].quiet_hours.windows[0].till: unknown key "till"'),
    ('      timezone: UTC\n      windows: [{days: [mon], from: "22:00", to: "07:00"}]\n'
     "      urgent: [critical]",
     "relay.yaml:9: receivers[0].quiet_hours.urgent[0]: must be one of info, success, warning,"
     " failure, got 'critical'"),
    ('      timezone: UTC\n      windows: [{days: [mon], from: "22:00", to: "07:00"}]\n'
     "      template: mornign",
     'relay.yaml:9: receivers[0].quiet_hours.template: undefined template "mornign"'),
])
def test_quiet_hours_mistakes(quiet: str, expected: str) -> None:
    assert issues(HEAD + "    quiet_hours:\n" + quiet + "\n") == [expected]


@pytest.mark.parametrize("digest, expected", [
    ("{group_by: [hub]}",
     "relay.yaml:9: routes[0].digest.window: needed: how long a digest collects, e.g. 10m"),
    ("{window: soon}",
     "relay.yaml:9: routes[0].digest.window: expected a duration like 30s, 5m, 2h, got 'soon'"),
    ("{window: 0s}", "relay.yaml:9: routes[0].digest.window: must be longer than 0s"),
    ("{window: 10m, max_events: 0}",
     "relay.yaml:9: routes[0].digest.max_events: must be between 1 and 1000"),
    ("{window: 10m, group_by: [3]}",
     "relay.yaml:9: routes[0].digest.group_by: expected a list of strings, but item 0 is a"
     " number"),
    ("{window: 10m, every: 5m}", 'relay.yaml:9: routes[0].digest.every: unknown key "every"'),
    ("10m", "relay.yaml:9: routes[0].digest: expected a mapping, got a string (e.g. digest:"
            " {window: 10m, group_by: [hub]})"),
])
def test_digest_mistakes(digest: str, expected: str) -> None:
    assert issues(ROUTE + f"    digest: {digest}\n") == [expected]


def check(tmp_path, text: str):
    from click.testing import CliRunner

    from relay.cli import main

    path = tmp_path / "relay.yaml"
    path.write_text(text)
    return CliRunner().invoke(main, ["check", "--strict", "-c", str(path)])


NIGHT = """\
server:
  tokens: [t]
receivers:
  - name: ops
    urls: ["console://"]
    quiet_hours:
      timezone: Europe/Berlin
      windows: [{days: daily, from: "22:00", to: "07:00"}]
      template: night
templates:
  night:
"""
CHECKED = NIGHT + """\
    title: "{{ count }} while {{ receiver }} slept ({{ quiet.until }})"
    body: "{% for n in notifications %}{{ n.title }}{% endfor %}SUMMARY_EXTRA"
routes:
  - name: failures
    receivers: [ops]
    digest: {window: 10m, group_by: [hub]}
    title: "{{ count }} at {{ group.hub }} ({{ route }}, {{ window.closes }})"
    body: "{% for e in events %}{{ e.delivery_id }}{% endfor %}DIGEST_EXTRA"
"""


def test_check_knows_what_digest_and_summary_templates_see(tmp_path) -> None:
    result = check(tmp_path, CHECKED.replace("SUMMARY_EXTRA", "").replace("DIGEST_EXTRA", ""))
    assert (result.exit_code, result.stdout) == (0, "")


def test_check_warns_of_payload_fields_in_digest_and_summary_templates(tmp_path) -> None:
    result = check(tmp_path, CHECKED.replace("SUMMARY_EXTRA", "{{ title }}")
                   .replace("DIGEST_EXTRA", "{{ delivery_id }}"))
    path = tmp_path / "relay.yaml"
    assert result.stdout.splitlines() == [
        f"{path}:13: templates.night.body: warning: uses title, which a quiet-hours summary"
        " template never has (it has count, notifications, quiet, receiver); renders empty:"
        " each item is in notifications",
        f"{path}:19: routes[0].body: warning: uses delivery_id, which a digest template never"
        " has (it has count, events, group, route, window); renders empty: each item is in"
        " events",
    ]
    assert result.exit_code == 1  # --strict


KEYS = NIGHT + """\
    title: "{{ quiet.from }} to {{ quiet.until }}QUIET_EXTRA"
    body: |
      {% for n in notifications %}{{ n.title }} {{ n.body }} {{ n.type }} {{ n.route }}
      {{ n.delivery_id }} {{ n.event_type }} {{ n.at }}{% for k, v in n.items() %}{% endfor %}
      ITEM_EXTRA{% endfor %}
routes:
  - name: failures
    receivers: [ops]
    digest: {window: 10m, group_by: [hub, address.city]}
    title: "{{ group.hub }} {{ group['address.city'] }} {{ window.seconds }}DIGEST_EXTRA"
    body: "{% for e in events %}{{ e.opened }} {{ e.anything }}{% endfor %}{{ window.opened
      }} {{ window.closes }} {{ window.closed }}"
"""


def test_check_knows_every_key_of_what_digest_and_summary_templates_see(tmp_path) -> None:
    # A digest's events are payloads: any field (e.anything), as the docs promise.
    result = check(tmp_path, KEYS.replace("QUIET_EXTRA", "").replace("ITEM_EXTRA", "")
                   .replace("DIGEST_EXTRA", ""))
    assert (result.exit_code, result.stdout) == (0, "")


def test_check_warns_of_keys_digest_and_summary_objects_never_have(tmp_path) -> None:
    result = check(tmp_path, KEYS.replace("QUIET_EXTRA", " {{ quiet.since }}")
                   .replace("ITEM_EXTRA", "{{ n.bogus }} {{ n['titel'] }}")
                   .replace("DIGEST_EXTRA", " {{ window.open }} {{ group.address }}"))
    path = tmp_path / "relay.yaml"
    assert result.stdout.splitlines() == [
        f"{path}:12: templates.night.title: warning: uses quiet.since, which a quiet-hours"
        " summary's quiet never has (it has from, until); renders empty",
        f"{path}:16: templates.night.body: warning: uses n.bogus, which a notification of a"
        " quiet-hours summary never has (it has at, body, delivery_id, event_type, route,"
        " title, type); renders empty",
        f"{path}:16: templates.night.body: warning: uses n['titel'], which a notification of a"
        " quiet-hours summary never has (it has at, body, delivery_id, event_type, route,"
        ' title, type); renders empty (did you mean "title"?)',
        f"{path}:21: routes[0].title: warning: uses window.open, which a digest's window never"
        ' has (it has closed, closes, opened, seconds); renders empty (did you mean "opened"?)',
        f"{path}:21: routes[0].title: warning: uses group.address, which this digest's group"
        " (its group_by) never has (it has address.city, hub); renders empty (did you mean"
        ' "address.city"?)',
    ]
    assert result.exit_code == 1  # --strict


def test_check_leaves_alone_keys_reached_through_a_filter_or_a_computed_key(tmp_path) -> None:
    result = check(tmp_path, KEYS.replace(
        "QUIET_EXTRA", " {{ (quiet | default({})).since }} {{ quiet[receiver] }}").replace(
        "ITEM_EXTRA", "").replace("DIGEST_EXTRA", "").replace(
        "{% for n in notifications %}", "{% for m in notifications | reverse %}{{ m.bogus }}"
        "{% endfor %}{% for n in notifications %}"))
    assert (result.exit_code, result.stdout) == (0, "")


def test_the_keys_check_knows_are_the_keys_the_relay_renders_with() -> None:
    """`check` warns about keys outside WINDOW_FIELDS, QUIET_FIELDS and NOTIFICATION_FIELDS:
    they must be exactly what a summary and a digest window are rendered with."""
    from relay.digests import WINDOW_FIELDS, window_context
    from relay.escaping import NO_CHANNEL
    from relay.store.records import Job, Timer
    from relay.summaries import NOTIFICATION_FIELDS, QUIET_FIELDS, render_summary
    from relay.templating import Templates

    assert set(window_context(0.0, 600.0, 600.0)) == WINDOW_FIELDS
    cfg = config.loads(NIGHT + """\
    title: "{{ quiet.keys() | sort | join(',') }}"
    body: "{% for n in notifications %}{{ n.keys() | sort | join(',') }}{% endfor %}"
""", "relay.yaml", {})
    job = Job(id=1, event_id=1, receiver="ops", url_index=0, route="all",
              message=Message("t", "b", "info", "text"), state="held", attempts=0, created_at=1.0,
              next_attempt_at=1.0, delivery_id="D-1", event_type="delivery.updated")
    timer = Timer(1, "quiet", "quiet:ops:0", "", 1, 7200.0, "claimed", 1.0, {"receiver": "ops"})
    batch = render_summary(Templates.from_config(cfg), timer, [job], 7200.0, NO_CHANNEL)
    assert (batch.message.title, batch.message.body) == (",".join(sorted(QUIET_FIELDS)),
                                         ",".join(sorted(NOTIFICATION_FIELDS)))
