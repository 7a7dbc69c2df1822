"""Property: no payload value can make rendering lose a notification. Whatever the fields
hold (any JSON, control characters, markup, mentions, huge or odd numbers, values of the
wrong type for a filter), every receiver URL of a matching route gets a notification with
something to say, cut to its channel's limit, through the operator's template or the built-in one —
and the built-in template itself never fails. The real planner from a real config."""

from __future__ import annotations

from typing import Any

import jinja2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.config import loads
from relay.events import Event
from relay.runtime import build_runtime
from relay.templating import compile_pair

CONFIG = """
server: {tokens: [t]}
receivers:
  - name: chats
    urls: ["slack://T0001/B0002/XXXXXXXX/#ops", "discord://1234/abcd", "console://",
           "mailto://127.0.0.1:8025?from=a@example.com&to=b@example.com",
           "matrix://user:pw@localhost/#room", "json://127.0.0.1:9/"]
  - name: html
    urls: ["mailto://127.0.0.1:8025?from=a@example.com&to=c@example.com",
           "matrix://user:pw@localhost/#other", "slack://T0001/B0002/YYYYYYYY/#web"]
templates:
  fancy:
    title: "{{ delivery_id }}: {{ status | human_status }} {{ customer.name | upper }}"
    body: |
      {{ timestamp | localtime('Europe/Berlin', '%d.%m. %H:%M') }} {{ eta | localtime }}
      {% for item in items %}- {{ item.sku }} x{{ item.qty * 2 }}
      {% endfor %}{{ note | truncate(20) }} {{ (count or 0) + 1 }}
    format: markdown
routes:
  - name: fancy
    match: {event: delivery.updated}
    receivers: [chats]
    template: fancy
    continue: true
  - name: html
    match: {event: delivery.updated}
    receivers: [html]
    title: "{{ delivery_id }}"
    body: "<b>{{ status }}</b> {{ payload }}"
    format: html
default_receiver: chats
"""
PLANNER = build_runtime(loads(CONFIG, "fuzz.yaml", {})).planner
URLS = 6

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=300),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=5),
    max_leaves=20)
PIECES = [*'@<>!#*_[]()`~|\\"\'{}%\n\r\t\x00\x1b\u200b\u202e', "@everyone", "<!channel>",
          "@room", "{{ 7*7 }}", "{% raw %}", "[x](http://evil.example)", "<img src=x>", "9" * 50]
hostile_text = st.lists(st.sampled_from(PIECES) | st.text(max_size=5), max_size=12).map("".join)
fields = st.fixed_dictionaries({}, optional={
    "status": json_values | hostile_text, "customer": json_values, "eta": json_values,
    "items": json_values, "note": json_values | hostile_text, "count": json_values})


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(kind=st.sampled_from(["delivery.updated", "delivery.created", "delivery.cancelled",
                             "delivery.teleported"]),
       delivery=hostile_text.filter(bool), stamp=hostile_text | st.just("2024-09-14T14:30:00Z"),
       extra=fields)
def test_no_payload_value_loses_a_notification(kind: str, delivery: str, stamp: str,
                                               extra: dict[str, Any]) -> None:
    payload = {"event": kind, "delivery_id": delivery, "timestamp": stamp, **extra}
    status = extra.get("status")
    event = Event(kind, delivery, stamp, status if isinstance(status, str) else None, payload)
    plan = PLANNER.plan(event, now=1_726_324_200.0)
    # updated: both routes (continue), 6 + 3 URLs; created/cancelled: the default receiver.
    expected = {"delivery.updated": URLS + 3, "delivery.teleported": 0}.get(kind, URLS)
    assert len(plan.notifications) == expected
    for n in plan.notifications:
        assert (n.message.title + n.message.body).strip(), n  # something to send, whatever the values
        channel = PLANNER.channels[n.receiver][n.url_index]
        assert not channel.body_max or len(n.message.body) <= channel.body_max
        assert not channel.title_max or len(n.message.title) <= channel.title_max


def test_a_template_text_is_compiled_once_and_a_broken_one_fails_every_time():
    first = compile_pair("{{ delivery_id }}", "now {{ payload.eta }}", None, "text")
    again = compile_pair("{{ delivery_id }}", "now {{ payload.eta }}", "info", "markdown")
    assert again.title is first.title and again.body is first.body  # a reload reuses them
    assert (again.type, again.format, again.fields) == ("info", "markdown",
                                                        {"delivery_id", "eta"})
    assert compile_pair("{{ status }}", "", None, "text").title is not first.title
    for _ in range(2):  # a failure is not kept as if it were a template
        with pytest.raises(jinja2.TemplateSyntaxError):
            compile_pair("{{ delivery_id", "", None, "text")
