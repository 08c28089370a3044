"""Overview: live KPIs of the selected period against the previous one."""

import pandas as pd
import plotly.express as px
import streamlit as st

from cachemon import health, metrics, store
from cachemon.clock import Period, Window, iso, utcnow
from cachemon.errors import CachemonError

st.header("Overview")


def _load(cfg, period: Period, endpoint):
    now = utcnow()
    window = Window.ending(now, period.length)
    with store.reader(cfg.store.path) as con:
        current = metrics.compute(con, window, period.value, endpoint, top=20, latest=True)
        try:
            previous = metrics.compute(con, current.window.previous(), period.value, endpoint, top=0)
        except CachemonError:
            previous = None
        state = health.health(con, current.at, cfg.alerts.evaluate_every)
    return current, previous, state


@st.fragment(run_every="30s")
def overview():
    cfg = st.session_state["config"]
    period = Period.parse(st.session_state.get("period", "1h"))
    endpoint = st.session_state.get("endpoint", "all")
    try:
        current, previous, state = _load(cfg, period, None if endpoint == "all" else endpoint)
    except CachemonError as exc:
        st.error(str(exc))
        return
    _health(state)
    values, deltas = metrics.kpis(current), metrics.kpi_deltas(current, previous)
    summary = metrics.to_json(current, cfg.metrics.stale_after)
    age = summary["dataAgeSeconds"]
    if summary["stale"]:
        st.warning(f"Stale data: the newest data is {age} s old; these are the last good numbers.")
    st.caption(f"Window {current.window} · data until {iso(current.data_until)} ({age} s old) · "
               f"refreshes every 30 s")
    for row in (("combined", "edge", "kv", "r2"), ("p50", "p95", "p99", "requests", "error_rate")):
        cols = st.columns(len(row))
        for col, key in zip(cols, row):
            col.metric(metrics.KPI_LABELS[key], _fmt(key, values[key]), _fmt(key, deltas[key], signed=True),
                       delta_color="inverse" if key in metrics.KPI_LOWER_IS_BETTER else "normal")
    left, right = st.columns([1, 2])
    shares = pd.DataFrame({"tier": ["edge", "kv", "r2", "api"],
                           "share %": [current.volume.share(t) for t in ("edge", "kv", "r2", "api")]})
    left.plotly_chart(px.bar(shares, x="tier", y="share %", title="Requests served by tier"),
                      width="stretch")
    right.subheader("Top keys")
    right.dataframe(
        pd.DataFrame([{"key": k.key, "endpoint": k.endpoint, "requests": k.requests,
                       "hit rate %": round(k.hit_rate, 2), "tier": k.tier} for k in current.top_keys]),
        hide_index=True, width="stretch",
    )


def _health(h):
    show = {"healthy": st.success, "degraded": st.warning, "critical": st.error}[h.status]
    serious = [i for i in h.issues if i.severity != "info"]
    lines = "".join(f"\n- **{i.severity}** since {iso(i.since)}: {i.message}" for i in serious)
    show(f"Health: **{h.status}**" + (lines or " · no active alerts"))
    st.page_link("pages/alerts.py", label="Alerts, history and silences", icon=":material/notifications:")


def _fmt(key, value, signed=False):
    if value is None:
        return None
    if key == "requests":
        return f"{value:+,.0f}" if signed else f"{value:,.0f}"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


overview()
