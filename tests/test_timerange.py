"""The dashboard's time range: presets and custom from–to, the URL round
trip, the chart bucket and the one display format."""

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachemon import timerange
from cachemon.clock import DAY, HOUR, MINUTE, Window
from cachemon.errors import InputError
from cachemon.timerange import TimeRange

NOW = datetime(2026, 12, 1, 14, 15, 42, tzinfo=UTC)
minutes = st.integers(min_value=0, max_value=60 * 24 * 300)


def test_a_preset_ends_at_now_floored_to_the_minute():
    w = TimeRange.of("6h").window(NOW)
    assert w == Window(
        datetime(2026, 12, 1, 8, 15, tzinfo=UTC), datetime(2026, 12, 1, 14, 15, tzinfo=UTC)
    )
    assert [TimeRange.of(p).window(NOW).length for p in timerange.PRESETS] == [
        15 * MINUTE,
        HOUR,
        6 * HOUR,
        DAY,
        7 * DAY,
        30 * DAY,
    ]


def test_a_custom_range_never_reaches_past_now():
    tr = TimeRange.between(NOW - HOUR, NOW + DAY)
    assert tr.window(NOW).end == datetime(2026, 12, 1, 14, 15, tzinfo=UTC)
    with pytest.raises(InputError, match="in the future"):
        TimeRange.between(NOW + HOUR, NOW + 2 * HOUR).window(NOW)


@given(minutes, st.integers(min_value=1, max_value=60 * 24 * 60))
def test_the_url_round_trip_keeps_a_custom_range(start, length):
    lo = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=start)
    tr = TimeRange.between(lo, lo + timedelta(minutes=length))
    assert timerange.parse_query(tr.query()) == tr


@pytest.mark.parametrize("preset", list(timerange.PRESETS))
def test_the_url_round_trip_keeps_a_preset(preset):
    assert timerange.parse_query(TimeRange.of(preset).query()) == TimeRange.of(preset)


def test_no_parameter_is_the_default_and_a_repeated_one_takes_the_last():
    assert timerange.parse_query({}) == TimeRange.of(timerange.DEFAULT_PRESET)
    assert timerange.parse_query({"range": ["1h", "7d"]}) == TimeRange.of("7d")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"range": "2w"}, "unknown range '2w'"),
        ({"from": "2026-12-01T10:00Z"}, "from without the other"),
        ({"to": "2026-12-01T10:00Z"}, "to without the other"),
        ({"from": "yesterday", "to": "2026-12-01T10:00Z"}, "from: 'yesterday' is not an ISO 8601"),
        ({"from": "2026-12-01T10:00Z", "to": "2026-12-01T09:00Z"}, "must be after from"),
        ({"from": "2020-01-01T00:00Z", "to": "2026-12-01T09:00Z"}, "longer than 400 days"),
        ({"from": "2026-12-01T10:00Z", "to": "9999-12-01T09:00Z"}, "outside the supported years"),
    ],
)
def test_a_bad_link_is_refused_naming_the_parameter(params, message):
    with pytest.raises(InputError, match=message):
        timerange.parse_query(params)


@given(st.integers(min_value=1, max_value=60 * 24 * 400))
def test_the_step_gives_at_most_max_points_and_is_the_finest_that_does(length):
    w = Window(NOW - timedelta(minutes=length), NOW)
    step = timerange.step_for(w)
    assert w.length / step <= timerange.MAX_POINTS or step == timerange.STEPS[-1]
    finer = [s for s in timerange.STEPS if s < step]
    assert all(w.length / s > timerange.MAX_POINTS for s in finer)


def test_the_presets_get_the_documented_steps():
    steps = {p: timerange.step_for(TimeRange.of(p).window(NOW)) for p in timerange.PRESETS}
    assert steps == {
        "15m": MINUTE,
        "1h": MINUTE,
        "6h": MINUTE,
        "24h": 5 * MINUTE,
        "7d": HOUR,
        "30d": 6 * HOUR,
    }


def test_one_display_format_and_labels():
    assert timerange.stamp(NOW) == "2026-12-01 14:15Z"
    assert timerange.stamp(None) == "—"
    assert TimeRange.between(NOW - HOUR, NOW).label == "2026-12-01 13:15Z – 14:15Z"
    assert TimeRange.between(NOW - DAY, NOW).label == "2026-11-30 14:15Z – 2026-12-01 14:15Z"


def test_links_carry_range_and_endpoint():
    assert (
        timerange.link("trends", TimeRange.of("6h"), "title") == "/trends?range=6h&endpoint=title"
    )
    link = timerange.link("", timerange.around(NOW))
    assert link == "/?from=2026-12-01T13:15Z&to=2026-12-01T15:15Z"
    assert timerange.link("", TimeRange.of("1h"), "a&b=c") == "/?range=1h&endpoint=a%26b%3Dc"
