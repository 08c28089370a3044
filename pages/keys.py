"""Top keys: a sortable, filterable key table of the shared range, a per-key
drill-down at the range's resolution, CSV.

The range picks the keys and their counts; a key's class (hot/warm/cold) is
over the class window ([costs] class_window) ending with the range, as the
costs report classes keys: within one hour no key's count reaches the cold
threshold, so a class over the range would say little. Keys come from the
internet: they are shown in tables and as code text, never as Markdown.
"""

from datetime import datetime, timedelta

import duckdb
import plotly.graph_objects as go
import streamlit as st

from cachemon import csvtext, timerange
from cachemon.clock import DAY, HOUR, MINUTE, Window, format_duration, iso
from cachemon.costs import optimize
from cachemon.errors import CachemonError
from cachemon.events import TIERS
from cachemon.settings import Config
from cachemon.store import queries, topkeys
from cachemon.store.queries import data_end
from pages.shared import charts, common
from pages.shared import timerange as page_range

CLASSES = ("all", *queries.CLASSES)
TIER_NAMES = {"edge": "edge", "kv": "KV", "r2": "R2", "api": "origin"}  # as the table's headers
# Every column, as the CSV has them (headers with units).
COLUMNS = {
    "key": "key",
    "endpoint": "endpoint",
    "requests": "requests",
    "per_day": "requests/day over the range",
    "hit_rate": "hit rate %",
    "edge_share": "edge %",
    "kv_share": "KV %",
    "r2_share": "R2 %",
    "api_share": "origin %",
    "tier": "mostly served by",
    "class": "class",
    "age_days": "age (days)",
    "errors": "errors",
}
# The table on the page: fewer columns, widths (px) that fit 1440 px beside
# the sidebar; the key truncates (whole in its tooltip and the drill-down).
SHOWN = {
    "key": st.column_config.TextColumn(
        width=260, help="the cache key; the whole key is in the drill-down below"
    ),
    "endpoint": st.column_config.TextColumn(width=70),
    "requests": st.column_config.NumberColumn(width=85, format="%,.0f"),
    "hit rate %": st.column_config.NumberColumn(
        width=70, format="%.2f", help="requests served by a cache tier (not the origin)"
    ),
    "edge %": st.column_config.NumberColumn(width=60, format="%.1f"),
    "KV %": st.column_config.NumberColumn(width=55, format="%.1f"),
    "R2 %": st.column_config.NumberColumn(width=55, format="%.1f"),
    "origin %": st.column_config.NumberColumn(width=65, format="%.1f"),
    "class": st.column_config.TextColumn(width=60),
    "age (days)": st.column_config.NumberColumn(
        width=75, format="%,.1f", help="since the key's first request in the store"
    ),
    "errors": st.column_config.NumberColumn(width=65, format="%,.0f"),
}


def _latest(
    con: duckdb.DuckDBPyConnection, window: Window, at: datetime, slide: bool = True
) -> Window:
    """The range's window, or (a preset's, `slide`) one as long ending where
    the data ends when it lags, as the Overview's report and `cachemon
    metrics` do. A custom from–to is counted as asked."""
    end = data_end(con, at)
    return window if not slide or end >= window.end else Window.ending(end, window.length)


def _keys(
    con: duckdb.DuckDBPyConnection,
    cfg: Config,
    window: Window,
    endpoint: str | None,
    klass: str | None,
    contains: str | None,
    limit: int,
    at: datetime,
    slide: bool = True,
) -> tuple[optimize.KeyPage, Window, Window, Window]:
    """The key page, the window counted, the span really counted, and the
    class window asked for."""
    window = _latest(con, window, at, slide)
    classes = Window(window.end - cfg.costs.class_window, window.end)
    f = optimize.KeyFilter(endpoint, klass, contains, limit)
    kp = optimize.key_page(con, window, at, f, classes=classes)
    # The page's counts are of `covered`: say so when that is wider than asked.
    return kp, window, topkeys.covered(con, window), classes


def _series(
    con: duckdb.DuckDBPyConnection,
    cfg: Config,
    key: str,
    endpoint: str,
    key_id: int,
    window: Window,
    step: timedelta,
) -> topkeys.KeySeries:
    # The table's key id: looking a key up by its text scans every key.
    return topkeys.key_series(con, key, endpoint, window, step, key_id)


def step_name(step: timedelta) -> str:
    """A bucket length in words: "minute", "5 minutes", "hour", "6 hours"."""
    for unit, name in ((DAY, "day"), (HOUR, "hour"), (MINUTE, "minute")):
        if step % unit == timedelta(0):
            n = step // unit
            return name if n == 1 else f"{n} {name}s"
    return format_duration(step)


