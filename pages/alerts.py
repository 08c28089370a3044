"""Alerts: health, active alerts, their timeline, notifications and silences."""

from datetime import datetime

import duckdb
import pandas as pd
import plotly.express as px
import streamlit as st

from cachemon.alerts import health
from cachemon.alerts import rules as alerts_rules
from cachemon.alerts import silences as alerts_silences
from cachemon.alerts.lifecycle import InstanceState, Silence, State
from cachemon.clock import iso, parse_duration
from cachemon.errors import CachemonError
from cachemon.settings import Config
from cachemon.store import db as store_db
from pages.shared import common


def _load(con: duckdb.DuckDBPyConnection, cfg: Config, now: datetime) -> health.AlertRecord:
    rules = alerts_rules.effective_rules(cfg.alerts)
    return health.record(con, now, cfg.alerts.evaluate_every, days=7, rules=rules)


@st.fragment(run_every=common.REFRESH)
def page():
    cfg, now = common.page_start("Alerts"), common.now()
    try:
        d = common.cached(_load, now)
    except CachemonError as exc:
        common.show_error(exc)
        return
    h = d.health
    last = iso(h.evaluated_at) if h.evaluated_at else "never"
    common.HEALTH_BANNER[h.status](f"Health: **{h.status}** · last evaluation {last}")
    for i in h.issues:
        st.markdown(common.issue_line(i))
    active = [s for s in d.states if s.state != State.OK]
    st.subheader(f"Rule instances not OK ({len(active)} of {len(d.states)})")
    st.dataframe(_states_frame(active), hide_index=True, width="stretch")
    with st.expander("All rule instances"):
        st.dataframe(_states_frame(d.states), hide_index=True, width="stretch")
    st.subheader("Active alerts, last 7 days (UTC)")
    _timeline(d.periods, now)
    with st.expander(f"State changes, last 7 days ({len(d.history)})"):
        st.dataframe(pd.DataFrame(list(d.history)), hide_index=True, width="stretch")
    st.subheader("Notifications")
    st.dataframe(pd.DataFrame(list(d.notifications)), hide_index=True, width="stretch")
    _silences(
        cfg,
        d.silences,
        sorted({s.type for s in d.states} | {s.rule for s in d.states}),
        now,
    )


def _states_frame(states: list[InstanceState] | tuple[InstanceState, ...]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "state": s.state,
                "severity": s.severity,
                "rule": s.rule,
                "type": s.type,
                "endpoint": s.endpoint or "all",
                "since": s.since,
                # The value of the last evaluation, over the rule's window ending then.
                "evaluated at": s.evaluated_at,
                "value at evaluation": s.value,
                "message": s.message,
            }
            for s in states
        ]
    )


def _timeline(periods: tuple[health.Period, ...], now: datetime) -> None:
    if not periods:
        st.info("No alert was active in the last 7 days.")
        return
    df = pd.DataFrame(
        [
            {
                "alert": p.type + (f" [{p.endpoint}]" if p.endpoint else ""),
                "severity": p.severity,
                "start": p.start,
                "end": p.end or now,
            }
            for p in periods
        ]
    )
    fig = px.timeline(
        df,
        x_start="start",
        x_end="end",
        y="alert",
        color="severity",
        color_discrete_map=common.SEVERITY_COLOURS,
    )
    fig.update_layout(
        xaxis_title="time (UTC)", yaxis_title=None, height=120 + 30 * df["alert"].nunique()
    )
    st.plotly_chart(fig, width="stretch")


def _silences(cfg: Config, active: tuple[Silence, ...], names: list[str], now: datetime) -> None:
    st.subheader("Silences")
    st.caption("A silence mutes notifications, not evaluation.")
    if "silenced" in st.session_state:
        st.success(st.session_state.pop("silenced"))
    if active:
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "id": s.id,
                        "matches": s.matcher,
                        "endpoint": s.endpoint or "all",
                        "until": s.ends_at,
                        "by": s.created_by,
                        "reason": s.reason,
                    }
                    for s in active
                ]
            ),
            hide_index=True,
            width="stretch",
        )
    with st.form("silence"):
        matcher = st.selectbox("Alert type or rule", names, key="silence_matcher")
        duration = st.text_input("For", "2h", key="silence_for")
        reason = st.text_input("Reason", key="silence_reason")
        if st.form_submit_button("Silence"):
            try:
                with store_db.writer(cfg.store.path, now, create=False) as con:
                    s = alerts_silences.add_silence(
                        con,
                        matcher,
                        parse_duration(duration, "For"),
                        reason,
                        now,
                        created_by="dashboard",
                    )
            except CachemonError as exc:
                st.error(str(exc))
            else:
                # Re-read at once so the list shows the new silence.
                st.cache_data.clear()
                st.session_state["silenced"] = (
                    f"Silence {s.id}: {s.matcher} muted until {iso(s.ends_at)}"
                )
                st.rerun()


page()
