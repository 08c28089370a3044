"""Overview: live KPIs of the selected period against the previous one."""

import pandas as pd
import plotly.express as px
import streamlit as st

from cachemon.clock import iso
from cachemon.errors import CachemonError
from cachemon.events import TIERS
from pages.shared import common, timerange


def _load(con, cfg, tr, endpoint, at):
    """The range's metrics report compared with the previous period."""
    return common.overview_report(con, cfg, tr, endpoint, at)


@st.fragment(run_every=common.REFRESH)
def overview():
    common.page_start("Overview")
    tr, endpoint, at = timerange.current(), common.endpoint(), common.now()
    try:
        report = common.cached(_load, tr, endpoint, at)
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
        f"compared with the previous {tr.label} · refreshes every {common.REFRESH.total_seconds():g} s"
    )
    for row in common.kpi_tiles(report):
        for col, tile in zip(st.columns(len(row)), row):
            col.metric(
                tile.label,
                tile.value,
                tile.delta,
                delta_color="inverse" if tile.lower_is_better else "normal",
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
