"""TTL what-if: predicted KV hit rate and cost per candidate TTL, next to
the observed point, the one TTL recommendation (the Costs page's) with the
what-if's check of it, and a draft experiment. The endpoint is the global
one (sidebar); for "all", a summary per endpoint."""

from datetime import datetime, timedelta

import duckdb
import numpy as np
import pandas as pd
import streamlit as st

from cachemon.clock import DAY, Window, format_duration
from cachemon.costs import optimize
from cachemon.errors import CachemonError
from cachemon.pricing import days_in_month
from cachemon.settings import Config
from cachemon.store.queries import data_days, data_end
from cachemon.timerange import stamp
from cachemon.tuning import keyadvice
from cachemon.tuning import whatif as tuning_whatif
from pages.shared import common, ttlcharts

EDGE_DEFAULT = "1h,6h,24h,48h"
KEYS = 20  # busiest keys checked for a TTL of their own


def _choices(con, cfg: Config, end: datetime, limit: timedelta) -> dict:
    """The one TTL rule's choices (the Costs recommendation's), over the class window."""
    return optimize.recommended_ttls(
        con, cfg, Window(end - cfg.costs.class_window, end), end, limit
    )


def _load(
    con: duckdb.DuckDBPyConnection,
    cfg: Config,
    endpoint: str,
    ttls: tuple,
    edge_ttls: tuple,
    days: float,
    limit_s: float,
    at: datetime,
):
    end = data_end(con, at)
    limit = timedelta(seconds=limit_s)
    choice = _choices(con, cfg, end, limit)[endpoint]
    # The recommended TTL is always predicted, whatever candidates were asked.
    asked = sorted({*ttls, choice.recommended})
    w = tuning_whatif.whatif(
        con, cfg, [endpoint], asked, Window(end - timedelta(days=days), end), end, list(edge_ttls)
    )[0]
    keys = keyadvice.per_key(
        con, w, cfg.pricing, cfg.costs.value_bytes, days_in_month(end), limit, KEYS
    )
    return w, choice, keys


def _load_all(con: duckdb.DuckDBPyConnection, cfg: Config, limit_s: float, at):
    # The rule only: the what-if of every endpoint would take seconds at a
    # month of traffic (its curves are one endpoint's, picked in the sidebar).
    end = data_end(con, at)
    covered, _ = data_days(con, Window(end - cfg.costs.class_window, end))
    return covered, _choices(con, cfg, end, timedelta(seconds=limit_s))


def page():
    cfg = common.page_start("TTL what-if")
    endpoints = [e for e, _ in cfg.costs.kv_ttl]
    chosen = common.endpoint()
    c1, c2, c3 = st.columns([2, 1, 1])
    limit_text = c3.text_input(
        "Max staleness", format_duration(cfg.costs.max_kv_ttl), key="ttl_limit"
    )
    try:
        limit = tuning_whatif.parse_staleness(limit_text, "Max staleness")
    except CachemonError as exc:
        common.show_error(exc)
        return
    if chosen not in endpoints:
        _summary(cfg, limit)
        return
    days = c2.number_input(
        "Days of traffic",
        1,
        30,
        7,
        key="ttl_days",
        help="The what-if measures request rates over these days ending now, not over the "
        "sidebar's range: TTLs of days to weeks need days of traffic to be judged.",
    )
    c2.caption("Not the sidebar's range: see the help.")
    current = dict(cfg.costs.kv_ttl)[chosen]
    default = tuning_whatif.default_candidates(current, limit)
    text = c1.text_input(
        "Candidate KV TTLs",
        "",
        placeholder=", ".join(format_duration(t) for t in default),
        help="Comma-separated; empty: the defaults shown, up to the staleness limit.",
        key="ttl_candidates",
    )
    edge_text = c1.text_input("Candidate edge TTLs", EDGE_DEFAULT, key="ttl_edge")
    try:
        ttls = tuning_whatif.parse_ttls(text) if text.strip() else default
        edge_ttls = tuning_whatif.parse_ttls(edge_text, "Candidate edge TTLs")
        w, choice, keys = common.cached(
            _load,
            chosen,
            tuple(ttls),
            tuple(edge_ttls),
            float(days),
            limit.total_seconds(),
            common.now(),
        )
    except CachemonError as exc:
        common.show_error(exc)
        return
    _endpoint_page(cfg, w, choice, keys, limit, ttls)


