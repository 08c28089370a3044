"""Overview: the selected range at a glance, as an on-call engineer reads
it: health, KPI tiles with sparklines and their change against the previous
period, and the time series of hit rates, latency, volume and errors with
the alert periods and a "now" line.

The series are `cachemon.metrics.trends.trend`, the Trends page's; the
tiles are the metrics report's (`cachemon metrics`, GET /metrics).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import duckdb
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from cachemon import timerange
from cachemon.alerts import health
from cachemon.clock import MINUTE, floor_to
from cachemon.errors import CachemonError
from cachemon.events import TIERS
from cachemon.metrics import trends
from cachemon.settings import Config
from cachemon.timerange import TimeRange
from cachemon.usecases import metrics_report
from pages.shared import charts, common
from pages.shared import timerange as shared_range

# The tiles' sparklines: the trend column each KPI is drawn from.
SPARK = {
    "combined": "combined_hit_rate",
    "edge": "edge_hit_rate",
    "kv": "kv_hit_rate",
    "r2": "r2_hit_rate",
    "p50": "p50",
    "p95": "p95",
    "p99": "p99",
    "requests": "per_minute",
    "error_rate": "error_rate",
}
HIT_SERIES = {
    "combined_hit_rate": ("combined", charts.NEUTRAL),
    "edge_hit_rate": ("edge", charts.TIER_COLOURS["edge"]),
    "kv_hit_rate": ("KV", charts.TIER_COLOURS["kv"]),
    "r2_hit_rate": ("R2", charts.TIER_COLOURS["r2"]),
}
LATENCY_SERIES = {
    "p50": ("p50", charts.GOOD),
    "p95": ("p95", charts.WARN),
    "p99": ("p99", charts.BAD),
}


def _load(
    con: duckdb.DuckDBPyConnection,
    cfg: Config,
    tr: TimeRange,
    endpoint: str | None,
    at: datetime,
    last_week: bool,
):
    """The range's metrics report (compared with the previous period), its
    trend series (a row per bucket, gaps included), the alert periods in
    it, and with `last_week` the same series a week earlier (None, and why
    not, when the store cannot give it)."""
    report = common.overview_report(con, cfg, tr, endpoint, at)
    window = tr.window(at)
    step = timerange.step_for(window)
    series = _per_minute(trends.trend(con, window, step, endpoint, gaps=True))
    periods = health.active_periods(con, window.start, window.end)
    before, why = None, ""
    if last_week:
        try:
            before = _per_minute(trends.shifted(con, window, step, endpoint))
        except CachemonError as exc:
            why = str(exc)
        else:
            if before["requests"].fillna(0).sum() == 0:  # never empty lines and silence
                before, why = None, "the store has no requests a week before this range"
    return report, series, periods, before, why


def _per_minute(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(per_minute=df["requests"] / df["minutes"])


def _tiles(report: metrics_report.MetricsReport, series: pd.DataFrame) -> None:
    for row in common.kpi_tiles(report):
        for col, tile in zip(st.columns(len(row)), row):
            spark = series[SPARK[tile.key]] if tile.key in SPARK else None
            if spark is not None:
                spark = spark[spark.map(math.isfinite)]  # gaps, and an older store's absurd rows
            col.metric(
                tile.label,
                tile.value,
                tile.delta,
                delta_color=tile.delta_color,
                delta_arrow="off" if tile.delta == common.NA else "auto",
                chart_data=list(spark) if spark is not None and len(spark) > 1 else None,
                border=True,
            )


def _comparison_caption(report: metrics_report.MetricsReport) -> str:
    prev = report.previous
    if prev is None or prev.window is None:
        return ""
    where = f"the previous {report.metrics.period} ({timerange.stamp(prev.window.start)} – "
    where += f"{timerange.stamp(prev.window.end)})"
    if prev.comparable:
        return f"Changes compared with {where}: green is better, red worse, grey neither."
    share = f"{100 * prev.coverage:.0f} %"
    return (
        f"Changes n/a: compared with {where}, which has data for {share} of its length; a change "
        f"is shown only against a period with data for at least "
        f"{100 * metrics_report.COMPARABLE_COVERAGE:.0f} % of it."
    )


def _charts(window, now, series, before, periods) -> None:
    # The window of a preset ends at now floored to the minute: the now line is drawn there.
    now = floor_to(now, MINUTE)
    step = timerange.step_for(window)
    every = f"{common.fmt(step / timedelta(minutes=1), 'count')}-minute buckets"
    left, right = st.columns(2)
    figures = (
        (HIT_SERIES, "%", ".2f", "hit rate %", f"Hit rate by tier ({every})", "hit", left),
        (
            LATENCY_SERIES,
            "ms",
            ".3~g",
            "latency",
            "Latency percentiles (log scale)",
            "latency",
            right,
        ),
        (
            {"per_minute": ("requests", charts.NEUTRAL)},
            "/min",
            ",.1f",
            "requests per minute",
            "Requests per minute",
            "volume",
            left,
        ),
        (
            {"error_rate": ("errors", charts.BAD)},
            "%",
            ".2f",
            "error rate %",
            "Error rate",
            "errors",
            right,
        ),
    )
    for columns, unit, hover, y_title, title, key, where in figures:
        fig = charts.lines(series, columns, unit, hover, before, width=2)
        log_y = columns is LATENCY_SERIES
        charts.time_axes(
            fig,
            window,
            now,
            y_title,
            periods,
            log_y=log_y,
            y_range=_span(series, before) if log_y else None,
        )
        charts.titled(fig, title, legend_rows=2 if before is not None else 1)
        shared_range.zoomable(fig, f"overview-{key}", where)


def _span(series: pd.DataFrame, before: pd.DataFrame | None) -> tuple[float, float] | None:
    """The latency axis' extent (ms): the lowest p50 to the highest p99 shown."""
    frames = [f for f in (series, before) if f is not None]
    lo = min(f["p50"].min() for f in frames)
    hi = max(f["p99"].max() for f in frames)
    return (float(lo), float(hi)) if pd.notna(lo) and pd.notna(hi) and lo > 0 else None


