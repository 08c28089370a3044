"""What every dashboard page shares: the sidebar's choices, cached reads,
the empty-store and stale-data states, and number formats.

Reads go through `cached`, which opens a read-only connection to the
published snapshot for one call and closes it (the job runner is never
blocked), and keeps the result for `TTL` seconds keyed on the call's
arguments, the current refresh tick (30 s) and the snapshot version, so a
page refreshed by several viewers reads the store once, and a publish (an
import, the runner's tick) shows on the next render, not a tick later. A
store the dashboard cannot read (newer schema, corrupt snapshot) is one
StoreError, shown as a message by every page.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb
import streamlit as st
from streamlit.runtime.pages_manager import PagesManager

from cachemon.alerts.health import Health, Issue
from cachemon.alerts.rules import significant_decimals
from cachemon.clock import floor_to, utcnow
from cachemon.costs.basis import Price
from cachemon.errors import CachemonError, EmptyStoreError, StoreError
from cachemon.metrics import window as metrics_window
from cachemon.runner.selfcheck import RunnerCheck, rough_age
from cachemon.settings import Config
from cachemon.severity import HealthStatus, Severity
from cachemon.store import db as store_db
from cachemon.store import snapshots
from cachemon.timerange import TimeRange, around, link, stamp
from cachemon.usecases import metrics_report
from pages.shared import filling, timerange

# Live pages refresh every REFRESH (CACHEMON_REFRESH_SECONDS, default 30);
# reads within one refresh tick share a cache entry.
REFRESH_DEFAULT_S = 30.0
REFRESH_RANGE_S = (5.0, 86_400.0)  # faster hammers the store; slower than a day is not live


def parse_refresh(text: str | None) -> tuple[timedelta, str]:
    """The refresh interval from CACHEMON_REFRESH_SECONDS, and a warning
    ('' when none): a value that is not a number of seconds in range (abc,
    nan, 1e999, -1) falls back to the default, visibly, instead of
    breaking every page."""
    if text is None or not text.strip():
        return timedelta(seconds=REFRESH_DEFAULT_S), ""
    lo, hi = REFRESH_RANGE_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not lo <= seconds <= hi:  # also false for nan
        return (
            timedelta(seconds=REFRESH_DEFAULT_S),
            f"CACHEMON_REFRESH_SECONDS = {text.strip()[:40]!r} is not a number of seconds from {lo:g} to {hi:g}; "
            f"refreshing every {REFRESH_DEFAULT_S:g} s instead",
        )
    return timedelta(seconds=seconds), ""


REFRESH, REFRESH_WARNING = parse_refresh(os.environ.get("CACHEMON_REFRESH_SECONDS"))
TICK = REFRESH
TTL = max(60, int(2 * REFRESH.total_seconds()))
HEALTH_BANNER = {
    HealthStatus.HEALTHY: st.success,
    HealthStatus.DEGRADED: st.warning,
    HealthStatus.CRITICAL: st.error,
}


HOW_TO_FILL = """
**The store is empty.** Fill it with one of:

- `python -m cachemon demo` — a week of simulated traffic (no credentials);
- `python -m cachemon import FILE...` — NDJSON, CSV or Parquet event files;
- `python -m cachemon pull` — your Workers Analytics Engine dataset
  (`CF_ACCOUNT_ID`, `CF_API_TOKEN`);

then keep it current with `python -m jobs`. This page refreshes on its own.
"""


def setting_warnings() -> None:
    """Show each dashboard setting that was refused (and its fallback)."""
    if REFRESH_WARNING:
        st.warning(REFRESH_WARNING, icon=":material/warning:")


def config() -> Config:
    """The config app.py loaded for this run. A page run without it did not
    come through app.py's `st.navigation` (see `_leave_legacy_routing`)."""
    if "config" not in st.session_state:
        _leave_legacy_routing()
    return st.session_state["config"]


def page_start(title: str) -> Config:
    """Every page's first call, before any output: the config (or, on a run
    that did not come through app.py, a rerun that does; nothing is drawn
    first), then the page's heading."""
    cfg = config()
    st.header(title)
    return cfg


