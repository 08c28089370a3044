"""The dashboard's one time range and endpoint, kept in the session and in
the URL's query parameters (`cachemon.timerange` holds the rules).

app.py calls `sync` on every run before drawing anything: a URL whose
parameters differ from the ones the dashboard last wrote (a bookmark, a link
from an alert email, the back button) sets the range; otherwise the session's
range is written to the URL, so switching pages (which clears the query
string) keeps it. `sidebar` draws the controls; pages read `current`,
`window` and `endpoint`, and draw time charts with `zoomable`, where dragging
a box over the chart sets a custom range.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from cachemon import timerange
from cachemon.clock import MINUTE, Window, floor_to
from cachemon.errors import InputError
from cachemon.timerange import TimeRange
from pages.shared.text import md

_RANGE = "time_range"  # the TimeRange in force
_URL = "time_range_url"  # the query parameters the dashboard last wrote
_PROBLEMS = "time_range_problems"  # why a link's parameters (or a custom range) were refused
_ZOOMS = "time_range_zooms"  # bumps chart keys so a used box selection is not reapplied
_CHOICE = "range_choice"  # the preset control's widget key
_OPEN = "range_custom_open"  # "custom" chosen: the from–to form stays open
ENDPOINT_KEY = "endpoint"
CUSTOM = "custom"


def current() -> TimeRange:
    """The range in force (the default preset before any choice)."""
    return st.session_state.get(_RANGE) or TimeRange.of(timerange.DEFAULT_PRESET)


def window(now: datetime) -> Window:
    """The current range as a window ending no later than `now`."""
    try:
        return current().window(now)
    except InputError as exc:  # a custom range that has become the future: back to the default
        _problem(f"{exc}; showing the last {timerange.DEFAULT_PRESET}")
        _set(TimeRange.of(timerange.DEFAULT_PRESET))
        return current().window(now)


def endpoint() -> str | None:
    """The endpoint chosen (None: all)."""
    e = st.session_state.get(ENDPOINT_KEY, "all")
    return None if e in (None, "all") else e


def _problem(text: str) -> None:
    """Say it in the sidebar on this run (a refused link or range is never silent)."""
    st.session_state.setdefault(_PROBLEMS, []).append(text)


def _set(tr: TimeRange) -> None:
    st.session_state[_RANGE] = tr


def _params() -> dict[str, str]:
    e = endpoint()
    return current().query() | ({timerange.ENDPOINT: e} if e else {})


def sync(endpoints: list[str], now: datetime) -> None:
    """Adopt a new URL's range and endpoint, else write the session's to the
    URL. A custom range reaching past `now` is cut there (said), so the URL,
    the label and every page name the window really shown."""
    asked = {
        k: st.query_params[k]
        for k in (timerange.RANGE, timerange.FROM, timerange.TO, timerange.ENDPOINT)
        if k in st.query_params
    }
    if asked and asked != st.session_state.get(_URL):
        st.session_state[_OPEN] = False
        try:
            tr = timerange.parse_query(asked)
            if tr.custom and timerange.RANGE in asked:
                _problem("The link names both a preset range and from–to: from–to is used")
            if tr.custom and tr.end > floor_to(now, MINUTE) > tr.start:
                _problem(f"The link's range ends after now: cut at {timerange.stamp(now)}")
                tr = TimeRange.between(tr.start, now)
            _set(tr)
        except InputError as exc:
            _problem(f"The link's time range was not used: {exc}")
        e = asked.get(timerange.ENDPOINT)
        if e is None or e in endpoints:
            st.session_state[ENDPOINT_KEY] = e or "all"
        else:
            _problem(f"The link's endpoint {e[:60]!r} is not configured; showing all endpoints")
            st.session_state[ENDPOINT_KEY] = "all"
    _write_url()


def _write_url() -> None:
    params = _params()
    if st.query_params.to_dict() != params:
        st.query_params.from_dict(params)
    st.session_state[_URL] = params


def _chosen() -> None:
    choice = st.session_state.get(_CHOICE)
    st.session_state[_OPEN] = choice == CUSTOM
    if choice and choice != CUSTOM:
        _set(TimeRange.of(choice))
    _write_url()


def _apply_custom(lo: datetime, hi: datetime) -> None:
    try:
        _set(TimeRange.between(lo, hi))
    except InputError as exc:
        _problem(str(exc))
    _write_url()


def sidebar(endpoints: list[str], now: datetime) -> None:
    """The range (presets, a custom from–to) and endpoint controls."""
    tr = current()
    st.session_state[_CHOICE] = CUSTOM if tr.custom or st.session_state.get(_OPEN) else tr.preset
    st.segmented_control(
        "Time range",
        [*timerange.PRESETS, CUSTOM],
        key=_CHOICE,
        on_change=_chosen,
        help="Every page's window, ending now; drag across a time chart to zoom. "
        "The range is in the URL: bookmark or share it.",
    )
    if st.session_state[_CHOICE] == CUSTOM:
        _custom_form(now)
    for problem in st.session_state.pop(_PROBLEMS, []):
        st.warning(md(problem))  # it quotes the URL's text: shown as typed, never as a link
    if ENDPOINT_KEY in st.session_state and st.session_state[ENDPOINT_KEY] not in [
        "all",
        *endpoints,
    ]:
        st.session_state[ENDPOINT_KEY] = "all"  # a config change removed it
    st.selectbox("Endpoint", ["all", *endpoints], key=ENDPOINT_KEY, on_change=_write_url)


def _custom_form(now: datetime) -> None:
    w = window(now)
    with st.form("custom_range", border=False):
        st.caption(f"Custom range (UTC) · now {timerange.stamp(now)}")
        c1, c2 = st.columns(2)
        d0 = c1.date_input("From", w.start.date())
        t0 = c2.time_input("at", w.start.time(), step=60)
        d1 = c1.date_input("To", w.end.date())
        t1 = c2.time_input("at ", w.end.time(), step=60)
        if st.form_submit_button("Apply"):
            # The sidebar draws before the page: this run's page already uses it.
            _apply_custom(_utc(d0, t0), _utc(d1, t1))


def _utc(d, t: time) -> datetime:
    return datetime.combine(d, t.replace(tzinfo=None), tzinfo=UTC)


def _box_range(selection) -> tuple[datetime, datetime] | None:
    """The x extent of a box selection on a time axis (None without one)."""
    try:
        boxes = selection["selection"]["box"]
    except (KeyError, TypeError):
        return None
    for box in boxes or ():
        xs = box.get("x") or ()
        if len(xs) == 2:
            lo, hi = sorted(pd.to_datetime(list(xs), utc=True))
            if hi - lo >= pd.Timedelta(MINUTE):
                return lo.to_pydatetime(), hi.to_pydatetime()
    return None


def zoomable(fig: go.Figure, key: str, container=st) -> None:
    """Draw a time chart on which dragging a box sets the page's range
    (Grafana's drag-to-zoom); double-click still resets Plotly's own view."""
    fig.update_layout(dragmode="select", selectdirection="h")
    gen = st.session_state.get(_ZOOMS, 0)
    event = container.plotly_chart(
        fig, key=f"{key}-{gen}", on_select="rerun", selection_mode="box", width="stretch"
    )
    picked = _box_range(event)
    if picked is None:
        return
    st.session_state[_ZOOMS] = gen + 1
    lo, hi = picked
    _apply_custom(floor_to(lo, MINUTE), floor_to(hi + timedelta(seconds=59), MINUTE))
    st.rerun(scope="app")
