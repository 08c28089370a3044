"""Costs: the selected range's usage as a daily rate by component (list and
billed), the month to date and the month-end forecast, each named with its
basis (`cachemon.costs.basis`); what hot, warm and cold keys weigh in the
range (keys, requests, cost); the latest daily report's recommendations,
the small ones folded away (`[costs] min_saving`); past reports."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from cachemon.clock import Window
from cachemon.costs import classes, report
from cachemon.costs import usage as costs_usage
from cachemon.costs.basis import PRICES, Basis, Price, label, span
from cachemon.errors import CachemonError
from cachemon.pricing import DEFAULT
from cachemon.settings import Config
from cachemon.store.queries import CLASSES, KeyClass, data_end
from cachemon.timerange import stamp
from pages.shared import charts, common, timerange

# List and billed are two prices of the same usage, neither good nor bad.
PRICE_COLOURS = {Price.LIST: charts.NEUTRAL, Price.BILLED: "#2563eb"}
# Classes are neither good nor bad: one hue, darker for hotter (red would read as a problem).
CLASS_COLOURS = {KeyClass.HOT: "#1e3a8a", KeyClass.WARM: "#3b82f6", KeyClass.COLD: "#93c5fd"}
MEASURES = (("keys", "keys"), ("requests", "requests"), ("cost_per_day", "cost"))


def _load(con, cfg: Config, window: Window, custom: bool, at: datetime) -> tuple:
    """The range counted (a preset past the newest data slid back to it),
    the data's end, the daily rate, the forecast, the class shares and the
    recent reports (a tuple: st.cache_data pickles it, and a class of a page
    script does not pickle)."""
    end = data_end(con, at)
    if not custom and end < window.end:
        # A preset past the newest data: the last good numbers, marked stale.
        window = Window.ending(end, window.length)
    return (
        window,
        end,
        costs_usage.daily_rate(con, window, cfg),
        costs_usage.forecast(con, end, cfg, cfg.pricing),
        classes.class_shares(con, cfg, window),
        report.recent(con, 30),
    )


def usd(value: float) -> str:
    """A USD amount for a label: cents, or two significant digits below 10
    cents ($0.01, $0.005, $0.00004, $1,234.50), never a misleading $0.00."""
    if not math.isfinite(value):
        return "n/a"
    a = abs(value)
    decimals = 2 if a >= 0.1 or a == 0 else 1 - math.floor(math.log10(a))
    whole, frac = f"{a:,.{decimals}f}".split(".")
    frac = frac.rstrip("0").ljust(2, "0")
    return f"{'-' if value < 0 else ''}${whole}.{frac}"


def page():
    cfg = common.page_start("Costs")
    now = common.now()
    tr = timerange.current()
    asked = timerange.window(now)
    try:
        counted, until, daily, fc, shares, reports = common.cached(_load, asked, tr.custom, now)
    except CachemonError as exc:
        common.show_error(exc)
        return
    common.stale_banner(until, now)
    if timerange.endpoint() is not None:
        # Storage, Analytics Engine and the plan's included amounts are not
        # per endpoint: say the filter is not applied rather than ignore it.
        st.info(
            f"Costs are for all endpoints: the endpoint filter ({timerange.endpoint()}) does not apply here."
        )
    shown = (
        tr.label if counted == asked else f"{tr.label} to the newest data ({stamp(counted.end)})"
    )
    # Every figure names its basis (costs.basis): a rate, the month to date
    # or the forecast, its window and coverage, list or billed.
    rate, mtd, ahead = daily.basis, fc.month_to_date.basis, fc.basis
    st.caption(
        f"All endpoints, UTC · range {shown} · prices {daily.pricing_version} · {PRICES}. "
        f"Per day: {rate.text(None)}. Month to date: {mtd.text(None)}. "
        f"Forecast: {ahead.text(None)}."
    )
    _kpis(daily, fc)
    _components(daily)
    _classes(shares)
    _latest(reports, cfg.costs.min_saving)


def _kpis(daily: costs_usage.Breakdown, fc: costs_usage.Forecast) -> None:
    rate, mtd, ahead = daily.basis, fc.month_to_date.basis, fc.basis
    per_day = f"USD/day ({rate.short(None)})"
    tiles = (
        (f"List {per_day}", daily.list_total, label(rate, Price.LIST)),
        (f"Billed {per_day}", daily.billed_total, label(rate, Price.BILLED)),
        (f"List USD ({mtd.short(None)})", fc.month_to_date.list_total, label(mtd, Price.LIST)),
        (f"List USD ({ahead.short(None)})", fc.list_total, label(ahead, Price.LIST)),
        (f"Billed USD ({ahead.short(None)})", fc.billed_total, label(ahead, Price.BILLED)),
    )
    # Two rows (the rate; the month), so each label fits whole at 1440 px.
    for row in (tiles[:2], tiles[2:]):
        for col, (name, value, help_text) in zip(st.columns(3), row, strict=False):
            col.metric(name, common.fmt(value, "usd"), help=help_text)


def _usd_axis(top: float) -> dict:
    """An x axis in USD: a $ prefix, thousands separators and the decimals
    the ticks need (a $0.003 bar gets $0.001 ticks, not $0.00)."""
    decimals = 2 if top <= 0 else max(2, math.ceil(-math.log10(top / 10)))
    return {"tickprefix": "$", "tickformat": f",.{decimals}f", "rangemode": "tozero"}


def component_chart(daily: costs_usage.Breakdown) -> go.Figure:
    """Cost per day by component: a horizontal bar per price (list, billed)
    side by side, components sorted by list cost (the dearest on top), full
    labels, a USD axis."""
    rate = daily.basis
    lines = sorted(daily.lines, key=lambda ln: (ln.list_cost, ln.billed))  # bottom to top
    names = [DEFAULT[ln.component].label for ln in lines]
    fig = go.Figure()
    for price in (Price.BILLED, Price.LIST):  # drawn bottom-up: list above billed in a group
        values = [ln.list_cost if price is Price.LIST else ln.billed for ln in lines]
        fig.add_bar(
            name=f"{price} ({label_price(price)})",
            # A value an older store made infinite draws no bar; its text says n/a.
            x=[v if math.isfinite(v) else None for v in values],
            y=names,
            orientation="h",
            marker_color=PRICE_COLOURS[price],
            text=[usd(v) for v in values],
            textposition="outside",
            cliponaxis=False,
            hovertemplate="%{y}: %{text}/day<extra>" + str(price) + "</extra>",
        )
    top = max(
        (v for ln in lines for v in (ln.list_cost, ln.billed) if math.isfinite(v)), default=0.0
    )
    fig.update_layout(
        # The page's subheader titles it: a plot title would collide with
        # the legend at 390 px. The basis goes on the axis, under the bars.
        barmode="group",
        height=110 + 46 * len(lines),
        margin={"t": 40, "b": 10, "l": 10, "r": 60},
        legend=charts.LEGEND_ABOVE | {"traceorder": "reversed"},  # list first, as in the table
        xaxis={"title": f"USD/day ({rate.short(None)})", **_usd_axis(top)},
        yaxis={"title": None, "automargin": True, "categoryorder": "array", "categoryarray": names},
    )
    if top > 0:
        fig.update_xaxes(range=[0, top * 1.2])  # room for the values outside the bars
    return fig


def label_price(price: Price) -> str:
    return "usage × price" if price is Price.LIST else "after included amounts"


def _components(daily: costs_usage.Breakdown) -> None:
    rate = daily.basis
    st.subheader("Cost per day by component")
    st.plotly_chart(component_chart(daily), width="stretch", key="components")
    lines = pd.DataFrame(
        [
            {
                "component": DEFAULT[ln.component].label,
                # Counts with separators, GB-months with their significant digits.
                "units": common.fmt(ln.units, "count" if ln.units >= 100 else "num"),
                "unit": DEFAULT[ln.component].unit,
                "list USD/day": ln.list_cost,
                "billed USD/day": ln.billed,
            }
            for ln in sorted(daily.lines, key=lambda ln: -ln.list_cost)
        ]
    )
    lines, money = usd_cells(lines, ["list USD/day", "billed USD/day"])
    st.dataframe(
        lines,
        hide_index=True,
        width="stretch",
        column_config={
            "component": st.column_config.TextColumn("component", width=230),
            "units": st.column_config.TextColumn("units (per day)", width=140),
            "unit": st.column_config.TextColumn("unit", width=110),
            "list USD/day": money(f"USD/day ({rate.short(Price.LIST)})", label(rate, Price.LIST)),
            "billed USD/day": money(
                f"USD/day ({rate.short(Price.BILLED)})", label(rate, Price.BILLED)
            ),
        },
    )


def usd_cells(df: pd.DataFrame, columns: list[str]) -> tuple[pd.DataFrame, Callable]:
    """`df` and a column config maker for its USD `columns`: numbers shown
    as $1,234.5678; if any is not finite (an absurd value in an older store)
    those columns become text, "n/a" there, never "nan", "inf" or "None"."""
    if all(np.isfinite(df[c].astype(float)).all() for c in columns):
        return df, lambda name, help=None: st.column_config.NumberColumn(
            name, format="$%,.4f", help=help
        )
    df = df.assign(**{c: [usd(float(v)) for v in df[c]] for c in columns})
    return df, lambda name, help=None: st.column_config.TextColumn(name, help=help)


def _share(shares: classes.ClassShares, klass: KeyClass, measure: str) -> float:
    value = shares.share(klass, measure)
    return 0.0 if value is None else value


def share_chart(shares: classes.ClassShares) -> go.Figure:
    """One 100 % bar per measure (keys, requests, cost), split by class."""
    rows = [f"share of {name}" for _, name in reversed(MEASURES)]  # keys on top
    fig = go.Figure()
    for klass in CLASSES:
        values = [_share(shares, klass, m) for m, _ in reversed(MEASURES)]
        fig.add_bar(
            name=str(klass),
            x=values,
            y=rows,
            orientation="h",
            marker_color=CLASS_COLOURS[klass],
            text=[f"{v:.1f}%" if v >= 4 else "" for v in values],
            textposition="inside",
            insidetextanchor="middle",
            textangle=0,
            hovertemplate="%{y}: %{x:.2f}%<extra>" + str(klass) + "</extra>",
        )
    fig.update_layout(
        barmode="stack",
        height=230,
        margin={"t": 40, "b": 10, "l": 10, "r": 10},
        legend=charts.LEGEND_ABOVE | {"traceorder": "normal"},
        xaxis={"title": "share %", "range": [0, 100], "ticksuffix": "%"},
        yaxis={"title": None, "automargin": True},
    )
    return fig


def share_table(shares: classes.ClassShares) -> pd.DataFrame:
    """The class shares as the page's table (shares in %, "n/a" never needed:
    an empty window shows no table)."""
    return pd.DataFrame(
        [
            {
                "class": str(r.klass),
                "keys": r.keys,
                "keys %": _share(shares, r.klass, "keys"),
                "requests": r.requests,
                "requests %": _share(shares, r.klass, "requests"),
                "cost USD/day": r.cost_per_day,
                "cost %": _share(shares, r.klass, "cost_per_day"),
            }
            for r in shares.rows
        ]
    )


def _classes(shares: classes.ClassShares) -> None:
    st.subheader("Key classes: keys, requests and cost")
    basis: Basis = shares.basis
    st.caption(
        f"A key's class is its rate over the class window ({stamp(shares.class_window.start)} – "
        f"{stamp(shares.class_window.end)}, {span(shares.class_window.length)} of data, "
        "`[costs] class_window`): hot above 100 requests/day, cold under 10 a month. "
        f"Keys, requests and cost are those of the range ({stamp(shares.counted.start)} – "
        f"{stamp(shares.counted.end)}). Cost: each key's Worker runs, KV reads, KV writes and "
        "R2 gets at list prices (storage and Analytics Engine are not per key), in USD/day: "
        f"{basis.short(Price.LIST)}."
    )
    if shares.total("requests") <= 0:
        st.info("No requests in the range: nothing to split by class.")
        return
    st.plotly_chart(share_chart(shares), width="stretch", key="class-shares")
    pct = st.column_config.NumberColumn(format="%.1f%%", width=100)
    table, money = usd_cells(share_table(shares), ["cost USD/day"])
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        column_config={
            "class": st.column_config.TextColumn("class", width=80),
            "keys": st.column_config.NumberColumn("keys", format="%,d", width=110),
            "keys %": pct,
            "requests": st.column_config.NumberColumn("requests", format="%,.0f", width=130),
            "requests %": pct,
            "cost USD/day": money(
                f"cost USD/day ({basis.short(Price.LIST)})", label(basis, Price.LIST)
            ),
            "cost %": pct,
        },
    )


def _recommendation(rec, basis: str) -> None:
    with st.container(border=True):
        st.markdown(f"**{rec.title}** — saves {usd(rec.saving_per_day)}/day ({basis})")
        # Plain text: evidence names cache keys, which come from the internet.
        st.text("Action: " + rec.action)
        for line in rec.evidence:
            st.text(line)


def _latest(reports: list[report.StoredReport], min_saving: float) -> None:
    st.subheader("Recommendations")
    if not reports:
        st.info(
            "No daily report yet: the `report` job builds one at 03:00 UTC, "
            "`python -m cachemon costs report` builds it now."
        )
        return
    r = reports[0].report
    basis = report.saving_basis(r)
    st.caption(
        f"From the daily report of {r.day.isoformat()} (generated {stamp(r.generated_at)}, "
        f"health {r.health}); savings at {basis}."
    )
    big = [x for x in r.recommendations if x.saving_per_day >= min_saving]
    small = [x for x in r.recommendations if x.saving_per_day < min_saving]
    if not r.recommendations:
        st.success("No recommendation: nothing to change at current traffic.")
    for rec in big:
        _recommendation(rec, "list")
    if small:
        word = "recommendation" if len(small) == 1 else "recommendations"
        with st.expander(f"{len(small)} smaller {word} (< {usd(min_saving)}/day)", expanded=False):
            for rec in small:
                _recommendation(rec, "list")
    _reports(reports)


def _reports(reports: list[report.StoredReport]) -> None:
    st.subheader("Daily reports")
    table, money = usd_cells(
        pd.DataFrame(
            [
                {
                    "day": x.day.isoformat(),
                    "basis": x.report.basis.short(None) if x.report.basis else "1d measured",
                    "list USD": x.report.list_total,
                    "billed USD": x.report.billed_total,
                    "saving USD/day": x.report.saving_per_day,
                    "recommendations": len(x.report.recommendations),
                    "emailed": "yes" if x.sent else "no",
                    "generated": stamp(x.created_at),
                }
                for x in reports
            ]
        ),
        ["list USD", "billed USD", "saving USD/day"],
    )
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        column_config={
            "day": st.column_config.TextColumn("day", width=100),
            "basis": st.column_config.TextColumn("basis", width=240),
            "list USD": money("list USD (the day)"),
            "billed USD": money("billed USD (the day)"),
            "saving USD/day": money("saving USD/day (list)"),
            "recommendations": st.column_config.NumberColumn(format="%d", width=120),
            "emailed": st.column_config.TextColumn(width=80),
            "generated": st.column_config.TextColumn("generated (UTC)", width=150),
        },
    )


page()