def _span(w: Window) -> str:
    return f"{timerange.stamp(w.start)} – {timerange.stamp(w.end)}"


def page():
    cfg = common.page_start("Top keys")
    at = common.now()
    asked = page_range.window(at)
    c1, c2, c3 = st.columns([1, 2, 1])
    klass = c1.selectbox(
        "Class",
        CLASSES,
        help=(
            "By requests per day over the class window ending with the range "
            f"([costs] class_window, {format_duration(cfg.costs.class_window)}), not the range: "
            "hot > 100 a day, cold < 10 in 30 days, warm in between"
        ),
        key="key_class",
    )
    contains = c2.text_input(
        "Key contains", help="plain text, case-insensitive", key="key_contains"
    )
    limit = c3.number_input(
        "Rows", min_value=10, max_value=5000, value=500, step=100, key="key_rows"
    )
    try:
        kp, window, counted, classes = common.cached(
            _keys,
            asked,
            common.endpoint(),
            None if klass == "all" else klass,
            contains.strip() or None,
            int(limit),
            at,
            not page_range.current().custom,
        )
    except CachemonError as exc:
        common.show_error(exc)
        return
    df = kp.rows
    if counted != window:
        st.warning(
            f"Not exact: keys are counted over {_span(counted)}, wider than the range "
            f"{_span(window)}: per-key minutes (or hours) there are compacted by retention "
            "([retention] minute_days, hour_days)",
            icon=":material/warning:",
        )
    st.caption(
        f"{_span(kp.window)} · {kp.matching:,} keys match, the busiest {len(df):,} shown · "
        "click a column to sort"
    )
    st.caption(
        f"Class: requests per day over the class window, the "
        f"{format_duration(classes.length)} to {timerange.stamp(classes.end)} "
        f"([costs] class_window), here {kp.class_days:,.2f} day(s) of data "
        f"from {timerange.stamp(kp.class_window.start)}"
    )
    if df.empty:
        st.info("No key matches these filters in this range.")
        return
    table = df[list(COLUMNS)].rename(columns=COLUMNS)
    st.dataframe(
        table[list(SHOWN)],
        hide_index=True,
        width="stretch",
        height=420,
        column_config=SHOWN,
    )
    st.download_button(
        "Download CSV",
        csvtext.csv_bytes(table),
        file_name=f"cachemon-keys-{iso(window.end)}.csv",
        mime="text/csv",
        icon=":material/download:",
        help="every column, rounded: counts whole, rates 2 decimals",
    )
    _drill_down(df, window, at)


def _drill_down(df, window: Window, at: datetime) -> None:
    st.subheader("Drill-down")
    ids = {(k, e): int(i) for k, e, i in zip(df["key"], df["endpoint"], df["key_id"])}
    choices = list(ids)[:200]
    key, endpoint = st.selectbox(
        "Key", choices, format_func=lambda c: f"{c[0]} ({c[1]})", key="key_pick"
    )
    st.code(key, language=None, wrap_lines=True)  # the whole key, as text
    step = timerange.step_for(window)
    try:
        series = common.cached(_series, key, endpoint, ids[key, endpoint], window, step)
    except CachemonError as exc:
        common.show_error(exc)
        return
    for resolution, span in series.coarse:
        st.info(
            f"{_span(span)}: this key's counts are stored per {step_name(resolution)} only "
            "(compacted by retention), drawn as whole "
            f"{step_name(resolution)}s at their average per {step_name(step)}, not finer",
            icon=":material/info:",
        )
    rows = series.rows
    if rows.empty:
        st.info("This key has no requests in the range.")
        return
    # A bucket longer than the step (stored coarser) shows its average per step.
    per_step = step / rows["width"]
    mid = rows["t"] + rows["width"] / 2
    fig = go.Figure()
    for tier in TIERS:
        fig.add_bar(
            x=mid,
            y=rows[tier] * per_step,
            width=rows["width"].dt.total_seconds() * 1000,
            name=TIER_NAMES[tier],
            marker_color=charts.TIER_COLOURS[tier],
            hovertemplate="%{y:,.2f}",
        )
    fig.update_layout(barmode="stack", title=f"Requests per {step_name(step)} by tier")
    charts.time_axes(fig, window, at, f"requests per {step_name(step)}")
    page_range.zoomable(fig, key="key_drill")


page()
