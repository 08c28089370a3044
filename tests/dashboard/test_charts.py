"""The shared chart rules (pure functions of a Plotly figure): the page's
x range, alert bands with names, a now line, labelled log ticks, colours
that mean something."""

from datetime import UTC, datetime, timedelta

import plotly.graph_objects as go
import pytest

from cachemon.alerts.health import Period
from cachemon.clock import Window
from pages.shared import charts

NOW = datetime(2026, 12, 1, 14, 15, tzinfo=UTC)
WINDOW = Window(NOW - timedelta(hours=6), NOW)


def test_time_axes_fix_the_range_and_name_the_alert_bands():
    periods = [
        Period("p99_latency", "*", "p99_latency", "critical", NOW - timedelta(hours=2), None),
        Period("old", "*", "hit_rate", "warning", NOW - timedelta(days=2), NOW - timedelta(days=1)),
    ]
    fig = charts.time_axes(go.Figure(), WINDOW, NOW, "requests / min", periods)
    layout = fig.layout
    assert tuple(layout.xaxis.range) == (WINDOW.start, WINDOW.end)
    assert layout.xaxis.title.text == "time (UTC)" and layout.yaxis.title.text == "requests / min"
    rects = [s for s in layout.shapes if s.type == "rect"]
    assert len(rects) == 1  # the period outside the window is not drawn
    assert rects[0].x1 == WINDOW.end and rects[0].fillcolor == charts.shade(charts.BAD)
    texts = [a.text for a in layout.annotations]
    assert "p99_latency (critical)" in texts and "now" in texts


def test_no_now_line_on_a_past_window():
    past = Window(NOW - timedelta(days=2), NOW - timedelta(days=1))
    fig = charts.time_axes(go.Figure(), past, NOW, "x")
    assert not [s for s in fig.layout.shapes if s.type == "line"]


def test_latency_ticks_are_labelled_in_units():
    fig = charts.time_axes(go.Figure(), WINDOW, NOW, "latency ms", log_y=True, y_range=(3, 800))
    y = fig.layout.yaxis
    assert y.type == "log"
    assert list(y.ticktext) == [
        "2 ms",
        "5 ms",
        "10 ms",
        "20 ms",
        "50 ms",
        "100 ms",
        "200 ms",
        "500 ms",
        "1 s",
    ]
    assert y.title.text == "latency ms"


def test_ttl_axis_ticks_are_durations():
    fig = charts.log_duration_axis(go.Figure(), 300, 30 * 86400)
    assert list(fig.layout.xaxis.ticktext) == ["5m", "15m", "1h", "6h", "1d", "7d", "30d"]


@pytest.mark.parametrize(
    ("delta", "lower_is_better", "colour"),
    [
        (+1.0, False, charts.GOOD),
        (-1.0, False, charts.BAD),
        (-1.0, True, charts.GOOD),
        (+1.0, True, charts.BAD),
        (0.0, True, charts.NEUTRAL),
        (None, True, charts.NEUTRAL),
        (float("nan"), False, charts.NEUTRAL),
    ],
)
def test_an_improvement_is_never_red(delta, lower_is_better, colour):
    assert charts.delta_colour(delta, lower_is_better) == colour


def test_origin_misses_are_in_the_warning_colour():
    assert charts.TIER_COLOURS["api"] == charts.WARN
    assert charts.WARN not in (charts.TIER_COLOURS[t] for t in ("edge", "kv", "r2"))


def test_the_now_line_shows_within_the_minute_after_a_preset_window():
    """A preset window ends at the minute before now (the page's 30 s tick
    may be 40 s past it): the now line still shows, at the window's end."""
    fig = charts.time_axes(go.Figure(), WINDOW, NOW + timedelta(seconds=40), "x")
    (line,) = [s for s in fig.layout.shapes if s.type == "line"]
    assert line.x0 == WINDOW.end
    later = charts.time_axes(go.Figure(), WINDOW, NOW + timedelta(minutes=2), "x")
    assert not [s for s in later.layout.shapes if s.type == "line"]


@pytest.mark.parametrize(
    ("delta", "lower", "neutral", "mode"),
    [
        ("+1.20", False, False, "normal"),
        ("+1.20", True, False, "inverse"),
        ("+0.00", True, False, "off"),  # shows as zero: neither better nor worse
        ("-$0.0000", True, False, "off"),
        ("n/a", False, False, "off"),
        ("+44,464", False, True, "off"),
        (None, False, False, "off"),
    ],
)
def test_a_tile_is_coloured_only_by_a_change_it_shows(delta, lower, neutral, mode):
    from pages.shared import common

    assert common.tile_colour(delta, lower, neutral) == mode
