"""Trends: the selected range (the sidebar's, as every page) in equal time
buckets: tier shares, latency percentiles, volume, errors, queue depth and
the cost per day, with the alert periods as named bands and a "now" line on
every time chart, all on the same x-range. Dragging across a chart zooms
the range."""

from __future__ import annotations

from datetime import datetime

import duckdb
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from cachemon import timerange
from cachemon.alerts import health
from cachemon.clock import DAY, MINUTE, Window, floor_to
from cachemon.costs import usage as costs_usage
from cachemon.errors import CachemonError
from cachemon.events import TIERS
from cachemon.metrics import trends
from cachemon.settings import Config
from pages.shared import charts, common
from pages.shared import timerange as shared_range

LATENCY = {"p50": charts.GOOD, "p95": charts.WARN, "p99": charts.BAD}
# The data table's columns, with units in the headers.
TABLE = {
    "time": "time (UTC)",
    "requests": "requests",
    "per_minute": "requests/min",
    "combined_hit_rate": "hit rate %",
    "edge_hit_rate": "edge %",
    "kv_hit_rate": "KV %",
    "r2_hit_rate": "R2 %",
    "error_rate": "error rate %",
    "p50": "p50 ms",
    "p95": "p95 ms",
    "p99": "p99 ms",
    "queue_depth_max": "queue max",
}


def _load(
    con: duckdb.DuckDBPyConnection,
    cfg: Config,
    window: Window,
    endpoint: str | None,
):
    step = timerange.step_for(window)
    df = trends.trend(con, window, step, endpoint, gaps=True)
    return (
        df.assign(per_minute=df["requests"] / df["minutes"]),
        costs_usage.daily_costs(con, window, cfg),
        health.active_periods(con, window.start, window.end),
    )


def _hhmm(t: datetime) -> str:
    return timerange.stamp(t)[11:]


def partial_label(row) -> str:
    """How a partial day's bar is named: the part of the day it measured."""
    start, end = pd.Timestamp(row["start"]), pd.Timestamp(row["end"])
    day = pd.Timestamp(row["day"])
    if start == day:
        return f"partial (until {_hhmm(end)})"
    if end == day + pd.Timedelta(DAY):
        return f"partial (from {_hhmm(start)})"
    return f"partial ({_hhmm(start)}–{_hhmm(end)})"


def cost_figure(daily: pd.DataFrame) -> go.Figure:
    """List cost per UTC day as bars that span the part of the day measured;
    a partial day lighter and hatched, named "partial (until HH:MMZ)" in its
    legend entry and hover, its cost that part's (never scaled up); the
    billed cost as markers."""
    fig = go.Figure()
    mids = daily["start"] + (daily["end"] - daily["start"]) / 2
    widths = (daily["end"] - daily["start"]).dt.total_seconds() * 1000
    full = ~daily["partial"].astype(bool)
    fig.add_bar(
        x=mids[full],
        y=daily.loc[full, "list"],
        width=widths[full],
        name="list USD, whole day",
        marker_color=charts.NEUTRAL,
        customdata=daily.loc[full, "day"].map(lambda d: timerange.stamp(d)[:10]),
        hovertemplate="%{customdata}: $%{y:,.2f} list<extra>whole day</extra>",
    )
    for i in daily.index[~full]:
        row = daily.loc[i]
        label = partial_label(row)
        fig.add_bar(
            x=[mids[i]],
            y=[row["list"]],
            width=[widths[i]],
            name=f"list USD, {label}",
            marker={
                "color": charts.NEUTRAL,
                "opacity": 0.45,
                "pattern": {"shape": "/", "solidity": 0.3},
            },
            hovertemplate=f"{timerange.stamp(row['day'])[:10]}: $%{{y:,.2f}} list, "
            f"{label}: not scaled to a day<extra></extra>",
        )
    fig.add_scatter(
        x=mids,
        y=daily["billed"],
        mode="markers",
        name="billed USD (after included amounts)",
        marker={"color": charts.WARN, "symbol": "diamond", "size": 9},
        hovertemplate="$%{y:,.2f} billed<extra></extra>",
    )
    return fig.update_layout(barmode="overlay")


