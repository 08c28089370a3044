"""The Overview's and the Trends page's series (#21): the trend of any
window and step, the coverage that decides whether a change is shown, the
partial day of the cost per day, and the pages that draw them, each against
truth computed from the raw events with pandas."""

from __future__ import annotations

import base64
import json
import re
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst
from streamlit.proto.Metric_pb2 import Metric
from streamlit.testing.v1 import AppTest

from cachemon import config, timerange
from cachemon import settings as cm_settings
from cachemon.clock import DAY, HOUR, MINUTE, Period, Window
from cachemon.costs import usage as costs_usage
from cachemon.histogram import ALPHA
from cachemon.metrics import trends
from cachemon.pricing import DEFAULT
from cachemon.store import db as store_db
from cachemon.store.queries import TIER_TOTALS, window_params
from cachemon.timerange import TimeRange
from cachemon.usecases import metrics_report
from tests.helpers import ROOT, T0, load, simulate, weighted_quantile
from tests.helpers.servers import chromium, streamlit_server

STEP = timedelta(minutes=5)


def _requests(df: pd.DataFrame, window: Window) -> pd.DataFrame:
    r = df[df.kind == "request"]
    return r[(r.timestamp >= window.start) & (r.timestamp < window.end)]


def _truth(df: pd.DataFrame, window: Window, step: timedelta) -> pd.DataFrame:
    """The trend of `window` from raw events: per bucket of `step` (aligned
    to the epoch), the weighted requests per tier, rates and quantiles, and
    the bucket's minutes inside the window."""
    r = _requests(df, window)
    r = r.assign(b=r.timestamp.dt.floor(pd.Timedelta(step)))
    rows = []
    for b, g in r.groupby("b"):
        w = g.sample_interval
        total = w.sum()
        lo, hi = max(b, pd.Timestamp(window.start)), min(b + step, pd.Timestamp(window.end))
        rows.append(
            {
                "time": b,
                "minutes": (hi - lo) / pd.Timedelta(MINUTE),
                "requests": total,
                **{f"{t}_hit_rate": 100 * w[g.tier == t].sum() / total for t in ("edge", "kv")},
                "r2_hit_rate": 100 * w[g.tier == "r2"].sum() / total,
                "combined_hit_rate": 100 * w[g.tier != "api"].sum() / total,
                "error_rate": 100 * w[g.status == "error"].sum() / total,
                **{
                    name: weighted_quantile(g.latency_ms, w, q)
                    for q, name in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99"))
                },
            }
        )
    return pd.DataFrame(rows).set_index("time")


def _assert_series(got: pd.DataFrame, truth: pd.DataFrame) -> None:
    assert list(got.index) == list(truth.index)
    for col in truth.columns:
        rel = ALPHA + 1e-9 if col in ("p50", "p95", "p99") else 1e-9
        np.testing.assert_allclose(got[col], truth[col], rtol=rel, atol=1e-9, err_msg=col)


@pytest.fixture(scope="module")
def week_store(tmp_path_factory):
    """Five hours of traffic from T0, and two hours the week before (the
    comparison overlay), in one store."""
    path = tmp_path_factory.mktemp("trend") / "cachemon.duckdb"
    before, early = simulate(2, start=T0 - 7 * DAY + HOUR)
    parts, df = simulate(5, start=T0)
    load(path, before + parts, now=T0 + 6 * HOUR)
    return path, pd.concat([early, df], ignore_index=True)


# A window that no step divides: its first and last buckets are cut.
RAGGED = Window(T0 + timedelta(minutes=13), T0 + timedelta(hours=4, minutes=2))


