"""`route` (dry run) against config.example.yaml: a table of events, `--expect`, bad input."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from relay.cli import main
from tests.conftest import ROOT

EXAMPLE = str(ROOT / "config.example.yaml")
ENV = dict.fromkeys(["OPS_CHAT_URL", "KOURIER_RELAY_TIMEZONE", "KOURIER_WEBHOOK_TOKEN",
                     "KOURIER_RELAY_LISTEN", "KOURIER_RELAY_STORE", "KOURIER_ADMIN_TOKEN"])
STAMP = "2024-09-14T14:30:00Z"
HEADER = "routes (first match wins unless it says continue):"
NOT_CANCELLED = "  no     cancelled: event == 'delivery.cancelled' (is '{}')"


def event(type_: str, status: str | None = None, **extra: object) -> str:
    body = {"event": type_, "delivery_id": "D-1001", "timestamp": STAMP, **extra}
    if status:
        body["status"] = status
    return json.dumps(body)


def route(*args: str, input: str | None = None, config: str = EXAMPLE):
    return CliRunner().invoke(main, ["route", "-c", config, *args], input=input, env=ENV)


CASES = {
    "created": (event("delivery.created"), [
        "event: delivery.created  delivery_id: D-1001",
        "",
        HEADER,
        NOT_CANCELLED.format("delivery.created"),
        "  no     failed: event == 'delivery.updated' (is 'delivery.created'); status in"
        " [== 'failed', == 'returned'] (is missing)",
        "  no     delivered: event == 'delivery.updated' (is 'delivery.created'); status =="
        " 'delivered' (is missing)",
        '  (no route matched: default_receiver "log" takes it)',
        "",
        "receivers: log",
        "",
        "notifications:",
        "  log[0] console://***  route=(default)  type=info  format=text",
        "    title (23/250 chars): Delivery D-1001 created",
        "    body (50/32768 chars):",
        "      Time: 2024-09-14 14:30 UTC",
        "      Event: delivery.created",
    ]),
    "in_transit": (event("delivery.updated", "in_transit"), [
        "event: delivery.updated  delivery_id: D-1001  status: in_transit",
        "",
        HEADER,
        NOT_CANCELLED.format("delivery.updated"),
        "  no     failed: status in [== 'failed', == 'returned'] (is 'in_transit')",
        "  no     delivered: status == 'delivered' (is 'in_transit')",
        '  (no route matched: default_receiver "log" takes it)',
        "",
        "receivers: log",
        "",
        "notifications:",
        "  log[0] console://***  route=(default)  type=info  format=text",
        "    title (27/250 chars): Delivery D-1001: In transit",
        "    body (69/32768 chars):",
        "      Status: In transit",
        "      Time: 2024-09-14 14:30 UTC",
        "      Event: delivery.updated",
    ]),
    "delivered": (event("delivery.updated", "delivered"), [
        "event: delivery.updated  delivery_id: D-1001  status: delivered",
        "",
        HEADER,
        NOT_CANCELLED.format("delivery.updated"),
        "  no     failed: status in [== 'failed', == 'returned'] (is 'delivered')",
        "  MATCH  delivered -> log",
        "",
        "receivers: log",
        "",
        "notifications:",
        "  log[0] console://***  route=delivered  type=success  format=text",
        "    title (27/250 chars): ✓ Delivery D-1001 delivered",
        "    body (33/32768 chars):",
        "      Delivered at 2024-09-14 14:30 UTC",
    ]),
    "failed": (event("delivery.updated", "failed"), [
        "event: delivery.updated  delivery_id: D-1001  status: failed",
        "",
        HEADER,
        NOT_CANCELLED.format("delivery.updated"),
        "  MATCH  failed -> ops-chat",
        '  skip   delivered: not evaluated, "failed" matched first without continue',
        "",
        "receivers: ops-chat",
        "",
        "digests (no message of its own from these routes):",
        "  ops-chat[0] joins the digest hub=(none), closes HH:MM (route failed; if this event opens"
        " the window)",
        "",
        "notifications: none",
    ]),
    "cancelled": (event("delivery.cancelled"), [
        "event: delivery.cancelled  delivery_id: D-1001",
        "",
        HEADER,
        "  MATCH  cancelled -> ops-chat",
        '  skip   failed: not evaluated, "cancelled" matched first without continue',
        '  skip   delivered: not evaluated, "cancelled" matched first without continue',
        "",
        "receivers: ops-chat",
        "",
        "notifications:",
        "  ops-chat[0] console://***  route=cancelled  type=warning  format=text",
        "    title (28/250 chars): ⚠ Delivery D-1001: Cancelled",
        "    body (42/32768 chars):",
        "      delivery.cancelled at 2024-09-14 14:30 UTC",
    ]),
    "unknown type": (event("parcel.lost"), [
        "event: parcel.lost  delivery_id: D-1001  (not a Kourier event type: only routes that"
        " name it in an event matcher can match it)",
        "",
        HEADER,
        NOT_CANCELLED.format("parcel.lost"),
        "  no     failed: event == 'delivery.updated' (is 'parcel.lost'); status in"
        " [== 'failed', == 'returned'] (is missing)",
        "  no     delivered: event == 'delivery.updated' (is 'parcel.lost'); status =="
        " 'delivered' (is missing)",
        '  (no route matched; unknown event types skip default_receiver "log")',
        "",
        "receivers: (none)",
        "",
        "notifications: none",
    ]),
}
RECEIVERS = {"created": "log", "in_transit": "log", "delivered": "log", "failed": "ops-chat",
             "cancelled": "ops-chat", "unknown type": ""}


# What the example config's watch does with each case (it sits between receivers and
# notifications). The samples are from 2024: older than the watch's 4 h, so late.
NOTHING = ["  (none armed or disarmed)"]
# A config's head: the webhook token and the console receiver `log`.
TO_LOG = 'server:\n  tokens: ["t0ken"]\nreceivers:\n  - {name: log, urls: ["console://"]}\n'
WATCHES = {
    "created": ["  ARM    not-delivered -> ops-chat: fires 1m after receipt: the event is"
                " already older than after (4h)"],
    "delivered": ["  DISARM not-delivered: stop[0] matches (a timer armed for this delivery"
                  " will not fire)"],
    "cancelled": ["  DISARM not-delivered: stop[1] matches (a timer armed for this delivery"
                  " will not fire)"],
}
for _case, (_body, _lines) in CASES.items():
    _at = next(i for i, line in enumerate(_lines) if line.startswith("notifications"))
    _lines[_at:_at] = ["watches:", *WATCHES.get(_case, NOTHING), ""]


@pytest.mark.parametrize("case", list(CASES))
def test_report_shows_matches_reasons_receivers_and_rendered_text(case):
    body, lines = CASES[case]
    result = route("-", input=body)
    # A digest closes ten minutes from now (the wall clock): the time is not compared.
    assert re.sub(r"closes \d\d:\d\d ", "closes HH:MM ", result.stdout).splitlines() == lines
    assert result.stderr == ""
    assert result.exit_code == 0


@pytest.mark.parametrize("case", list(CASES))
def test_expect_with_the_right_receivers_exits_0(case):
    result = route("-", "--expect", RECEIVERS[case], input=CASES[case][0])
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize("case, wrong, line", [
    ("failed", "log", "error: expected receivers log, got ops-chat"),
    ("created", "log,ops-chat", "error: expected receivers log,ops-chat, got log"),
    ("unknown type", "log", "error: expected receivers log, got (none)"),
    ("delivered", "", "error: expected receivers (none), got log"),
])
def test_expect_with_wrong_receivers_exits_1_with_one_line(case, wrong, line):
    result = route("-", "--expect", wrong, input=CASES[case][0])
    assert result.stderr == line + "\n"
    assert result.exit_code == 1


def test_expect_ignores_order_and_spaces(tmp_path):
    cfg = tmp_path / "relay.yaml"
    cfg.write_text(TO_LOG + """\
  - {name: ops-chat, urls: ["console://"]}