def _tier_bars(df: pd.DataFrame, window: Window) -> go.Figure:
    """Each bucket's requests by tier as stacked bars spanning the bucket's
    part of the window: a bucket without data is a gap, not a zero."""
    start = df["time"].clip(lower=pd.Timestamp(window.start))
    width = df["minutes"] * 60_000  # ms, as a date axis measures bar widths
    mid = start + pd.to_timedelta(df["minutes"] / 2, unit="min")
    fig = go.Figure()
    for t in TIERS:
        fig.add_bar(
            x=mid,
            y=100 * df[t] / df["requests"],
            width=width,
            name="api (origin misses)" if t == "api" else t,
            marker={"color": charts.TIER_COLOURS[t], "line": {"width": 0}},
            hovertemplate=f"%{{y:.2f}} %<extra>{t}</extra>",
        )
    return fig.update_layout(barmode="stack", bargap=0, yaxis_range=[0, 100])


def page():
    common.page_start("Trends")
    now, endpoint = common.now(), shared_range.endpoint()
    window = shared_range.window(now)
    try:
        df, daily, periods = common.cached(_load, window, endpoint)
    except CachemonError as exc:
        common.show_error(exc)
        return
    step = timerange.step_for(window)
    has_data = df["requests"].notna()
    if has_data.any() and not shared_range.current().custom:
        # A range ending now: say so when its data ends long before now.
        last = df.loc[has_data, "time"].max() + pd.Timedelta(step)
        common.stale_banner(min(last, pd.Timestamp(window.end)).to_pydatetime(), now)
    st.caption(
        f"{shared_range.current().label}: {timerange.stamp(window.start)} – "
        f"{timerange.stamp(window.end)} (UTC) in {common.fmt(step.total_seconds() / 60, 'count')}"
        f"-minute buckets · {len(periods)} alert period(s) as bands · endpoint "
        f"{endpoint or 'all'} · drag across a chart to zoom"
    )
    if not has_data.any():
        st.info("No requests in this range for this endpoint.")
        return
    # The window of a preset ends at now floored to the minute: the now line is drawn there.
    now = floor_to(now, MINUTE)
    lo, hi = df["p50"].min(), df["p99"].max()
    latency = (float(lo), float(hi)) if pd.notna(lo) and pd.notna(hi) and lo > 0 else None
    left, right = st.columns(2)
    charts_ = (
        (
            _tier_bars(df, window),
            "share of requests %",
            False,
            "Requests served by tier (%, stacked)",
        ),
        (
            charts.lines(df, {q: (q, c) for q, c in LATENCY.items()}, "ms", ".3~g", width=2),
            "latency",
            True,
            "Latency percentiles (log scale)",
        ),
        (
            charts.lines(df, {"per_minute": ("requests", charts.NEUTRAL)}, "/min", ",.1f"),
            "requests per minute",
            False,
            "Volume",
        ),
        (
            charts.lines(df, {"error_rate": ("errors", charts.BAD)}, "%", ".2f"),
            "error rate %",
            False,
            "Error rate",
        ),
        (
            charts.lines(
                df,
                {
                    "queue_depth_max": ("max", charts.WARN),
                    "queue_depth_mean": ("mean", charts.NEUTRAL),
                },
                "messages",
                ",.0f",
            ),
            "queue depth (messages)",
            False,
            "Queue depth",
        ),
    )
    for i, (fig, y_title, log_y, title) in enumerate(charts_):
        charts.time_axes(fig, window, now, y_title, periods, log_y=log_y, y_range=latency)
        charts.titled(fig, title)
        shared_range.zoomable(fig, f"trends-{i}", left if i % 2 == 0 else right)
    if not daily.empty:
        fig = cost_figure(daily)
        charts.time_axes(fig, window, now, "USD per UTC day (partial: its part)", periods)
        charts.titled(fig, "Cost per day (partial days hatched)", legend_rows=2)
        shared_range.zoomable(fig, "trends-cost", right)
    with st.expander("Data"):
        table = _data_table(df.loc[has_data, list(TABLE)])
        numbers = {
            v: st.column_config.NumberColumn(v, format="localized" if k == "requests" else "%.2f")
            for k, v in TABLE.items()
            if k != "time" and pd.api.types.is_numeric_dtype(table[v])
        }
        st.dataframe(
            table,
            hide_index=True,
            width="stretch",
            column_config={
                TABLE["time"]: st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm[Z]"),
                **numbers,
            },
        )


def _data_table(df: pd.DataFrame) -> pd.DataFrame:
    """The series as the Data table shows them. A column with a bucket that
    has no figure (a minute without a queue gauge) is written as text, "—"
    there: a grid draws a missing number as a bare "None"."""
    out = df.rename(columns=TABLE)
    for k, v in TABLE.items():
        if k != "time" and df[k].isna().any():
            out[v] = [common.fmt(x) if pd.notna(x) else "—" for x in df[k]]
    return out


page()