@pytest.mark.parametrize("step", [STEP, HOUR], ids=str)
def test_a_ragged_window_has_cut_first_and_last_buckets(week_store, step):
    path, df = week_store
    with store_db.reader(path) as con:
        got = trends.trend(con, RAGGED, step).set_index("time")
    truth = _truth(df, RAGGED, step)
    _assert_series(got, truth)
    # The window starts 13 minutes past the hour and ends 2 past: cut buckets.
    assert got["minutes"].iloc[0] == (step - 13 * MINUTE % step) / MINUTE
    assert got["minutes"].iloc[-1] == 2


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    start=hst.integers(min_value=-90, max_value=5 * 60),
    length=hst.integers(min_value=1, max_value=7 * 60),
    step=hst.sampled_from([MINUTE, STEP, 15 * MINUTE, HOUR, 6 * HOUR, 7 * MINUTE]),
)
def test_buckets_add_up_to_the_window(week_store, start, length, step):
    """Whatever the window and step: the buckets' requests add up to the
    window's (the metrics of the same window), and with gaps their minutes
    to the part of it the store's data spans."""
    path, _ = week_store
    window = Window(T0 + start * MINUTE, T0 + (start + length) * MINUTE)
    with store_db.reader(path) as con:
        got = trends.trend(con, window, step, gaps=True)
        total = con.execute(TIER_TOTALS, window_params(window) | {"endpoint": None}).fetchall()
    # The data runs from T0 - 7d + 1h to T0 + 5h: minutes past its end are not measured.
    assert got["minutes"].sum() == pytest.approx(max(0, min(length, 5 * 60 - start)))
    assert got["requests"].sum() == pytest.approx(sum(float(r[1]) for r in total), rel=1e-12)
    assert got["time"].is_monotonic_increasing and got["time"].is_unique


def test_a_bucket_the_data_ends_in_counts_its_minutes_with_data(week_store):
    """The data ends at T0+5h (13:00), 15 minutes into the 45-minute bucket
    from 12:45: that bucket counts 15 minutes, so its rate per minute is its
    requests over those 15, not over 45 (a slump that is only the data's end)."""
    path, df = week_store
    window = Window(T0 + 4 * HOUR, T0 + timedelta(hours=5, minutes=30))
    step = 45 * MINUTE
    with store_db.reader(path) as con:
        got = trends.trend(con, window, step, gaps=True).set_index("time")
    assert list(got["minutes"]) == [45, 15]
    _assert_series(got, _truth(df, Window(window.start, T0 + 5 * HOUR), step))


def test_gaps_are_rows_without_figures(week_store):
    """A window reaching past the data has a row per bucket; the ones
    without data have no figures (a chart's gap), never zeros."""
    path, df = week_store
    window = Window(T0 - HOUR, T0 + 2 * HOUR)
    with store_db.reader(path) as con:
        got = trends.trend(con, window, STEP, gaps=True).set_index("time")
    assert list(got.index) == list(pd.date_range(window.start, window.end, freq=STEP)[:-1])
    empty = got.index < pd.Timestamp(T0)
    assert got.loc[empty, ["requests", "combined_hit_rate", "p95"]].isna().all().all()
    assert (got.loc[empty, "minutes"] == 5).all()
    _assert_series(got[~empty], _truth(df, window, STEP))


def test_last_week_overlay_is_the_series_a_week_earlier_moved_onto_this_week(week_store):
    path, df = week_store
    window = Window(T0, T0 + 4 * HOUR)
    with store_db.reader(path) as con:
        got = trends.shifted(con, window, STEP).set_index("time")
    earlier = _truth(df, Window(window.start - 7 * DAY, window.end - 7 * DAY), STEP)
    earlier.index = earlier.index + pd.Timedelta(7 * DAY)
    assert got.index.min() == pd.Timestamp(window.start)  # every bucket, gaps included
    _assert_series(got.dropna(subset=["requests"]), earlier)


def test_coverage_is_the_share_of_the_window_with_data(week_store):
    path, df = week_store
    r = df[df.kind == "request"]
    minutes = set(r.timestamp.dt.floor("min"))
    with store_db.reader(path) as con:
        for window in (
            Window(T0 - 3 * HOUR, T0 + 3 * HOUR),  # half before the data
            Window(T0 + timedelta(minutes=30), T0 + timedelta(hours=2, minutes=10)),
            Window(T0 - 2 * DAY, T0 - DAY),  # the empty days between the two stretches
        ):
            inside = [m for m in minutes if window.start <= m < window.end]
            want = len(inside) / (window.length / MINUTE)
            assert trends.coverage(con, window) == pytest.approx(want, abs=1e-12), window


