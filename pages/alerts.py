"""Alerts: health, active alerts (each with its silence, a link to the Overview
at its time, and why a no-data anomaly rule waits) and silences as of now;
over the dashboard's time range (and endpoint), the timeline of active
alerts, their state changes and the notifications."""

import os
from datetime import datetime, timedelta

import duckdb
import pandas as pd
import plotly.express as px
import streamlit as st

from cachemon import timerange
from cachemon.alerts import health, messages
from cachemon.alerts import rules as alerts_rules
from cachemon.alerts import silences as alerts_silences
from cachemon.alerts.anomaly import WEEK
from cachemon.alerts.lifecycle import InstanceState, Silence, State
from cachemon.alerts.rules import Kind, Rule
from cachemon.clock import Window, parse_duration, utcnow
from cachemon.errors import CachemonError
from cachemon.notify.transports import Transports
from cachemon.runner.selfcheck import rough_age
from cachemon.settings import Config
from cachemon.severity import severity_rank
from cachemon.store import db as store_db
from cachemon.store.queries import data_span
from pages.shared import charts, common
from pages.shared import timerange as shared_range
from pages.shared.text import md

NONE = "—"
MATCHER = "silence_matcher"  # the silence form's rule selector (preselected, see _preselect)
NO_CHANNEL = "No notification channel is configured: alerts show here but nobody is notified."
# Markdown's punctuation (CommonMark lets any of it be backslash-escaped): a
# reason or a name is shown as typed, never as a link, an image or a badge.


def _load(
    con: duckdb.DuckDBPyConnection,
    cfg: Config,
    window: Window,
    endpoint: str | None,
    now: datetime,
):
    rules = alerts_rules.effective_rules(cfg.alerts)
    return (
        health.record_over(con, window, now, cfg.alerts.evaluate_every, rules, endpoint),
        data_span(con, now),
    )


def scope(window: Window, endpoint: str | None) -> str:
    """What the history below covers: the range's ends and the endpoint."""
    who = (
        f"endpoint {md(endpoint)}: its alerts and the store-wide ones"
        if endpoint
        else "every endpoint"
    )
    return f"{timerange.stamp(window.start)} – {timerange.stamp(window.end)} (UTC) · {who}"


@st.fragment(run_every=common.REFRESH)
def page():
    cfg, now = common.page_start("Alerts"), common.now()
    endpoint = shared_range.endpoint()
    window = shared_range.window(now)  # a custom range now in the future falls back here
    try:
        d, span = common.cached(_load, window, endpoint, now)
    except CachemonError as exc:
        common.show_error(exc)
        return
    h = d.health
    last = timerange.stamp(h.evaluated_at) if h.evaluated_at else "never"
    common.HEALTH_BANNER[h.status](f"Health: **{h.status}** · last evaluation {last}")
    for i in h.issues:
        st.markdown(common.issue_line(i))
    for message in ("unsilenced", "silenced"):
        if message in st.session_state:
            st.success(st.session_state.pop(message))
    if "unsilence_failed" in st.session_state:
        st.error(st.session_state.pop("unsilence_failed"))
    rules = {r.name: r for r in alerts_rules.effective_rules(cfg.alerts)}
    active = sorted(
        (s for s in d.states if s.state != State.OK),
        key=lambda s: (s.state != State.FIRING, severity_rank(s.severity), s.since, s.key),
    )
    st.subheader(f"Rule instances not OK ({len(active)} of {len(d.states)})")
    st.caption(
        f"Now ({timerange.stamp(now)}), whatever the time range, on every endpoint; "
        "so are the silences below."
    )
    if not active:
        st.success("Every rule instance is OK.")
    for s in active:
        _alert(cfg, s, d.silences, rules.get(s.rule), span, now)
    with st.expander("All rule instances"):
        st.dataframe(
            _states_frame(d.states),
            hide_index=True,
            width="stretch",
            column_config=STATE_COLUMNS,
        )
    st.subheader(f"Active alerts · {shared_range.current().label}")
    st.caption(f"{scope(window, endpoint)} · drag across the timeline to zoom")
    _timeline(d.periods, window, now)
    newest = f", the newest {health.LIMIT}" if "history" in d.cut else ""
    with st.expander(f"State changes in the range ({len(d.history)}{newest})"):
        st.dataframe(
            _history_frame(d.history), hide_index=True, width="stretch", column_config=HISTORY
        )
    _notifications(cfg, d.notifications, "notifications" in d.cut, endpoint)
    names = sorted({s.type for s in d.states} | {s.rule for s in d.states})
    # The form preselects the first firing alert's rule (the list's first).
    firing = [s.rule for s in active if s.state == State.FIRING]
    _silences(cfg, d.silences, names, firing[0] if firing else None)


