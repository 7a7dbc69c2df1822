"""Quiet hours as pure rules: windows, midnight crossing, DST nights, merging; Hypothesis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.quiet import (
    QuietHours,
    Window,
    held,
    is_quiet,
    local_instant,
    parse_days,
    parse_time,
    quiet_until,
    summary_due,
)

BERLIN = ZoneInfo("Europe/Berlin")
WEEKNIGHTS = Window(frozenset(range(5)), 22 * 60, 7 * 60)  # mon-fri 22:00-07:00
WEEKEND = Window(frozenset({5, 6}), 0, 24 * 60)
OPS = QuietHours("Europe/Berlin", (WEEKNIGHTS, WEEKEND), frozenset({"failure"}))


def berlin(*args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=BERLIN, fold=fold)  # type: ignore[misc]


def test_a_window_crossing_midnight_holds_until_the_next_morning() -> None:
    tuesday_night = berlin(2026, 3, 10, 23, 15)
    assert quiet_until(OPS, tuesday_night) == berlin(2026, 3, 11, 7, 0)
    assert quiet_until(OPS, berlin(2026, 3, 11, 3, 0)) == berlin(2026, 3, 11, 7, 0)
    assert not is_quiet(OPS, berlin(2026, 3, 11, 7, 0))  # the end is not quiet
    assert not is_quiet(OPS, berlin(2026, 3, 11, 21, 59))


def test_friday_night_runs_into_the_weekend_and_monday_morning() -> None:
    # fri 22:00 -> sat 07:00 touches sat 00:00-24:00, sun, and sun 22:00 is not a weekday
    # window (days names the evening it starts), so the quiet time ends at mon 00:00.
    assert quiet_until(OPS, berlin(2026, 3, 13, 22, 30)) == berlin(2026, 3, 16, 0, 0)


def test_a_window_listed_for_sunday_evening_carries_on_into_monday() -> None:
    hours = QuietHours("Europe/Berlin", (Window(frozenset({6}), 22 * 60, 7 * 60), WEEKEND))
    assert quiet_until(hours, berlin(2026, 3, 14, 12, 0)) == berlin(2026, 3, 16, 7, 0)


def test_spring_forward_night_is_an_hour_shorter_and_ends_at_local_seven() -> None:
    # Europe/Berlin, 29 March 2026: 02:00 CET jumps to 03:00 CEST.
    start = berlin(2026, 3, 27, 22, 0)  # a friday: into the weekend
    hours = QuietHours("Europe/Berlin", (Window(frozenset({5}), 22 * 60, 7 * 60),))
    saturday_night = berlin(2026, 3, 28, 22, 0)
    end = quiet_until(hours, saturday_night)
    assert end == berlin(2026, 3, 29, 7, 0)
    assert end is not None and end.astimezone(BERLIN).utcoffset() == timedelta(hours=2)
    assert end - saturday_night == timedelta(hours=8)
    assert not is_quiet(hours, start)


def test_fall_back_night_is_an_hour_longer_and_ends_at_local_seven() -> None:
    # 25 October 2026: 03:00 CEST falls back to 02:00 CET.
    hours = QuietHours("Europe/Berlin", (Window(frozenset({5}), 22 * 60, 7 * 60),))
    saturday_night = berlin(2026, 10, 24, 22, 0)
    end = quiet_until(hours, saturday_night)
    assert end == berlin(2026, 10, 25, 7, 0)
    assert end is not None and end - saturday_night == timedelta(hours=10)
    # both passes of 02:30 are inside the window
    assert is_quiet(hours, berlin(2026, 10, 25, 2, 30, fold=0))
    assert is_quiet(hours, berlin(2026, 10, 25, 2, 30, fold=1))


def test_a_window_starting_in_the_spring_gap_starts_when_the_clock_jumps() -> None:
    gap = local_instant(datetime(2026, 3, 29).date(), 2 * 60 + 30, BERLIN)
    assert gap == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)  # 03:00 CEST
    hours = QuietHours("Europe/Berlin", (Window(frozenset({6}), 2 * 60 + 30, 4 * 60),))
    assert not is_quiet(hours, datetime(2026, 3, 29, 0, 59, 59, tzinfo=UTC))
    assert is_quiet(hours, datetime(2026, 3, 29, 1, 0, tzinfo=UTC))


def test_a_window_ending_in_the_fall_back_hour_ends_at_its_first_showing() -> None:
    hours = QuietHours("Europe/Berlin", (Window(frozenset({5}), 22 * 60, 2 * 60 + 30),))
    end = quiet_until(hours, berlin(2026, 10, 24, 23, 0))
    # (aware datetimes in a repeated hour never compare equal across zones: PEP 495)
    assert end is not None and end.timestamp() == berlin(2026, 10, 25, 2, 30).timestamp()
    assert end.astimezone(BERLIN).utcoffset() == timedelta(hours=2)  # still summer time


def test_urgent_types_are_never_held_and_others_wait_for_the_end() -> None:
    night = berlin(2026, 3, 10, 23, 0).timestamp()
    assert held(OPS, "failure", night) is None
    assert held(OPS, "info", night) == berlin(2026, 3, 11, 7, 0).timestamp()
    assert held(OPS, "info", berlin(2026, 3, 11, 12, 0).timestamp()) is None
    assert held(None, "info", night) is None


def test_a_week_of_quiet_still_ends_once_a_week() -> None:
    always = QuietHours("UTC", (Window(frozenset(range(7)), 0, 24 * 60),))
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert quiet_until(always, now) == now + timedelta(days=7)


def test_a_summary_found_due_in_the_next_quiet_time_waits_until_it_ends() -> None:
    lunch = QuietHours("Europe/Berlin", (Window(frozenset(range(7)), 12 * 60, 13 * 60),
                                         Window(frozenset(range(7)), 13 * 60 + 30, 18 * 60)))
    held_at = berlin(2026, 3, 10, 12, 30).timestamp()
    assert summary_due(lunch, berlin(2026, 3, 10, 13, 0).timestamp(), held_at) is None
    assert summary_due(lunch, berlin(2026, 3, 10, 13, 10).timestamp(), held_at) is None
    assert summary_due(lunch, berlin(2026, 3, 10, 13, 40).timestamp(), held_at) == \
        berlin(2026, 3, 10, 18, 0).timestamp()
    assert summary_due(None, berlin(2026, 3, 10, 13, 40).timestamp(), held_at) is None


def test_a_postponed_summary_still_holds_nothing_longer_than_a_week() -> None:
    always = QuietHours("UTC", (Window(frozenset(range(7)), 0, 24 * 60),))
    held_at = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    week = timedelta(days=7).total_seconds()
    assert summary_due(always, held_at + week, held_at) is None  # the weekly summary
    assert summary_due(always, held_at + week + 3600, held_at) is None  # found due late
    assert summary_due(always, held_at + 3600, held_at) == held_at + week
    assert summary_due(OPS, berlin(2026, 3, 17, 23, 0).timestamp(),  # a week down
                       berlin(2026, 3, 10, 23, 0).timestamp()) is None


@pytest.mark.parametrize(("value", "end", "minutes"), [
    ("07:00", False, 420), ("00:00", False, 0), ("23:59", False, 1439), ("24:00", True, 1440)])
def test_times_parse_to_minutes(value: str, end: bool, minutes: int) -> None:
    assert parse_time(value, end=end) == minutes


@pytest.mark.parametrize(("value", "message"), [
    ("24:00", '"24:00" is only allowed as the end ("to") of a window'),
    ("24:30", "expected a time from 00:00 to 23:59, got '24:30'"),
    ("7:00", 'write the hour with two digits: "07:00", got \'7:00\''),
    (1320, 'expected a time like "07:00" in quotes (unquoted, YAML reads it as a number)'),
])
def test_bad_times_are_refused_with_the_reason(value: object, message: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_time(value, end=False)
    assert str(e.value) == message


def test_days_accept_names_ranges_and_aliases() -> None:
    assert parse_days(["mon", "wed"]) == {0, 2}
    assert parse_days("mon-fri") == parse_days("weekdays") == set(range(5))
    assert parse_days(["fri-mon"]) == {4, 5, 6, 0}
    with pytest.raises(ValueError, match="unknown day 'mo'"):
        parse_days(["mo"])


# ---------------------------------------------------------------- properties

ZONES = st.sampled_from(["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "UTC",
                         "Asia/Kolkata", "America/Santiago"])
MINUTES = st.integers(0, 1439)
windows = st.builds(Window, st.frozensets(st.integers(0, 6), min_size=1), MINUTES,
                    st.integers(1, 1440)).filter(lambda w: w.start != w.end)
hours_st = st.builds(QuietHours, ZONES, st.lists(windows, min_size=1, max_size=3).map(tuple))
moments = st.datetimes(datetime(2024, 1, 1), datetime(2030, 12, 31)).map(
    lambda d: d.replace(tzinfo=UTC, second=0, microsecond=0))


def _wall_quiet(hours: QuietHours, moment: datetime) -> bool:
    """The rule on the wall clock, the way an operator reads it."""
    local = moment.astimezone(hours.zone)
    minute = local.hour * 60 + local.minute
    day, yesterday = local.weekday(), (local.weekday() - 1) % 7
    for w in hours.windows:
        if w.crosses_midnight:
            if (day in w.days and minute >= w.start) or (yesterday in w.days and minute < w.end):
                return True
        elif day in w.days and w.start <= minute < w.end:
            return True
    return False


def _steady(zone: ZoneInfo, moment: datetime) -> bool:
    """No clock change within a day of `moment` (where instants and wall times agree)."""
    offsets = {(moment + timedelta(hours=h)).astimezone(zone).utcoffset() for h in (-26, 0, 26)}
    return len(offsets) == 1


@settings(max_examples=300, deadline=None)
@given(hours_st, moments)
def test_away_from_clock_changes_quiet_is_what_the_wall_clock_says(
        hours: QuietHours, moment: datetime) -> None:
    if _steady(hours.zone, moment):
        assert is_quiet(hours, moment) == _wall_quiet(hours, moment)


@settings(max_examples=300, deadline=None)
@given(hours_st, moments)
def test_quiet_time_ends_later_at_a_moment_that_is_not_quiet(
        hours: QuietHours, moment: datetime) -> None:
    end = quiet_until(hours, moment)
    assert (end is not None) == is_quiet(hours, moment)
    if end is None:
        return
    assert moment < end <= moment + timedelta(days=7)
    if end < moment + timedelta(days=7):
        assert not is_quiet(hours, end)
    for fraction in (0.25, 0.5, 0.99):  # nothing in between lets notifications out
        assert is_quiet(hours, moment + (end - moment) * fraction)


@settings(max_examples=200, deadline=None)
@given(hours_st, moments)
def test_quiet_time_ends_on_a_window_end_on_the_local_clock(
        hours: QuietHours, moment: datetime) -> None:
    end = quiet_until(hours, moment)
    if end is None or end == moment + timedelta(days=7) or not _steady(hours.zone, end):
        return
    local = end.astimezone(hours.zone)
    assert (local.hour * 60 + local.minute) % 1440 in {w.end % 1440 for w in hours.windows}
