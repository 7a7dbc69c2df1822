"""The shadowed-route warning finds, through its index, exactly what asking every earlier
route would: `lint._Earlier` only narrows which routes `swallows` is asked about."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay import config as config_mod
from relay.lint import shadowed, swallows
from relay.routing import Router

PATHS = ["event", "status", "customer.tier"]
VALUES = ["delivery.updated", "delivery.created", "a", "b", "a*", 1, "1", True, None,
          ["a", "b"], ["a"], {"not": "a"}, {"regex": "a|b"}, {"exists": True}]
ROUTE = st.fixed_dictionaries({
    "match": st.dictionaries(st.sampled_from(PATHS), st.sampled_from(VALUES), max_size=3),
    "continue": st.booleans()})

HEAD = ("server: {tokens: [abcdefghijklmnop]}\nreceivers:\n  - name: hook\n    urls: ['json://127.0.0.1:9/x']\nroutes:\n")


def config_of(routes: list[dict]) -> config_mod.Config:
    text = HEAD + "".join(
        f"  - name: r{i}\n    match: {json.dumps(r['match'])}\n"
        f"    continue: {json.dumps(r['continue'])}\n    receivers: [hook]\n"
        for i, r in enumerate(routes))
    return config_mod.loads(text, "config.yaml", env={})


def every_earlier_route(config: config_mod.Config) -> list[tuple[str, str]]:
    routes = Router.from_config(config).routes
    found = []
    for j, later in enumerate(routes):
        earlier = next((e for e in routes[:j] if not e.config.continue_ and swallows(e, later)),
                       None)
        if earlier:
            found.append((later.name, earlier.name))
    return found


@settings(max_examples=120, deadline=None)
@given(st.lists(ROUTE, min_size=1, max_size=8))
def test_the_index_finds_the_same_shadowing_route_as_asking_every_earlier_route(routes):
    config = config_of(routes)
    warned = [(i.path, i.message.split('"')[3]) for i in shadowed(config)]
    names = {f"routes[{n}]": f"r{n}" for n in range(len(routes))}
    assert [(names[path], earlier) for path, earlier in warned] == every_earlier_route(config)


SHADOWED = {
    # r0 is filed under status=a (event is shared by all): r2 must still find r0, not r1
    "filed under its rarest value": [
        {"event": "delivery.updated", "status": "a"}, {"event": "delivery.updated", "status": "b"},
        {"event": "delivery.updated", "status": "a", "customer.tier": "x"}],
    # a number in the later route equals the earlier route's string ("1" == 1, as routing has it)
    "a number against its text": [{"status": "1"}, {"status": "b"}, {"status": 1}],
    "every value of a list": [{"status": "a"}, {"status": "b"}, {"status": ["a"]}],
}


@pytest.mark.parametrize("case", SHADOWED)
def test_the_earliest_route_that_matches_all_a_later_one_would_is_named(case):
    config = config_of([{"match": match, "continue": False} for match in SHADOWED[case]])
    [issue] = shadowed(config)
    assert issue.path == "routes[2]" and '"r0"' in issue.message