def silence_badge(x: Silence) -> str:
    """The text of the badge a silenced alert carries."""
    by = f" by {x.created_by}" if x.created_by else ""
    return f"silenced until {timerange.stamp(x.ends_at)}{by}: {x.reason}"


def waiting_for_history(rule: Rule | None, s: InstanceState, span) -> str | None:
    """Why a no-data anomaly rule waits: it compares with the same time of
    earlier weeks, and the store holds less than `min_weeks` of them. None
    when it is not waiting for history (another rule, another reason)."""
    if rule is None or rule.kind != Kind.ANOMALY or s.state != State.NO_DATA:
        return None
    needed = rule.min_weeks * WEEK
    held = span[1] - span[0] if span else timedelta(0)
    if held >= needed:
        return None
    weeks = f"{rule.min_weeks} week{'s' if rule.min_weeks != 1 else ''}"
    days = held / timedelta(days=1)
    shown = f"{days:.0f} days" if days >= 10 else f"{days:.1f} days"
    since = f" {timerange.stamp(span[0] + needed)}" if span else " then"
    return (
        f"Waiting for history: needs {weeks} of history, has {shown}. An anomaly rule "
        f"compares with the same time in earlier weeks; it can start scoring around{since}, "
        "until then it reports no data."
    )


def _alert(
    cfg: Config,
    s: InstanceState,
    silences: tuple[Silence, ...],
    rule: Rule | None,
    span,
    now: datetime,
) -> None:
    """One active rule instance: what and since when, its silence (with an
    Unsilence button) or a Silence button, and a link to the Overview then."""
    since = s.firing_since or s.since
    where = f" · {md(s.endpoint)}" if s.endpoint else " · all traffic"
    overview = messages.chart_link("", s)  # the alert email's link, relative
    muted = [x for x in silences if x.mutes(s, now)]
    with st.container(border=True):
        text, action = st.columns([5, 1], vertical_alignment="center")
        lines = [
            f"**{md(s.severity)}** · **{md(s.rule)}**{where} · {md(s.state)} since "
            f"{timerange.stamp(since)} ({rough_age(now - since)}) · "
            f"[Overview at this time]({overview})",
            md(s.message),
        ]
        # Highlighted text rather than a badge: a badge does not wrap, and cuts the reason at 390 px.
        lines += [
            f":orange-background[:material/notifications_off: {md(silence_badge(x))}]"
            for x in muted
        ]
        text.markdown("  \n".join(lines))
        waiting = waiting_for_history(rule, s, span)
        if waiting:
            text.caption(waiting)
        key = f"{s.rule}_{s.endpoint}"
        for x in muted:
            action.button(
                "Unsilence",
                key=f"unsilence_{x.id}_{key}",
                on_click=_unsilence,
                args=(cfg, x),
                help=f"End silence {x.id} now (it stays on record)",
            )
        if not muted:
            action.button(
                "Silence",
                key=f"silence_{key}",
                on_click=_preselect,
                args=(s.rule,),
                help="Fill the silence form below with this rule",
            )


def _preselect(rule: str) -> None:
    st.session_state[MATCHER] = rule


