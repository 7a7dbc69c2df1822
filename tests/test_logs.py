"""No log line can be forged: any text in any field gives exactly one line that reads back."""

from __future__ import annotations

import json
import logging
import operator
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.logs import FIELD_MAX, JSONFormatter, TextFormatter, parse_text_line, scrub
from tests.conftest import relay_log_lines, wait_for
from tests.test_channels import EVENT

FORGED = "x\n2024-09-14T14:30:00Z\xa0INFO\xa0\xa0\xa0relay.web\xa0accepted\xa0delivery_id=ok"
# The names r"[a-z][a-z_]{0,11}" matches, built from two plain draws: the same names as
# st.from_regex gives, at about half its cost an example.
KEYS = st.builds(operator.add, st.sampled_from(string.ascii_lowercase),
                 st.text(string.ascii_lowercase + "_", max_size=11)).filter(
    lambda k: k not in ("time", "level", "logger", "message", "exception"))
ANY_TEXT = st.text(st.characters(codec=None), max_size=40) | st.sampled_from([
    "", " ", '"', "=", "\\", "\n", "\r", "\x85", "\u2028", "\u2029", "\xa0", "\x1b[2J", "\ud800",
    "a=b c", FORGED, "mailto://u:PASSWORD@h"])


def record(message: str, values: dict[str, str], exc: bool = False) -> logging.LogRecord:
    rec = logging.LogRecord("relay.web", logging.WARNING, __file__, 1, "%s", (message,), None)
    rec.fields = values  # type: ignore[attr-defined]
    if exc:
        try:
            raise ValueError(message)
        except ValueError:
            import sys
            rec.exc_info = sys.exc_info()
    return rec


def one_line(text: str) -> str:
    # What a terminal, `tail` or a log shipper would split on.
    assert len(text.splitlines()) == 1 and "\n" not in text and "\r" not in text, repr(text)
    assert all(c.isascii() and (c.isprintable()) for c in text), repr(text)
    return text


@settings(max_examples=300, deadline=None)
@given(message=ANY_TEXT, values=st.dictionaries(KEYS, ANY_TEXT, max_size=4),
       exc=st.booleans())
def test_any_text_in_any_field_is_one_text_line_that_parses_back(message, values, exc):
    line = one_line(TextFormatter().format(record(message, values, exc)))
    _, level, logger, got_message, got = parse_text_line(line)
    assert (level, logger, got_message) == ("WARNING", "relay.web", scrub(message))
    expected = {k: scrub(v) for k, v in values.items()}
    if exc:
        assert got.pop("exception").startswith("Traceback")
    assert got == expected


@settings(max_examples=200, deadline=None)
@given(message=ANY_TEXT, values=st.dictionaries(KEYS, ANY_TEXT, max_size=4))
def test_any_text_in_any_field_is_one_json_line_that_parses_back(message, values):
    line = one_line(JSONFormatter().format(record(message, values)))
    data = json.loads(line)
    assert data["message"] == scrub(message)
    assert {k: data[k] for k in values} == {k: scrub(v) for k, v in values.items()}


def test_a_newline_and_nbsp_in_a_value_without_spaces_cannot_start_a_line():
    line = TextFormatter().format(record("accepted", {"delivery_id": FORGED}))
    assert "\n" not in line and "\xa0" not in line
    assert parse_text_line(line)[4] == {"delivery_id": FORGED}


async def test_forged_delivery_id_and_request_id_stay_on_their_own_log_line(running):
    with relay_log_lines(TextFormatter()) as out:
        r = await running("receivers: [{name: log, urls: ['console://']}]\n"
                          "default_receiver: log\n")
        rid = 'r"1=2\\ \xa0x'
        status, _, _ = await r.post({**EVENT, "delivery_id": FORGED},
                                    headers={"X-Request-Id": rid})
        assert status == 202
        await r.post(EVENT, token="wrong", headers={"X-Request-Id": rid})  # logged before auth
    lines = out.getvalue().splitlines()
    parsed = [parse_text_line(one_line(line)) for line in lines]
    accepted = [p for p in parsed if p[3] == "accepted"]
    assert [p[4]["delivery_id"] for p in accepted] == [FORGED]
    seen = {p[4].get("request_id") for p in parsed} - {None}
    assert len(seen) == 1 and "\n" not in seen.pop()
    assert any(p[3] == "rejected: bad or missing token" for p in parsed)


def test_each_record_is_stamped_with_its_own_second_in_any_order():
    formatter = TextFormatter()

    def stamp(created: float) -> str:
        record = logging.LogRecord("relay", logging.INFO, "", 0, "m", None, None)
        record.created = created
        return formatter.format(record).split(" ", 1)[0]

    t = 1_800_000_000.0  # 2027-01-15T08:00:00Z
    assert [stamp(t), stamp(t + 0.9), stamp(t + 1.2), stamp(t - 0.5), stamp(t + 61)] == [
        "2027-01-15T08:00:00Z", "2027-01-15T08:00:00Z", "2027-01-15T08:00:01Z",
        "2027-01-15T07:59:59Z", "2027-01-15T08:01:01Z"]


def test_a_huge_value_is_cut_in_both_formats_and_says_how_much_was_left_out():
    huge = "D" * 60_000
    text = parse_text_line(TextFormatter().format(record("accepted", {"delivery_id": huge})))[4]
    data = json.loads(JSONFormatter().format(record("accepted", {"delivery_id": huge})))
    cut = "D" * FIELD_MAX + f"[+{60_000 - FIELD_MAX} chars]"
    assert text["delivery_id"] == data["delivery_id"] == cut


async def test_a_64_kb_delivery_id_is_accepted_whole_and_logged_cut(running, sink):
    huge = "D" * 60_000
    with relay_log_lines(TextFormatter()) as out:
        r = await running(f"receivers: [{{name: hook, urls: ['{sink.url('hook')}']}}]\n"
                          "default_receiver: hook\n")
        status, _, _ = await r.post({**EVENT, "delivery_id": huge})
        assert status == 202
        await wait_for(lambda: sink.messages("hook"), message="the notification")
        await wait_for(lambda: "sent" in out.getvalue(), message="the send's log line")
        (stored,) = (await r.relay.store.timeline(huge)).events
    lines = out.getvalue().splitlines()
    assert stored.payload["delivery_id"] == huge
    assert lines and all(len(line) < 2 * FIELD_MAX for line in lines), max(map(len, lines))
    logged = [parse_text_line(line)[4].get("delivery_id") for line in lines]
    assert "D" * FIELD_MAX + f"[+{60_000 - FIELD_MAX} chars]" in logged

