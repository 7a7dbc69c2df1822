"""Digest rules as pure functions: grouping, keys, early close, cutting to a channel."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.digests import CEILING, closes_at, fit, full, group_of, more_line, timer_key


def test_groups_are_the_values_of_group_by_and_missing_fields_are_empty() -> None:
    payload = {"hub": "3", "address": {"city": "Köln"}}
    assert group_of(payload, ["hub", "address.city", "driver"]).as_dict() == {
        "hub": "3", "address.city": "Köln", "driver": ""}
    assert group_of(payload, []).describe() == "(one group)"
    assert group_of({"hub": 3}, ["hub"]) == group_of({"hub": "3"}, ["hub"])


def test_one_window_per_route_group_and_receiver_url() -> None:
    hub3, hub4 = group_of({"hub": "3"}, ["hub"]), group_of({"hub": "4"}, ["hub"])
    keys = {timer_key("failures", g, r, i) for g in (hub3, hub4) for r in ("ops", "mail")
            for i in (0, 1)}
    assert len(keys) == 8
    assert timer_key("failures", hub3, "ops", 0) == timer_key("failures", hub3, "ops", 0)


def test_a_window_closes_after_its_length_or_early_when_full() -> None:
    assert closes_at(1000.0, 600.0) == 1600.0
    assert not full(4, 5) and full(5, 5)
    assert not full(CEILING - 1, None) and full(CEILING, None) and full(CEILING, 10**6)


def _lines(n: int) -> str:
    return "".join(f"- parcel-{i}: failed\n" for i in range(n))


def test_a_body_that_fits_is_left_whole() -> None:
    assert fit(_lines, 3, 2000) == (_lines(3), 3)
    assert fit(_lines, 300, 0) == (_lines(300), 300)


def test_a_long_digest_is_cut_to_the_limit_with_and_n_more() -> None:
    body, shown = fit(_lines, 300, 2000)
    assert len(body) <= 2000
    assert body.endswith("\n" + more_line(300 - shown))
    assert body.startswith(_lines(shown).rstrip())
    assert len(_lines(shown + 1).rstrip() + "\n" + more_line(299 - shown)) > 2000  # the most


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 400), st.integers(1, 5000), st.integers(1, 40))
def test_cutting_never_exceeds_the_limit_and_counts_every_event(
        total: int, limit: int, width: int) -> None:
    def render(k: int) -> str:
        return "".join(f"- {'x' * width} {i}\n" for i in range(k))

    body, shown = fit(render, total, limit)
    assert len(body) <= limit
    assert 0 <= shown <= total
    if shown < total and len(body) < limit:
        assert body.endswith(more_line(total - shown))