def _unsilence(cfg: Config, x: Silence) -> None:
    at = utcnow()
    try:
        with store_db.writer(cfg.store.path, at, create=False) as con:
            alerts_silences.expire_silence(con, x.id, at)
    except CachemonError as exc:
        st.session_state["unsilence_failed"] = f"Silence {x.id} was not ended: {exc}"
        return
    st.cache_data.clear()  # re-read at once: the alert shows unsilenced
    st.session_state["unsilenced"] = (
        f"Silence {x.id} ended at {timerange.stamp(at)}: {x.matcher} notifies again"
    )


def _cell(value) -> str:
    """A table cell: a time in the one format, a number formatted, never None."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return NONE
    if isinstance(value, datetime):
        return timerange.stamp(value)
    if isinstance(value, float):
        return common.fmt(value) or NONE
    return str(value)


STATE_COLUMNS = {
    "message": st.column_config.TextColumn(width="large"),
    "since": st.column_config.TextColumn("since (UTC)"),
    "evaluated at": st.column_config.TextColumn("evaluated at (UTC)"),
}


def _states_frame(states: list[InstanceState] | tuple[InstanceState, ...]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "state": s.state,
                "severity": s.severity,
                "rule": s.rule,
                "type": s.type,
                "endpoint": s.endpoint or "all",
                "since": _cell(s.since),
                # The value of the last evaluation, over the rule's window ending then.
                "evaluated at": _cell(s.evaluated_at),
                "value at evaluation": _cell(s.value),
                "message": s.message,
            }
            for s in states
        ],
        columns=["state", "severity", "rule", "type", "endpoint", "since", "evaluated at"]
        + ["value at evaluation", "message"],
    )


HISTORY = {
    "at": st.column_config.TextColumn("at (UTC)"),
    "message": st.column_config.TextColumn(width="large"),
    "overview": st.column_config.LinkColumn("overview", display_text="at this time"),
}


def _history_frame(history: tuple[dict, ...]) -> pd.DataFrame:
    """State changes, newest first: one time format, numbers formatted, a
    link to the Overview around each change."""
    return pd.DataFrame(
        [
            {
                "at": _cell(r["at"]),
                "rule": r["rule"],
                "endpoint": r["endpoint"] or "all",
                "severity": r["severity"],
                "from": r["from_state"],
                "to": r["to_state"],
                "value": _cell(r["value"]),
                "threshold": _cell(r["threshold"]),
                "message": r["message"],
                "overview": timerange.link("", timerange.around(r["at"]), r["endpoint"] or None),
            }
            for r in history
        ],
        columns=["at", "rule", "endpoint", "severity", "from", "to", "value", "threshold"]
        + ["message", "overview"],
    )


PERIODS = {
    "from": st.column_config.TextColumn("from (UTC)"),
    "to": st.column_config.TextColumn("to (UTC)"),
    "overview": st.column_config.LinkColumn("overview", display_text="at this time"),
}


def periods_frame(periods: tuple[health.Period, ...], now: datetime) -> pd.DataFrame:
    """Each stretch an alert was active: from, to (or "active"), how long,
    and a link to the Overview around its start."""
    return pd.DataFrame(
        [
            {
                "alert": p.type + (f" [{p.endpoint}]" if p.endpoint else ""),
                "severity": p.severity,
                "from": timerange.stamp(p.start),
                "to": timerange.stamp(p.end) if p.end else "active",
                "lasted": rough_age((p.end or now) - p.start) + ("" if p.end else " so far"),
                "overview": timerange.link("", timerange.around(p.start), p.endpoint or None),
            }
            for p in periods
        ],
        columns=["alert", "severity", "from", "to", "lasted", "overview"],
    )


def _timeline(periods: tuple[health.Period, ...], window: Window, now: datetime) -> None:
    if not periods:
        st.info("No alert was active in this range.")
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
        color_discrete_map=charts.SEVERITY_COLOURS,
    )
    charts.time_axes(fig, window, now, "alert")
    # One bar per alert: the hover names the bar under the pointer, not every bar at that time.
    fig.update_layout(hovermode="closest", height=140 + 30 * df["alert"].nunique())
    shared_range.zoomable(fig, "alerts-timeline")
    st.dataframe(
        periods_frame(periods, now), hide_index=True, width="stretch", column_config=PERIODS
    )


def _notifications(
    cfg: Config, notifications: tuple[dict, ...], cut: bool, endpoint: str | None
) -> None:
    st.subheader("Notifications")
    about = " about its alerts or store-wide ones" if endpoint else ""
    newest = f"; the newest {health.LIMIT}" if cut else ""
    st.caption(f"Created in the range{about}{newest}.")
    # The channels this process's environment can deliver to: the job runner,
    # which sends, is normally started with the same environment (run.sh).
    if not Transports.from_env(os.environ, strict=False).channels(cfg.notify):
        st.warning(NO_CHANNEL)
        st.caption(
            "Set SLACK_WEBHOOK_URL, DISCORD_WEBHOOK_URL, or SMTP_HOST or MAILCHANNELS_API_KEY "
            "with ALERT_EMAIL, in the job runner's environment (see docs/alerts.md)."
        )
    if not notifications:
        st.info("No notification in this range.")
        return
    st.dataframe(
        notifications_frame(notifications),
        hide_index=True,
        width="stretch",
        column_config=NOTIFICATIONS,
    )


NOTIFICATIONS = {
    "created": st.column_config.TextColumn("created (UTC)"),
    "subject": st.column_config.TextColumn(width="large"),
    "sent": st.column_config.TextColumn("sent (UTC)"),
    "last error": st.column_config.TextColumn(width="medium"),
}


def notifications_frame(notifications: tuple[dict, ...]) -> pd.DataFrame:
    """The outbox, newest first, in the columns that fit a screen: when,
    where, what, its delivery state (the next attempt while it retries)."""
    return pd.DataFrame(
        [
            {
                "created": _cell(n["created_at"]),
                "channel": n["channel"],
                "kind": n["kind"],
                "subject": n["subject"],
                "status": n["status"]
                + (
                    f" (next try {timerange.stamp(n['next_attempt_at'])})"
                    if n["status"] == "pending" and n["next_attempt_at"] is not None
                    else ""
                ),
                "attempts": n["attempts"],
                "sent": _cell(n["sent_at"]),
                "last error": _cell(n["last_error"]),
            }
            for n in notifications
        ],
        columns=["created", "channel", "kind", "subject", "status", "attempts", "sent"]
        + ["last error"],
    )


def _silences(
    cfg: Config, active: tuple[Silence, ...], names: list[str], first: str | None
) -> None:
    st.subheader("Silences")
    st.caption("A silence mutes notifications, not evaluation.")
    if active:
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "id": s.id,
                        "matches": s.matcher,
                        "endpoint": s.endpoint or "all",
                        "until": timerange.stamp(s.ends_at),
                        "by": s.created_by or NONE,
                        "reason": s.reason,
                    }
                    for s in active
                ]
            ),
            hide_index=True,
            width="stretch",
        )
    if st.session_state.get(MATCHER) not in names:
        st.session_state.pop(MATCHER, None)  # a rule gone from the config
    with st.form("silence"):
        # The first firing alert's rule, unless a Silence button (or the viewer) chose one.
        preset = (
            {"index": names.index(first)}
            if MATCHER not in st.session_state and first in names
            else {}
        )
        matcher = st.selectbox("Alert type or rule", names, key=MATCHER, **preset)
        duration = st.text_input("For", "2h", key="silence_for")
        reason = st.text_input("Reason", key="silence_reason")
        if st.form_submit_button("Silence", key="silence_submit"):
            now = common.now()
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
                    f"Silence {s.id}: {s.matcher} muted until {timerange.stamp(s.ends_at)}"
                )
                st.rerun()


page()