routes:
  - {name: cancelled, match: {event: delivery.cancelled}, receivers: [ops-chat], continue: true}
  - {name: all, match: {event: "delivery.*"}, receivers: [log]}
""")
    body = event("delivery.cancelled")
    for expect in ("ops-chat,log", "log, ops-chat"):
        result = route("-", "--expect", expect, input=body, config=str(cfg))
        assert result.stdout.splitlines()[3:6] == [
            "  MATCH  cancelled (continue) -> ops-chat", "  MATCH  all -> log", ""]
        assert "receivers: ops-chat, log" in result.stdout.splitlines()
        assert result.exit_code == 0, result.stderr


def test_an_empty_body_says_the_title_goes_out_in_its_place(tmp_path):
    # The relay sends the title as the body (notify.py); the dry run showed an empty body.
    cfg = tmp_path / "relay.yaml"
    cfg.write_text(TO_LOG + """\
routes:
  - {match: {event: delivery.cancelled}, receivers: [log], title: "T {{ delivery_id }}",
     body: "{{ note }}"}
""")
    result = route("-", input=event("delivery.cancelled"), config=str(cfg))
    lines = result.stdout.splitlines()
    at = lines.index("    body (0/32768 chars):")
    assert lines[at + 1] == \
        "      (empty: the title goes out as the body; Apprise refuses an empty one)"
    assert result.exit_code == 0, result.stderr


def test_reads_event_from_a_file(tmp_path):
    path = tmp_path / "event.json"
    path.write_text(CASES["delivered"][0])
    result = route(str(path), "--expect", "log")
    assert result.stdout.splitlines() == CASES["delivered"][1]
    assert result.exit_code == 0


@pytest.mark.parametrize("body, line", [
    ('{"event": ', "error: <stdin>: Invalid JSON: Expecting value: line 1 column 11 (char 10)"),
    ("[1, 2]", "error: <stdin>: Invalid request data: Body must be a JSON object"),
    ('{"event": "delivery.created", "timestamp": "2024-09-14T14:30:00Z"}',
     "error: <stdin>: Invalid request data: Missing delivery_id"),
])
def test_bad_event_is_one_line_and_exit_1(body, line):
    result = route("-", input=body)
    assert result.stdout == ""
    assert result.stderr == line + "\n"
    assert result.exit_code == 1


def test_missing_event_file_is_one_line_and_exit_1(tmp_path):
    result = route(str(tmp_path / "nope.json"))
    assert result.stderr == f"error: {tmp_path / 'nope.json'}: cannot read: No such file or" \
                            " directory\n"
    assert result.exit_code == 1


def test_secret_urls_are_redacted_and_cut_text_is_flagged(tmp_path):
    sid, token = "AC" + "a" * 32, "SECRET" + "b" * 26
    cfg = tmp_path / "relay.yaml"
    cfg.write_text(f"""\