def _summary(cfg: Config, limit: timedelta) -> None:
    try:
        covered, choices = common.cached(_load_all, limit.total_seconds(), common.now())
    except CachemonError as exc:
        common.show_error(exc)
        return
    st.info(
        "All endpoints: pick one in the sidebar for its what-if (curves, candidates, the "
        "check of the recommendation) and a draft experiment."
    )
    now = common.now()
    table = []
    for endpoint, _ in cfg.costs.kv_ttl:
        c = choices[endpoint]
        running = tuning_whatif.running_experiments(cfg, endpoint, now)
        table.append(
            {
                "endpoint": endpoint,
                "current TTL": format_duration(c.current),
                "recommended TTL": format_duration(c.recommended),
                "saving USD/day": _usd(c.saving),
                "churning warm keys": common.fmt(c.keys, "count"),
                "their KV writes/day": common.fmt(c.writes, "count"),
                "running experiment": ", ".join(x.name for x in running) or "—",
            }
        )
    st.dataframe(pd.DataFrame(table), hide_index=True, width="stretch")
    st.caption(
        f"Recommended TTL: the Costs recommendation's rule ({optimize.TTL_METHOD} "
        f"{stamp(covered.start)} – {stamp(covered.end)}, up to {format_duration(limit)} "
        "of staleness)."
    )


def _rate(p: tuning_whatif.Prediction, unit: str = "") -> str:
    """A predicted KV hit rate with its standard error where one is stated,
    flagged where approximate (longer than the replay's warm-up)."""
    err = p.kv_hit_error
    text = common.fmt(p.kv_hit_rate) + unit
    if err is not None and np.isfinite(err):
        text += f" ± {err:.2f}"
    return text + ("" if p.warm else " (approximate)")


def _usd(x: float) -> str:
    """USD with cents, or '< $0.0001' where four decimals would show a saving as zero."""
    return "< $0.0001" if 0 < x < 0.0001 else common.fmt(x, "usd")


def _endpoint_page(cfg: Config, w, choice, keys, limit: timedelta, ttls) -> None:
    st.caption(
        f"{w.endpoint}: {stamp(w.window.start)} – {stamp(w.window.end)}, "
        f"{common.fmt(w.days)} days of data · current TTL {format_duration(w.current_ttl)}: "
        f"observed KV hit rate {common.fmt(w.observed_kv_hit_rate)} %, predicted "
        f"{_rate(w.current, ' %')}"
    )
    method = f"Predictions: {w.method.name}. {w.method.note[0].upper()}{w.method.note[1:]}."
    if w.method.name == tuning_whatif.REPLAY:
        st.caption(method)
    else:
        st.warning(method)
    left, right = st.columns(2)
    hit, cost = ttlcharts.curves(w, choice.recommended, limit)
    left.plotly_chart(hit, width="stretch")
    right.plotly_chart(cost, width="stretch")
    cur = w.current
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "TTL": format_duration(p.ttl)
                    + (" (recommended)" if p.ttl == choice.recommended else ""),
                    "KV hit %": _rate(p),
                    "hit % (not origin)": common.fmt(p.hit_rate),
                    "KV writes/day": common.fmt(p.kv_writes, "count"),
                    "KV GB": common.fmt(p.stored_gb),
                    "cost USD/day": common.fmt(p.cost, "usd"),
                    "Δ cost USD/day": common.fmt(p.cost - cur.cost, "usd", signed=True),
                    "Δ KV hit (points)": common.fmt(p.kv_hit_rate - cur.kv_hit_rate, signed=True),
                }
                for p in w.candidates
            ]
        ),
        hide_index=True,
        width="stretch",
        column_config={
            "TTL": st.column_config.TextColumn(width=130),
            "KV hit %": st.column_config.TextColumn(width=190),
        },
    )
    if w.edge:
        _edge(w)
    _recommendation(cfg, w, choice, limit)
    st.subheader("Busy keys whose own TTL would pay")
    if keys:
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "key": k.key,
                        "KV lookups/day": common.fmt(k.lookups, "count"),
                        "KV hit %": common.fmt(k.kv_hit_rate),
                        "TTL": format_duration(k.ttl),
                        "saving USD/day": _usd(k.saving),
                    }
                    for k in keys
                ]
            ),
            hide_index=True,
            width="stretch",
        )
    else:
        st.caption(f"No key among the {KEYS} busiest at KV would be cheaper with a TTL of its own.")


