"""Costs: breakdown by component (list and billed), month-end forecast,
key classes and recommendations from the daily report, past reports."""

import pandas as pd
import plotly.express as px
import streamlit as st

from cachemon.clock import Period, Window, iso
from cachemon.costs import report
from cachemon.costs import usage as costs_usage
from cachemon.costs.basis import PRICES, Price, label
from cachemon.errors import CachemonError
from cachemon.pricing import DEFAULT
from cachemon.store.queries import KeyClass, data_end
from pages.shared import common


def _load(con, cfg, period: str, at):
    end = data_end(con, at)
    window = Window.ending(end, Period.parse(period).length)
    daily = costs_usage.daily_rate(con, window, cfg)
    return window, daily, costs_usage.forecast(con, end, cfg, cfg.pricing), report.recent(con, 30)


def page():
    common.page_start("Costs")
    try:
        window, daily, fc, reports = common.cached(_load, common.period().value, common.now())
    except CachemonError as exc:
        common.show_error(exc)
        return
    # Every figure names its basis (costs.basis): a rate, the month to date
    # or the forecast, its window and coverage, list or billed.
    rate, mtd, ahead = daily.basis, fc.month_to_date.basis, fc.basis
    st.caption(
        f"All endpoints, UTC · prices {daily.pricing_version} · {PRICES}. "
        f"Per day: {rate.text(None)}. Month to date: {mtd.text(None)}. "
        f"Forecast: {ahead.text(None)}."
    )
    cols = st.columns(5)
    per_day = f"USD/day ({rate.short(None)})"
    cols[0].metric(
        f"List {per_day}", common.fmt(daily.list_total, "usd"), help=label(rate, Price.LIST)
    )
    cols[1].metric(
        f"Billed {per_day}", common.fmt(daily.billed_total, "usd"), help=label(rate, Price.BILLED)
    )
    cols[2].metric(
        f"List USD ({mtd.short(None)})",
        common.fmt(fc.month_to_date.list_total, "usd"),
        help=label(mtd, Price.LIST),
    )
    cols[3].metric(
        f"List USD ({ahead.short(None)})",
        common.fmt(fc.list_total, "usd"),
        help=label(ahead, Price.LIST),
    )
    cols[4].metric(
        f"Billed USD ({ahead.short(None)})",
        common.fmt(fc.billed_total, "usd"),
        help=label(ahead, Price.BILLED),
    )
    lines = pd.DataFrame(
        [
            {
                "component": DEFAULT[ln.component].label,
                "units": ln.units,
                "unit": DEFAULT[ln.component].unit,
                "list USD/day": ln.list_cost,
                "billed USD/day": ln.billed,
            }
            for ln in daily.lines
        ]
    )
    left, right = st.columns([3, 2])
    left.dataframe(lines, hide_index=True, width="stretch")
    fig = px.bar(
        lines.melt(
            id_vars="component",
            value_vars=["list USD/day", "billed USD/day"],
            var_name="price",
            value_name="USD/day",
        ),
        y="component",
        x="USD/day",
        color="price",
        barmode="group",
        orientation="h",
        title=f"Cost per day by component ({rate.short(None)})",
    )
    right.plotly_chart(fig.update_layout(yaxis_title=None, margin={"t": 40}), width="stretch")
    _latest(reports)


CLASS_COLOURS = {KeyClass.HOT: "#dc2626", KeyClass.WARM: "#f59e0b", KeyClass.COLD: "#2563eb"}


def _latest(reports: list[report.StoredReport]):
    st.subheader("Key classes and recommendations")
    if not reports:
        st.info(
            "No daily report yet: the `report` job builds one at 03:00 UTC, "
            "`python -m cachemon costs report` builds it now."
        )
        return
    r = reports[0].report
    st.caption(
        f"From the report of {r.day.isoformat()} (generated {iso(r.generated_at)}, "
        f"health {r.health})"
    )
    left, right = st.columns([1, 2])
    if r.entries:
        classes = pd.DataFrame([(str(c), n) for c, n in r.classes], columns=["class", "keys"])
        left.plotly_chart(
            px.pie(
                classes,
                names="class",
                values="keys",
                title="Key classes",
                color="class",
                color_discrete_map={str(c): colour for c, colour in CLASS_COLOURS.items()},
            ),
            width="stretch",
        )
    with right:
        if not r.recommendations:
            st.success("No recommendation: nothing to change at current traffic.")
        for rec in r.recommendations:
            with st.container(border=True):
                st.markdown(f"**{rec.title}** — saves {common.fmt(rec.saving_per_day, 'usd')}/day")
                # Plain text: evidence names cache keys, which come from the internet.
                st.text("Action: " + rec.action)
                for line in rec.evidence:
                    st.text(line)
    st.subheader("Daily reports")
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "day": x.day,
                    "basis": x.report.basis.short(None) if x.report.basis else "1d measured",
                    "list USD": x.report.list_total,
                    "billed USD": x.report.billed_total,
                    "saving USD/day": x.report.saving_per_day,
                    "recommendations": len(x.report.recommendations),
                    "emailed": x.sent,
                    "generated": iso(x.created_at),
                }
                for x in reports
            ]
        ),
        hide_index=True,
        width="stretch",
    )


page()