def _tier_share(report: metrics_report.MetricsReport, container) -> None:
    volume = report.metrics.volume
    shares = [volume.share(t) for t in TIERS]
    fig = go.Figure(
        go.Bar(
            x=list(TIERS),
            y=shares,
            marker_color=[charts.TIER_COLOURS[t] for t in TIERS],
            text=[f"{s:.1f} %" if math.isfinite(s) else common.NA for s in shares],
            textposition="outside",
            hovertemplate="%{x}: %{y:.2f} % of requests<extra></extra>",
        )
    )
    fig.update_layout(
        title="Requests served by tier",
        yaxis_title="share of requests %",
        xaxis_title="tier (api = origin misses)",
        yaxis_range=[0, max([100.0, *(s for s in shares if math.isfinite(s))]) * 1.1],
        showlegend=False,
        margin={"t": 40, "b": 10},
    )
    container.plotly_chart(fig, width="stretch")


def _top_keys(report: metrics_report.MetricsReport, container) -> None:
    container.subheader("Top keys")
    container.dataframe(
        pd.DataFrame(
            [
                {
                    "key": k.key,
                    "endpoint": k.endpoint,
                    "requests": k.requests,
                    "hit rate %": round(k.hit_rate, 2),
                    "tier": k.tier,
                }
                for k in report.metrics.top_keys
            ],
            columns=["key", "endpoint", "requests", "hit rate %", "tier"],
        ),
        hide_index=True,
        width="stretch",
        column_config={
            "key": st.column_config.TextColumn("key", width="medium"),
            "endpoint": st.column_config.TextColumn("endpoint", width="small"),
            "requests": st.column_config.NumberColumn(
                "requests", format="localized", width="small"
            ),
            "hit rate %": st.column_config.NumberColumn("hit rate %", format="%.2f", width="small"),
            "tier": st.column_config.TextColumn("tier", width="small"),
        },
    )
    container.page_link(
        "pages/keys.py", label="All keys, filters and drill-down", icon=":material/key:"
    )


@st.fragment(run_every=common.REFRESH)
def overview():
    common.page_start("Overview")
    now, endpoint = common.now(), shared_range.endpoint()
    window = shared_range.window(now)  # a custom range now in the future falls back here
    tr = shared_range.current()
    label = tr.label
    last_week = st.session_state.get("overview_last_week", False)
    try:
        report, series, periods, before, why = common.cached(_load, tr, endpoint, now, last_week)
    except CachemonError as exc:
        common.show_error(exc)
        return
    current = report.metrics
    common.health_banner(report.health)
    st.page_link(
        "pages/alerts.py", label="Alerts, history and silences", icon=":material/notifications:"
    )
    common.stale_banner(current.data_until, current.at)
    st.caption(
        f"Window {timerange.stamp(current.window.start)} – {timerange.stamp(current.window.end)} "
        f"(UTC, {label}) · endpoint {endpoint or 'all'} · data until {timerange.stamp(current.data_until)} "
        f"· refreshes every {common.REFRESH.total_seconds():g} s"
    )
    _tiles(report, series)
    st.caption(_comparison_caption(report))
    st.checkbox(
        "Compare with last week",
        key="overview_last_week",
        help="Dashed lines: the same series 7 days earlier, moved onto this range",
    )
    if why:
        st.warning(f"Last week is not shown: {why}")
    if series["requests"].notna().sum() == 0:
        st.info("No requests in this range for this endpoint.")
    else:
        _charts(window, now, series, before, periods)
    left, right = st.columns([1, 2])
    _tier_share(report, left)
    _top_keys(report, right)


overview()