def _edge(w) -> None:
    st.caption(
        f"Edge: current TTL {format_duration(w.current_edge_ttl)}, observed edge hit rate "
        f"{common.fmt(w.observed_edge_hit_rate)} % (the model fitted as "
        f"{common.fmt(w.colos)} equal colo caches)"
    )
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "edge TTL": format_duration(e.ttl),
                    "edge hit %": common.fmt(e.edge_hit_rate),
                    "KV lookups/day": common.fmt(e.kv_lookups, "count"),
                }
                for e in w.edge
            ]
        ),
        hide_index=True,
    )


def _recommendation(cfg: Config, w, choice, limit: timedelta) -> None:
    """The one rule's TTL (what the Costs recommendation says), the
    what-if's check of it, and a draft experiment unless one is running."""
    rec, lim = choice.recommended, format_duration(limit)
    basis = f"By {optimize.TTL_METHOD}, up to {lim} of staleness (the Costs recommendation)"
    if w.current_ttl > limit:
        st.warning(
            f"The current TTL {format_duration(w.current_ttl)} is past the staleness limit of "
            f"{lim}: the rule weighs TTLs up to the limit, and keeps the current one when none "
            "of them costs less."
        )
    if not choice.changes:
        st.success(f"Keep {format_duration(rec)}. {basis}: no option saves anything.")
        return
    st.success(
        f"Recommended: {format_duration(w.current_ttl)} → {format_duration(rec)}. {basis}: "
        f"saves {common.fmt(choice.saving, 'usd')}/day on {choice.keys:,} warm keys written "
        f"{common.fmt(choice.writes, 'count')} times/day."
    )
    ck = tuning_whatif.check(w, rec)
    said = f"The {w.method.name} of the last {common.fmt(w.days)} days"
    if ck.verdict == tuning_whatif.AGREES:
        st.caption(
            f"{said} agrees: {format_duration(rec)} costs "
            f"{common.fmt(ck.cost_change, 'usd', signed=True)}/day, KV hit rate "
            f"{common.fmt(ck.kv_hit_change, signed=True)} points."
        )
    elif ck.verdict == tuning_whatif.DISAGREES:
        st.warning(
            f"{said} disagrees: {format_duration(rec)} costs "
            f"{common.fmt(ck.cost_change, 'usd', signed=True)}/day against the current TTL. "
            "Only an experiment will tell."
        )
    else:
        st.warning(
            f"{said} cannot check {format_duration(rec)}: it is longer than the replay's "
            f"{tuning_whatif.span_text(w.method.warmup or timedelta(0))} of warm-up, so its "
            "figure is approximate. Only an experiment will tell."
        )
    now = common.now()
    running = tuning_whatif.running_experiments(cfg, w.endpoint, now)
    for x in running:
        cohorts = ", ".join(f"{c.name} {format_duration(c.ttl)}" for c in x.cohorts)
        st.warning(
            f"Experiment {x.name} is already running on {w.endpoint} "
            f"({stamp(x.start)} – {stamp(x.start + x.duration)}; {cohorts}): another one on "
            "the same keys would confound both. Let it finish before starting this one."
        )
    start = (now + DAY).replace(hour=0, minute=0, second=0, microsecond=0)
    draft = tuning_whatif.draft_experiment(w.endpoint, w.current_ttl, rec, start)
    label = "Draft experiment anyway" if running else "Prove it with an experiment"
    with st.expander(label, expanded=not running):
        st.code(draft, language="toml")


page()