def _leave_legacy_routing() -> None:
    """Rerun through app.py. Streamlit treats a `pages/` folder beside the
    entry script as its legacy multipage app until `st.navigation` first runs
    in the process: the first visit of a deep link such as /costs after a
    start runs the bare page script, without app.py's login, config and
    sidebar. Every page calls `page_start` (so `config()`) before drawing
    anything, so that run draws nothing and ends here; the rerun runs app.py,
    which routes the same URL. Setting the flag is a private Streamlit API
    (docs/dashboard.md says why the folder keeps its name)."""
    PagesManager.uses_pages_directory = False  # what st.navigation itself sets
    st.rerun()


def endpoint() -> str | None:
    """The endpoint chosen in the sidebar (None: all)."""
    return timerange.endpoint()


def now() -> datetime:
    """The current refresh tick: every read of one tick shares a cache entry."""
    return floor_to(utcnow(), TICK)


@st.cache_data(ttl=TTL, show_spinner=False, max_entries=200)
def _cached(fn_name: str, db: str, version: str, args: tuple, _fn: Callable, _cfg: Config):
    with store_db.reader(db) as con:
        try:
            return _fn(con, _cfg, *args)
        except duckdb.Error as exc:
            # A snapshot that opens but fails a query (a damaged block): one
            # message on the page, not a traceback.
            raise StoreError(
                f"reading the store failed: {str(exc).strip().splitlines()[0]}"
            ) from None


def cached(fn: Callable, *args):
    """`fn(con, cfg, *args)` on a fresh read-only connection, cached.
    `args` must be hashable values (they form the cache key, with the
    snapshot version, so a new publish is read at once)."""
    cfg = config()
    version = snapshots.snapshot_version(cfg.store.path)
    return _cached(
        f"{fn.__code__.co_filename}:{fn.__qualname__}", cfg.store.path, version, args, fn, cfg
    )


def show_error(exc: CachemonError) -> None:
    """An empty store gets instructions; any other error its message."""
    if isinstance(exc, EmptyStoreError):
        if f := filling.filling(config()):  # the first demo is still building the store
            filling.show_filling(f, config())
            return
        st.info(HOW_TO_FILL)
        st.caption(str(exc))
    else:
        st.error(str(exc))


def stale_banner(data_until: datetime | None, at: datetime) -> bool:
    """Warn when the newest data is older than `[metrics] stale_after`."""
    if data_until is None:
        return False
    age = at - data_until
    if age > config().metrics.stale_after:
        st.warning(
            f"Stale data: the newest data is {rough_age(age)} old (until {stamp(data_until)}); "
            "these are the last good numbers. Is the job runner (`python -m jobs`) running?"
        )
        return True
    return False


def runner_status(check: RunnerCheck) -> None:
    """The sidebar's job-runner line: when ingest last succeeded, and every
    job whose last run failed (a stalled runner shows before the data goes
    stale)."""
    if check.last_ingest_ok is None:
        st.warning(
            "Runner: no successful ingest yet. Is the job runner (`python -m jobs`) running?"
        )
    elif check.ingest_from_future:
        st.warning(
            f"Runner: the last ingest is dated in the future ({stamp(check.last_ingest_ok)}), written by a "
            "clock ahead of real time; it does not count. Is the job runner (`python -m jobs`) running?"
        )
    elif check.ingest_stalled:
        st.warning(
            f"Runner: last ingest ok {rough_age(check.ingest_age)} ago ({stamp(check.last_ingest_ok)}), "
            "overdue. Is the job runner (`python -m jobs`) running?"
        )
    else:
        st.caption(f"Runner: last ingest ok {rough_age(check.ingest_age)} ago")
    if check.failing:
        st.error(
            "Failing jobs: "
            + ", ".join(f"{f.job} (failed {stamp(f.failed_at)})" for f in check.failing)
            + " · see Jobs"
        )


def issue_line(i: Issue) -> str:
    """One health issue as a markdown list item: a firing alert's value when
    it fired and its value now, each labelled with the rule's window (the
    page's KPIs may cover another window), and a link to the Overview in the
    hours around when it began."""
    chart = link("", around(i.since), i.endpoint or None)
    return f"- **{i.severity}** since {stamp(i.since)}: {i.text} · [charts then]({chart})"


def health_text(h: Health) -> str:
    """The health banner's text: the status and each issue above info."""
    serious = [i for i in h.issues if i.severity != Severity.INFO]
    lines = "".join("\n" + issue_line(i) for i in serious)
    return f"Health: **{h.status}**" + (lines or " · no active alerts")


def health_banner(h: Health) -> None:
    """The health block as a banner coloured by its status, with each issue
    above info."""
    HEALTH_BANNER[h.status](health_text(h))


