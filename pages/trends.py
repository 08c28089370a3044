"""Trends: 24 h / 7 d / 30 d charts with incident markers from alert history."""

from datetime import datetime

import duckdb
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from cachemon.alerts import health
from cachemon.costs import usage as costs_usage
from cachemon.errors import CachemonError
from cachemon.metrics import trends
from cachemon.settings import Config
from pages.shared import common

TIER_COLOURS = {"edge": "#2563eb", "kv": "#16a34a", "r2": "#f59e0b", "api": "#dc2626"}


def _load(
    con: duckdb.DuckDBPyConnection,
    cfg: Config,
    range_name: str,
    endpoint: str | None,
    at: datetime,
):
    r = trends.parse_range(range_name)
    window = trends.window_for(con, r, at)
    return (
        window,
        trends.trend(con, window, r.step, endpoint),
        costs_usage.daily_costs(con, window, cfg),
        health.active_periods(con, window.start, window.end),
    )


def _markers(fig: go.Figure, periods, window) -> go.Figure:
    """Shade each alert's active period, labelled with its type (all shapes
    set at once: Plotly's add_vrect per period is slow)."""
    shapes, notes = [], []
    for p in periods:
        start, end = max(p.start, window.start), min(p.end or window.end, window.end)
        shapes.append(
            {
                "type": "rect",
                "xref": "x",
                "yref": "paper",
                "x0": start,
                "x1": end,
                "y0": 0,
                "y1": 1,
                "fillcolor": common.severity_shade(p.severity),
                "line": {"width": 0},
                "layer": "below",
            }
        )
        notes.append(
            {
                "x": start,
                "y": 1,
                "xref": "x",
                "yref": "paper",
                "text": p.type,
                "showarrow": False,
                "xanchor": "left",
                "yanchor": "bottom",
                "font": {"size": 10},
            }
        )
    return fig.update_layout(shapes=shapes, annotations=notes, **common.UTC_AXIS)


def _line(df: pd.DataFrame, columns: dict, title: str, y: str, **kw) -> go.Figure:
    long = df.melt(id_vars="time", value_vars=list(columns), var_name="series", value_name=y)
    long["series"] = long["series"].map(columns)
    return px.line(long, x="time", y=y, color="series", title=title, **kw)


def page():
    common.page_start("Trends")
    range_name = (
        st.segmented_control("Range", list(trends.RANGES), default="7d", key="trend_range") or "7d"
    )
    try:
        window, df, daily, periods = common.cached(
            _load, range_name, common.endpoint(), common.now()
        )
    except CachemonError as exc:
        common.show_error(exc)
        return
    common.stale_banner(window.end, common.now())
    step = trends.RANGES[range_name].step
    st.caption(
        f"{window} (UTC) in {int(step.total_seconds() // 60)}-minute buckets · "
        f"{len(periods)} alert period(s) shaded · endpoint {common.endpoint() or 'all'}"
    )
    if df.empty:
        st.info("No requests in this range for this endpoint.")
        return
    shares = df.assign(**{t: 100 * df[t] / df["requests"] for t in TIER_COLOURS})
    long = shares.melt(
        id_vars="time", value_vars=list(TIER_COLOURS), var_name="tier", value_name="share %"
    )
    fig = px.area(
        long,
        x="time",
        y="share %",
        color="tier",
        color_discrete_map=TIER_COLOURS,
        title="Requests served by tier (stacked share; hit rate = all but api)",
    )
    left, right = st.columns(2)
    left.plotly_chart(_markers(fig, periods, window), width="stretch")
    fig = _line(
        df, {"p50": "p50", "p95": "p95", "p99": "p99"}, "Latency percentiles", "ms", log_y=True
    )
    right.plotly_chart(_markers(fig, periods, window), width="stretch")
    volume = df.assign(rate=df["requests"] / df["minutes"])
    fig = px.bar(volume, x="time", y="rate", title="Volume (weighted requests per minute)")
    left.plotly_chart(_markers(fig, periods, window), width="stretch")
    fig = px.line(df, x="time", y="error_rate", title="Error rate %")
    right.plotly_chart(_markers(fig, periods, window), width="stretch")
    fig = _line(
        df, {"queue_depth_max": "max", "queue_depth_mean": "mean"}, "Queue depth", "messages"
    )
    left.plotly_chart(_markers(fig, periods, window), width="stretch")
    if not daily.empty:
        fig = px.bar(
            daily.melt(
                id_vars="day", value_vars=["list", "billed"], var_name="price", value_name="USD"
            ),
            x="day",
            y="USD",
            color="price",
            barmode="group",
            title="Cost per day (a partial day scaled to a full one)",
        )
        right.plotly_chart(fig.update_layout(**common.UTC_AXIS), width="stretch")
    with st.expander("Data"):
        st.dataframe(df, hide_index=True, width="stretch")


page()