def test_a_change_needs_a_previous_period_with_data_for_most_of_it(week_store):
    """The hour before T0+4h is covered: changes shown. The hour before
    T0+1h40m holds 40 minutes of data: no change shown, though that hour
    has data (today's "+20,952,399 requests" against a near-empty week)."""
    path, df = week_store
    cfg = config.with_db(cm_settings.Config(), str(path))
    r = df[df.kind == "request"]
    with store_db.reader(path) as con:
        for end, coverage in ((T0 + 5 * HOUR, 1.0), (T0 + timedelta(hours=1, minutes=40), 2 / 3)):
            report = metrics_report.build(con, cfg, Period.H1, end, compare=True)
            now, prev = report.metrics.window, report.metrics.window.previous()
            before = r[(r.timestamp >= prev.start) & (r.timestamp < prev.end)].sample_interval
            assert report.previous.metrics is not None and len(before)
            assert report.previous.coverage == pytest.approx(coverage, abs=1e-12)
            deltas = report.kpi_deltas()
            if coverage == 1.0:
                total = _requests(df, now).sample_interval.sum()
                assert deltas["requests"] == pytest.approx(total - before.sum(), rel=1e-12)
                assert None not in deltas.values()
            else:
                assert set(deltas.values()) == {None}


def test_a_partial_day_is_flagged_and_costs_its_hours_only(tmp_path):
    """A day and six hours of data: the second day is partial, marked so,
    and costs its six hours' requests, not four times them."""
    parts, df = simulate(30, start=T0 - timedelta(hours=8), step=timedelta(hours=6))
    path = tmp_path / "c.duckdb"
    load(path, parts, now=T0 + DAY)
    cfg = config.with_db(cm_settings.Config(), str(path))
    with store_db.reader(path) as con:
        got = costs_usage.daily_costs(con, Window(T0 - 3 * DAY, T0 + 2 * DAY), cfg)
    r = df[df.kind == "request"]
    per_day = r.groupby(r.timestamp.dt.floor("D")).sample_interval.sum()
    price = DEFAULT["workers_requests"]
    assert list(got["day"]) == list(per_day.index)
    assert list(got["partial"]) == [False, True]
    assert got["end"].iloc[1] == r.timestamp.max().floor("min") + pd.Timedelta(MINUTE)
    assert list(got["workers_requests"]) == pytest.approx(
        list(per_day * price.price / price.per), rel=1e-9
    )


# -- the pages ------------------------------------------------------------------


@pytest.fixture(scope="module")
def page_store(tmp_path_factory):
    """Four hours of traffic from T0 (in the past: the range is fixed) and
    the day before, empty: the Overview's previous period has no data."""
    path = tmp_path_factory.mktemp("pages") / "cachemon.duckdb"
    parts, df = simulate(4, start=T0)
    load(path, parts, now=T0 + 5 * HOUR)
    return path, df


# Longer than 400 minutes: 5-minute buckets, the first cut (it starts at :57).
PAGE_RANGE = (T0 - timedelta(hours=2, minutes=3), T0 + 5 * HOUR)


def _page(monkeypatch, db, page: str, span=PAGE_RANGE, **state) -> AppTest:
    monkeypatch.setenv("CACHEMON_DB", str(db))
    monkeypatch.delenv("CACHEMON_CONFIG", raising=False)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.session_state["time_range"] = TimeRange.between(*span)
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    if page != "overview":
        at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _figures(at) -> dict[str, dict]:
    """Each Plotly chart's figure (data and layout) by its title."""
    out = {}
    for el in at.get("plotly_chart"):
        fig = json.loads(el.proto.spec)
        out[fig["layout"].get("title", {}).get("text", "")] = fig
    return out