server:
  tokens: ["t0ken"]
receivers:
  - name: sms
    urls: ["twilio://{sid}:{token}@+15550001111/+15550002222"]
routes:
  - name: everything
    match: {{event: "delivery.*"}}
    receivers: [sms]
    body: "{{{{ note }}}}"
""")
    result = route("-", input=event("delivery.created", note="x" * 500), config=str(cfg))
    assert token not in result.stdout and sid not in result.stdout
    assert "  sms[0] twilio://***  route=everything  type=info  format=text" in result.stdout
    assert re.search(r"^    body \((\d+)/\1 chars, cut to fit\):$", result.stdout, re.M)
    assert result.stdout.rstrip().endswith("x…")


FAILING_TEMPLATES = {
    "a field missing": ('title: "{{ delivery_id }} weighs {{ weight / 1000 }} kg"',
                        {"weight": 2500}, "    title (20/250 chars): D-1001 weighs 2.5 kg",
                        "'weight' is undefined",
                        "    title (23/250 chars): Delivery D-1001 created"),
    "nothing rendered": ('title: "{{ note }}"\n    body: "{{ remark }}"', {"note": "fragile"},
                         "    title (7/250 chars): fragile",
                         "the title and the body both rendered empty",
                         "    title (23/250 chars): Delivery D-1001 created"),
}


@pytest.mark.parametrize("name", FAILING_TEMPLATES)
def test_a_template_that_fails_on_the_event_says_so_in_the_report(tmp_path, name):
    """What the relay would do (the built-in template) and why, where the operator reads:
    the notification itself, not only a log line. An event the template renders is shown
    as rendered."""
    template, fields, rendered_title, why, shown = FAILING_TEMPLATES[name]
    cfg = tmp_path / "relay.yaml"
    cfg.write_text(f"""\
server:
  tokens: ["t0ken"]
receivers: [{{name: log, urls: ["console://"]}}]
routes:
  - name: parcels
    match: {{event: "delivery.*"}}
    receivers: [log]
    {template}
""")
    rendered = route("-", input=event("delivery.created", **fields), config=str(cfg))
    assert "TEMPLATE FAILED" not in rendered.stdout
    assert rendered_title in rendered.stdout.splitlines()
    failing = route("-", input=event("delivery.created"), config=str(cfg))
    assert failing.exit_code == 0
    lines = failing.stdout.splitlines()
    failed = lines.index("  log[0] console://***  route=parcels  type=info  format=text") + 1
    assert lines[failed] == (f"    TEMPLATE FAILED ({why}): the built-in template is used"
                             " instead; fix the template of route parcels")
    assert lines[failed + 1] == shown


def test_broken_config_prints_its_issues_instead_of_a_report(tmp_path):
    result = route("-", input=event("delivery.created"),
                   config=str(ROOT / "tests/data/undefined_receiver.yaml"))
    assert result.stderr.splitlines() == [
        f"{ROOT / 'tests/data/undefined_receiver.yaml'}:10: routes[0].receivers[1]:"
        ' undefined receiver "pager"']
    assert result.exit_code == 1


def _event_of(size: int) -> str:
    """A valid event of exactly `size` bytes (its `note` pads it)."""
    head = {"event": "delivery.created", "delivery_id": "D-1", "timestamp": "2024-09-14T14:30:00Z"}
    return json.dumps({**head, "note": "x" * (size - len(json.dumps({**head, "note": ""})))})


def test_an_event_larger_than_the_webhook_takes_is_one_line_and_exit_1(tmp_path):
    # The relay answers such a body 413 without reading it; the dry run read any file whole,
    # so `route … /dev/zero` (or a log file named by mistake) never ended.
    limit = 65536  # server.max_body_bytes of the example config
    path = tmp_path / "big.json"
    path.write_text(_event_of(limit + 1))
    for source, name in [(str(path), str(path)), ("-", "<stdin>"), ("/dev/zero", "/dev/zero")]:
        result = route(source, input=path.read_text() if source == "-" else None)
        assert result.stderr == f"error: {name}: more than server.max_body_bytes ({limit} bytes):" \
                                " the relay would refuse this event with 413\n", source
        assert (result.stdout, result.exit_code) == ("", 1)
    path.write_text(_event_of(limit))  # what the webhook still takes, the dry run takes too
    result = route(str(path))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("event: delivery.created  delivery_id: D-1\n")
