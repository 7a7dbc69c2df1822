"""Templates an operator gets wrong in size: they never hang `check` or a render, nor eat memory.

Jinja2's sandbox stops attribute escapes but bounds neither output nor work:
each case here ran for seconds to minutes (or until memory ran out) before.
"""

from __future__ import annotations

import time

import pytest

from relay.config import loads
from relay.events import Event
from relay.runtime import build_runtime
from relay.templating import MAX_OUTPUT
from tests.conftest import at_most

CONFIG = """
server: {tokens: [t]}
receivers:
  - name: log
    urls: ["console://"]
routes:
  - name: r
    receivers: [log]
    title: "t {{ delivery_id }}"
    body: "BODY"
"""
EVENT = Event("delivery.updated", "D-1", "2024-09-14T14:30:00Z", "in_transit",
              {"event": "delivery.updated", "delivery_id": "D-1", "status": "in_transit",
               "timestamp": "2024-09-14T14:30:00Z"})
BUILT_IN_BODY = "Status: In transit\nTime: 2024-09-14 14:30 UTC\nEvent: delivery.updated"


def body_of(template: str) -> str:
    """The body the planner renders for EVENT with `template` as the route's body.

    Timed, not only guarded: a render that overruns falls back to the built-in
    template, which would hide the overrun (the alarm is an exception like any)."""
    started = time.monotonic()
    with at_most(30):
        runtime = build_runtime(loads(CONFIG.replace('"BODY"', repr(template)), "c.yaml", {}))
        (notification,) = runtime.planner.plan(EVENT, now=1_726_324_200.0).notifications
    assert time.monotonic() - started < 2, "compiling or rendering ran long"
    return notification.message.body


def test_a_loop_printing_without_end_stops_at_the_output_limit():
    body = body_of("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}"
                   "{% endfor %}")
    assert body == "x" * MAX_OUTPUT  # what it printed, cut; no 10**10 characters built first


@pytest.mark.parametrize("expression", [
    "'ab' * 100000000",  # folded into the compiled template: check itself took seconds
    "100000000 * 'ab'",
    "[1, 2] * 100000000",
    "10 ** 3000000",     # three million digits: a second of CPU at compile time
])
def test_an_expression_too_big_to_print_falls_back_to_the_built_in_template(expression):
    assert body_of("{{ " + expression + " }}") == BUILT_IN_BODY


def test_lorem_ipsum_is_not_offered():
    assert body_of("{{ lipsum(1000000) }}") == BUILT_IN_BODY  # 75 s and 450 MB before


def test_small_products_and_powers_still_work():
    assert body_of("{{ '-' * 3 }}{{ 2 ** 10 }}{{ 3 * 4 }}{{ [0] * 2 }}{{ 1.5 * 2 }}") == \
        "---102412[0, 0]3.0"


def test_loops_that_print_nothing_stop_at_the_turn_limit():
    """`{% for %}` turns are bounded as output is: this ran 10**10 empty turns, for hours,
    holding the event loop (the alarm of `body_of` would stop it, too late)."""
    assert body_of("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
                   "{% endfor %}done") == BUILT_IN_BODY


def test_loops_within_the_limit_keep_every_feature():
    assert body_of("{% for i in range(9) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
                   "ok") == "ok"  # 900,009 turns
    assert body_of("{% for a, b in [(1, 2), (3, 4), (5, 6)] if a > 1 %}{{ a }}{{ b }}"
                   "{{ loop.index }}/{{ loop.length }}{{ loop.last }} {% else %}none"
                   "{% endfor %}|{% for x in [] %}{% else %}none{% endfor %}") == \
        "341/2False 562/2True |none"