def _values(v) -> np.ndarray:
    """A trace's x or y as numbers or instants (Plotly may send typed arrays)."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
    arr = np.array([np.nan if x is None else x for x in v], dtype=object)
    return arr


def _trace(fig: dict, name: str) -> pd.Series:
    (t,) = [t for t in fig["data"] if t.get("name") == name]
    x = pd.to_datetime(pd.Series(_values(t["x"])), utc=True)
    return pd.Series(_values(t["y"]).astype(float), index=x)


def _by_title(figs: dict, start: str) -> dict:
    (fig,) = [f for title, f in figs.items() if title.startswith(start)]
    return fig


def test_overview_charts_the_trend_of_the_range(page_store, monkeypatch):
    """The Overview's time series are the trend of the selected range: per
    5-minute bucket, each tier's hit rate, p50/p95/p99, requests per minute
    and the error rate of the raw events (pandas), with gaps where the store
    has no data."""
    db, df = page_store
    at = _page(monkeypatch, db, "overview")
    window = Window(*PAGE_RANGE)
    truth = _truth(df, window, STEP)
    figs = _figures(at)
    hit = _by_title(figs, "Hit rate by tier")
    for name, col in (
        ("combined", "combined_hit_rate"),
        ("edge", "edge_hit_rate"),
        ("KV", "kv_hit_rate"),
        ("R2", "r2_hit_rate"),
    ):
        got = _trace(hit, name)
        assert got.index[0] == pd.Timestamp(window.start).floor("5min")
        assert got[: pd.Timestamp(T0) - pd.Timedelta(MINUTE)].isna().all()  # no data yet: a gap
        _assert_series(got.dropna().to_frame(col), truth[[col]])
    latency = _by_title(figs, "Latency percentiles")
    for q in ("p50", "p95", "p99"):
        _assert_series(_trace(latency, q).dropna().to_frame(q), truth[[q]])
    volume = _trace(_by_title(figs, "Requests per minute"), "requests").dropna()
    _assert_series(volume.to_frame("rate"), (truth["requests"] / truth["minutes"]).to_frame("rate"))
    errors = _trace(_by_title(figs, "Error rate"), "errors").dropna()
    _assert_series(errors.to_frame("error_rate"), truth[["error_rate"]])
    # The same x-range on every time chart: the selected range.
    for title in ("Hit rate", "Latency", "Requests per minute", "Error rate"):
        xr = pd.to_datetime(_by_title(figs, title)["layout"]["xaxis"]["range"], utc=True)
        assert list(xr) == [pd.Timestamp(window.start), pd.Timestamp(window.end)], title
    # Last week's overlay with no data a week before: said, not empty dashed lines in silence.
    at.checkbox(key="overview_last_week").check().run()
    assert not at.exception
    hit = _by_title(_figures(at), "Hit rate by tier")
    assert not [t for t in hit["data"] if t["name"].endswith("last week")]
    assert any("no requests a week before" in w.value for w in at.warning)


def test_changes_against_an_empty_previous_period_are_na(page_store, monkeypatch):
    """The range's previous period (before the store began) has no data:
    every tile says n/a, in grey, and a caption says why."""
    db, _ = page_store
    at = _page(monkeypatch, db, "overview")
    assert [m.delta for m in at.metric] == ["n/a"] * len(at.metric)
    assert any(c.value.startswith("Changes n/a:") and "0 %" in c.value for c in at.caption)
    grey, none = Metric.MetricColor.GRAY, Metric.MetricDirection.NONE
    assert {(m.proto.color, m.proto.direction) for m in at.metric} == {(grey, none)}
    # Each tile has its sparkline: the range's series (the cost tile has none).
    assert sum(len(m.proto.chart_data) > 1 for m in at.metric) == len(at.metric) - 1
    # The two hours before T0+4h have data: changes, green when better, red when worse.
    at = _page(monkeypatch, db, "overview", (T0 + 2 * HOUR, T0 + 4 * HOUR))
    colours = {m.label: (m.delta, m.proto.color) for m in at.metric}
    green, red = Metric.MetricColor.GREEN, Metric.MetricColor.RED
    for label, (delta, colour) in colours.items():
        assert delta != "n/a" and delta[0] in "+-", label
        rise = delta[0] == "+"
        if label in ("Requests", "R2 hit rate %"):
            assert colour == grey, label
        elif "latency" in label or "Error" in label or "Cost" in label:
            assert colour == (red if rise else green), label
        else:
            assert colour == (green if rise else red), label


def _tick_labels(fig: dict) -> list[str]:
    return list(fig["layout"]["yaxis"].get("ticktext", []))


@pytest.mark.parametrize("page", ["overview", "trends"])
def test_latency_axes_have_ms_and_s_tick_labels(page_store, monkeypatch, page):
    db, _ = page_store
    figs = _figures(_page(monkeypatch, db, page))
    fig = _by_title(figs, "Latency percentiles")
    assert fig["layout"]["yaxis"]["type"] == "log"
    labels = _tick_labels(fig)
    assert labels and all(re.fullmatch(r"[\d.,]+ (ms|s)", t) for t in labels), labels
    assert len(fig["layout"]["yaxis"]["tickvals"]) == len(labels)


def test_trends_mark_the_partial_day_and_do_not_scale_it(page_store, monkeypatch):
    """The range's one day of data ends at T0+4h: its bar is that part's
    cost (the raw events' requests priced), named partial until 12:00Z."""
    db, df = page_store
    at = _page(monkeypatch, db, "trends")
    cost = _by_title(_figures(at), "Cost per day")
    (bar,) = [t for t in cost["data"] if "partial" in t.get("name", "")]
    # The store's first day, measured from where its data begins to where it ends.
    assert bar["name"] == "list USD, partial (08:00Z–12:00Z)"
    assert "partial (08:00Z–12:00Z): not scaled to a day" in bar["hovertemplate"]
    cfg = config.with_db(cm_settings.Config(), str(db))
    with store_db.reader(db) as con:
        daily = costs_usage.daily_costs(con, Window(*PAGE_RANGE), cfg)
    r = df[df.kind == "request"]
    price = DEFAULT["workers_requests"]
    assert daily["partial"].all()
    assert daily["workers_requests"].sum() == pytest.approx(
        r.sample_interval.sum() * price.price / price.per, rel=1e-9
    )
    assert _values(bar["y"]).astype(float)[0] == pytest.approx(daily["list"].iloc[0], rel=1e-9)


def test_in_a_browser_the_latency_axis_reads_in_ms_and_the_changes_are_na(page_store):
    """Debian's Chromium on a link to the page store's range: the Overview's
    latency ticks are labelled with their unit (never a bare "2 3 … 9"), and
    the tiles' changes against the empty previous period read n/a."""
    from playwright.sync_api import sync_playwright

    db, _ = page_store
    path = timerange.link("", TimeRange.between(*PAGE_RANGE))
    with streamlit_server({"CACHEMON_DB": str(db)}) as url:
        with sync_playwright() as p:
            browser = chromium(p)
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(url + path)
            page.get_by_text("Latency percentiles").first.wait_for(timeout=90_000)
            page.wait_for_timeout(1000)
            ticks = page.evaluate(
                """[...document.querySelectorAll('.js-plotly-plot')]
                .filter(p => (p.querySelector('.gtitle') || {}).textContent
                             ?.startsWith('Latency percentiles'))
                .map(p => [...p.querySelectorAll('.ytick text')].map(t => t.textContent))"""
            )
            deltas = page.locator('[data-testid="stMetricDelta"]').all_inner_texts()
            browser.close()
    (labels,) = ticks
    assert labels and all(re.fullmatch(r"[\d.,]+ (ms|s)", t) for t in labels), labels
    assert deltas and {d.strip() for d in deltas} == {"n/a"}, deltas
