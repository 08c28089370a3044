"""Overview: live KPIs of the selected period against the previous one."""

import pandas as pd
import plotly.express as px
import streamlit as st

from cachemon.clock import Period, iso
from cachemon.errors import CachemonError
from cachemon.events import TIERS
from cachemon.metrics import window as metrics_window
from cachemon.usecases import metrics_report
from pages.shared import common

COST = metrics_report.COST_KPI
ROWS = (("combined", "edge", "kv", "r2", COST), ("p50", "p95", "p99", "requests", "error_rate"))
LABELS = metrics_window.KPI_LABELS | {COST: "Estimated cost USD/day"}


def _load(con, cfg, period: str, endpoint, at):
    """The period's metrics report compared with the previous period (the
    same composition as `cachemon metrics` and GET /metrics, costs always)."""
    return metrics_report.build(
        con,
        cfg,
        Period.parse(period),
        at,
        endpoint,
        top=20,
        latest=True,
        costs=True,
        compare=True,
    )


@st.fragment(run_every=common.REFRESH)
def overview():
    common.page_start("Overview")
    period, endpoint, at = common.period(), common.endpoint(), common.now()
    try:
        report = common.cached(_load, period.value, endpoint, at)
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
        f"Window {current.window} (UTC) · data until {iso(current.data_until)} · "
        f"compared with the previous {period.value} · refreshes every {common.REFRESH.total_seconds():g} s"
    )
    values, deltas = report.kpis(), report.kpi_deltas()
    for row in ROWS:
        for col, key in zip(st.columns(len(row)), row):
            kind = {"requests": "count", COST: "usd"}.get(key, "num")
            col.metric(
                LABELS[key],
                common.fmt(values[key], kind),
                common.fmt(deltas[key], kind, signed=True),
                delta_color="inverse"
                if key in metrics_window.KPI_LOWER_IS_BETTER | {COST}
                else "normal",
            )
    left, right = st.columns([1, 2])
    shares = pd.DataFrame({"tier": TIERS, "share %": [current.volume.share(t) for t in TIERS]})
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
