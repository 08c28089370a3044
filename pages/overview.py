"""Overview: live KPIs of the selected period against the previous one."""

import pandas as pd
import plotly.express as px
import streamlit as st

from cachemon.alerts import health
from cachemon.clock import Period, Window, iso
from cachemon.costs import usage as costs
from cachemon.errors import CachemonError
from cachemon.metrics import window as metrics
from pages.shared import common

st.header("Overview")
TIER_ORDER = ("edge", "kv", "r2", "api")
ROWS = (("combined", "edge", "kv", "r2", "cost"), ("p50", "p95", "p99", "requests", "error_rate"))
LABELS = metrics.KPI_LABELS | {"cost": "Estimated cost USD/day"}


def _load(con, cfg, period: str, endpoint, at):
    """The period's metrics, the previous period's (None without data),
    health, and both periods' list cost per day (store-wide)."""
    current = metrics.compute(
        con, Window.ending(at, Period.parse(period).length), period, endpoint, top=20, latest=True
    )
    try:
        previous = metrics.compute(con, current.window.previous(), period, endpoint, top=0)
    except CachemonError:
        previous = None
    daily = [
        costs.price(costs.per_day(costs.measure(con, w, cfg)), cfg.pricing).list_total
        for w in (current.window, current.window.previous())
    ]
    return current, previous, health.health(con, current.at, cfg.alerts.evaluate_every), daily


@st.fragment(run_every=common.REFRESH)
def overview():
    period, endpoint, at = common.period(), common.endpoint(), common.now()
    try:
        current, previous, state, daily = common.cached(_load, period.value, endpoint, at)
    except CachemonError as exc:
        common.show_error(exc)
        return
    common.health_banner(state)
    st.page_link(
        "pages/alerts.py", label="Alerts, history and silences", icon=":material/notifications:"
    )
    common.stale_banner(current.data_until, current.at)
    st.caption(
        f"Window {current.window} (UTC) · data until {iso(current.data_until)} · "
        f"compared with the previous {period.value} · refreshes every {common.REFRESH.total_seconds():g} s"
    )
    values = metrics.kpis(current) | {"cost": daily[0]}
    deltas = metrics.kpi_deltas(current, previous) | {
        "cost": daily[0] - daily[1] if previous else None
    }
    for row in ROWS:
        for col, key in zip(st.columns(len(row)), row):
            kind = {"requests": "count", "cost": "usd"}.get(key, "num")
            col.metric(
                LABELS[key],
                common.fmt(values[key], kind),
                common.fmt(deltas[key], kind, signed=True),
                delta_color="inverse"
                if key in metrics.KPI_LOWER_IS_BETTER | {"cost"}
                else "normal",
            )
    left, right = st.columns([1, 2])
    shares = pd.DataFrame(
        {"tier": TIER_ORDER, "share %": [current.volume.share(t) for t in TIER_ORDER]}
    )
    fig = px.bar(shares, x="tier", y="share %", title="Requests served by tier")
    left.plotly_chart(fig, width="stretch")
    right.subheader("Top keys")
    right.dataframe(
        pd.DataFrame(
            [
                {
                    "key": k.key,
                    "endpoint": k.endpoint,
                    "requests": k.requests,
                    "hit rate %": round(k.hit_rate, 2),
                    "tier": k.tier,
                }
                for k in current.top_keys
            ]
        ),
        hide_index=True,
        width="stretch",
    )
    right.page_link(
        "pages/topkeys.py", label="All keys, filters and drill-down", icon=":material/key:"
    )


overview()
