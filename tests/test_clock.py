from datetime import UTC, datetime, timedelta

import pytest

from cachemon.clock import (
    HOUR,
    Period,
    Window,
    days_span,
    format_duration,
    parse_duration,
    parse_instant,
)
from cachemon.errors import InputError

UTC = UTC


def test_durations_round_trip():
    for text, secs in [("90s", 90), ("15m", 900), ("6h", 21600), ("7d", 604800), ("2w", 1209600)]:
        assert parse_duration(text) == timedelta(seconds=secs)
        assert parse_duration(format_duration(timedelta(seconds=secs))) == timedelta(seconds=secs)


@pytest.mark.parametrize("bad", ["", "15", "m15", "1y", "-1h", "1 hour"])
def test_bad_duration_names_the_value(bad):
    with pytest.raises(InputError, match="not a duration"):
        parse_duration(bad)


def test_instants_are_utc():
    assert parse_instant("2026-11-28T10:00:00Z") == datetime(2026, 11, 28, 10, tzinfo=UTC)
    assert parse_instant("2026-11-28T12:00:00+02:00") == datetime(2026, 11, 28, 10, tzinfo=UTC)
    assert parse_instant("2026-11-28 10:00") == datetime(2026, 11, 28, 10, tzinfo=UTC)
    with pytest.raises(InputError, match="ISO 8601"):
        parse_instant("yesterday")


def test_period_is_an_enum():
    assert Period.parse("7d").length == timedelta(days=7)
    with pytest.raises(InputError, match="unknown period '2h'"):
        Period.parse("2h")
    with pytest.raises(InputError):
        Period.parse("1h; DROP TABLE rollup_minute")


def test_window_split_and_ending():
    w = Window(datetime(2026, 1, 1, 0, 30, tzinfo=UTC), datetime(2026, 1, 1, 3, 15, tzinfo=UTC))
    parts = w.split(HOUR)
    assert [p.start.minute for p in parts] == [30, 0, 0, 0]
    assert parts[0].end == datetime(2026, 1, 1, 1, tzinfo=UTC) and parts[-1].end == w.end
    e = Window.ending(datetime(2026, 1, 1, 3, 15, 42, tzinfo=UTC), HOUR)
    assert e == Window(
        datetime(2026, 1, 1, 2, 15, tzinfo=UTC), datetime(2026, 1, 1, 3, 15, tzinfo=UTC)
    )
    assert e.previous().end == e.start


@pytest.mark.parametrize("days", [1e-49, 1e-12, 5e-324])
def test_a_positive_days_that_rounds_to_no_time_is_refused(days):
    with pytest.raises(InputError, match="--days .* shorter than a microsecond"):
        days_span(days)
    assert days_span(1e-10) == timedelta(microseconds=9)  # rounds to some time: kept