def fmt(value: float | None, kind: str = "num", signed: bool = False) -> str | None:
    """Display format: counts with separators, rates and ms with 2
    decimals (3 significant digits below 1), USD with cents (or more digits
    for small amounts)."""
    if value is None:
        return None
    if not math.isfinite(value):
        return "n/a"  # an absurd value from an older store: never "nan" or "inf"
    sign = "+" if signed else ""
    if kind == "count":
        return f"{value:{sign},.0f}"
    if kind == "usd":
        lead = "-" if value < 0 else sign
        return (
            f"{lead}${abs(value):,.2f}"
            if abs(value) >= 1 or value == 0
            else f"{lead}${abs(value):.4f}"
        )
    # Two decimals, or three significant digits below 1 (a 4 µs latency is
    # 0.00412 ms, not 0.00).
    decimals = max(2, significant_decimals(value, 3)) if abs(value) < 1 else 2
    return f"{value:{sign}.{decimals}f}"


NA = "n/a"  # a figure that cannot be given (never "None", "nan" or "inf")


@dataclass(frozen=True)
class Kpi:
    """One KPI tile as the Overview draws it: label, value and change as text,
    and how its change is coloured (`st.metric`'s delta_color: "normal" when
    a rise is good, "inverse" when it is bad, "off" when it is neither or
    the change is n/a)."""

    key: str
    label: str
    value: str | None
    delta: str | None
    lower_is_better: bool
    delta_color: str = "normal"


# KPIs whose change is neither good nor bad: more traffic, a larger share
# served by R2 (better than the origin, worse than the edge and KV).
KPI_NEUTRAL = {"requests", "r2"}


KPI_ROWS = (
    ("combined", "edge", "kv", "r2", metrics_report.COST_KPI),
    ("p50", "p95", "p99", "requests", "error_rate"),
)


def overview_report(con, cfg: Config, tr: TimeRange, endpoint: str | None, at: datetime):
    """The Overview's metrics report: the range's window at `at` compared
    with the previous one of the same length (the same composition as
    `cachemon metrics` and GET /metrics, costs always, the last good numbers
    when the data lags)."""
    return metrics_report.build_window(
        con,
        cfg,
        tr.window(at),
        tr.label,
        at,
        endpoint,
        top=20,
        latest=not tr.custom,  # a preset slides back to the data's end; a from–to is as asked
        costs=True,
        compare=True,
    )


def cost_kpi_label(report: metrics_report.MetricsReport) -> str:
    """The cost KPI names its basis (`cachemon.costs.basis`, the same words as
    the Costs page and the report): the window's usage as a rate per day, at list price."""
    if report.costs is None:
        return f"Cost USD/day (rate of the last {report.metrics.period}, list)"
    return f"Cost USD/day ({report.costs.daily.basis.short(Price.LIST)})"


def tile_colour(delta: str | None, lower_is_better: bool, neutral: bool = False) -> str:
    """`st.metric`'s delta_color for a change as shown: green when better,
    red when worse; grey ("off") for n/a, for a change that shows as zero
    (+0.00 is neither), and for a neutral figure."""
    unchanged = delta is not None and not any(c in "123456789" for c in delta)
    if delta is None or delta == NA or unchanged or neutral:
        return "off"
    return "inverse" if lower_is_better else "normal"


def kpi_tiles(report: metrics_report.MetricsReport) -> list[list[Kpi]]:
    """The Overview's KPI tiles of a metrics report, row by row: the page
    draws exactly these texts (a test compares them with every other surface)."""
    cost = metrics_report.COST_KPI
    labels = metrics_window.KPI_LABELS | {cost: cost_kpi_label(report)}
    values, deltas = report.kpis(), report.kpi_deltas()
    rows = []
    for row in KPI_ROWS:
        tiles = []
        for key in row:
            if key not in values:
                continue  # no costs block (an endpoint's report without costs)
            kind = {"requests": "count", cost: "usd"}.get(key, "num")
            lower = key in metrics_window.KPI_LOWER_IS_BETTER | {cost}
            delta = fmt(deltas[key], kind, signed=True)
            if delta is None and report.previous is not None:
                delta = NA  # compared, but the previous period has too little data
            tiles.append(
                Kpi(
                    key,
                    labels[key],
                    fmt(values[key], kind),
                    delta,
                    lower,
                    tile_colour(delta, lower, key in KPI_NEUTRAL),
                )
            )
        rows.append(tiles)
    return rows
