"""Top keys: a sortable, filterable key table, a per-key drill-down, CSV."""

from datetime import datetime

import duckdb
import plotly.express as px
import streamlit as st

from cachemon.clock import Period, Window, iso
from cachemon.costs import optimize
from cachemon.errors import CachemonError
from cachemon.events import TIERS
from cachemon.settings import Config
from cachemon.store import export, queries, topkeys
from cachemon.store.queries import data_end
from pages.shared import common

CLASSES = ("all", *queries.CLASSES)
COLUMNS = {
    "key": "key",
    "endpoint": "endpoint",
    "requests": "requests",
    "per_day": "requests/day",
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


def _keys(
    con: duckdb.DuckDBPyConnection,
    cfg: Config,
    period: str,
    endpoint: str | None,
    klass: str | None,
    contains: str,
    limit: int,
    at: datetime,
):
    window = _window(con, period, at)
    f = optimize.KeyFilter(endpoint, klass, contains, limit)
    # The page's counts are of `covered`: say so when that is wider than asked.
    return optimize.key_page(con, window, at, f), window, topkeys.covered(con, window)


def _series(
    con: duckdb.DuckDBPyConnection, cfg: Config, key: str, endpoint: str, period: str, at: datetime
):
    return topkeys.key_series(con, key, endpoint, _window(con, period, at))


def _window(con: duckdb.DuckDBPyConnection, period: str, at: datetime) -> Window:
    """The period ending at `at`, or where the data ends when it lags (as
    the Overview and `cachemon metrics` do)."""
    return Window.ending(data_end(con, at), Period.parse(period).length)


def page():
    common.page_start("Top keys")
    period, at = common.period(), common.now()
    c1, c2, c3 = st.columns([1, 2, 1])
    klass = c1.selectbox(
        "Class", CLASSES, help="hot > 100 requests/day, cold < 10 requests/30 days", key="key_class"
    )
    contains = c2.text_input(
        "Key contains", help="plain text, case-insensitive", key="key_contains"
    )
    limit = c3.number_input(
        "Rows", min_value=10, max_value=5000, value=500, step=100, key="key_rows"
    )
    try:
        kp, window, counted = common.cached(
            _keys,
            period.value,
            common.endpoint(),
            None if klass == "all" else klass,
            contains.strip() or None,
            int(limit),
            at,
        )
    except CachemonError as exc:
        common.show_error(exc)
        return
    df = kp.rows
    if counted != window:
        st.warning(
            f"Not exact: keys are counted over {counted} (UTC), wider than the period "
            f"{window}: per-key minutes (or hours) there are compacted by retention "
            "([retention] minute_days, hour_days)",
            icon=":material/warning:",
        )
    st.caption(
        f"{kp.window} (UTC) · {kp.matching:,} keys match, the busiest {len(df):,} shown · "
        f"rates per day over {kp.days:.2f} day(s) · click a column to sort"
    )
    if df.empty:
        st.info("No key matches these filters in this period.")
        return
    table = df[list(COLUMNS)].rename(columns=COLUMNS)
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        height=420,
        column_config={
            "requests": st.column_config.NumberColumn(format="%.0f"),
            "age (days)": st.column_config.NumberColumn(format="%.1f"),
        },
    )
    st.download_button(
        "Download CSV",
        export.csv_bytes(table),
        file_name=f"cachemon-keys-{iso(at)}.csv",
        mime="text/csv",
        icon=":material/download:",
    )
    st.subheader("Drill-down")
    choices = list(zip(df["key"], df["endpoint"]))[:200]
    key, endpoint = st.selectbox(
        "Key", choices, format_func=lambda c: f"{c[0]} ({c[1]})", key="key_pick"
    )
    try:
        series = common.cached(_series, key, endpoint, period.value, at)
    except CachemonError as exc:
        common.show_error(exc)
        return
    long = series.melt(
        id_vars="hour",
        value_vars=list(TIERS),
        var_name="tier",
        value_name="requests",
    )
    fig = px.bar(long, x="hour", y="requests", color="tier", title="Requests per hour by tier")
    st.plotly_chart(fig.update_layout(**common.UTC_AXIS), width="stretch")


page()
