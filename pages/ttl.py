"""TTL what-if: predicted KV hit rate and cost per candidate TTL, next to
the observed point, the recommendation and a draft experiment."""

from datetime import datetime, timedelta

import duckdb
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from cachemon.clock import DAY, Window, format_duration, parse_duration
from cachemon.errors import CachemonError
from cachemon.pricing import days_in_month
from cachemon.settings import Config
from cachemon.store.queries import data_end
from cachemon.tuning import keyadvice
from cachemon.tuning import whatif as tuning_whatif
from pages.shared import common


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
    w = tuning_whatif.whatif(
        con,
        cfg,
        [endpoint],
        list(ttls),
        Window(end - timedelta(days=days), end),
        end,
        list(edge_ttls),
    )[0]
    keys = keyadvice.per_key(con, w, cfg.pricing, cfg.costs.value_bytes, days_in_month(end), limit)
    return w, tuning_whatif.recommend(w, limit), keys


def page():
    cfg = common.page_start("TTL what-if")
    endpoints = [e for e, _ in cfg.costs.kv_ttl]
    c1, c2, c3, c4 = st.columns([1, 2, 1, 1])
    chosen = common.endpoint()
    endpoint = c1.selectbox(
        "Endpoint",
        endpoints,
        index=endpoints.index(chosen) if chosen in endpoints else 0,
        key="ttl_endpoint",
    )
    text = c2.text_input("Candidate KV TTLs", "6h,12h,24h,48h,7d", key="ttl_candidates")
    days = c3.number_input("Days of traffic", 1, 30, 7, key="ttl_days")
    limit_text = c4.text_input(
        "Max staleness", format_duration(cfg.costs.max_kv_ttl), key="ttl_limit"
    )
    edge_text = c2.text_input("Candidate edge TTLs", "1h,6h,24h,48h", key="ttl_edge")
    try:
        ttls, limit = tuning_whatif.parse_ttls(text), parse_duration(limit_text, "Max staleness")
        edge_ttls = tuning_whatif.parse_ttls(edge_text)
        w, best, keys = common.cached(
            _load,
            endpoint,
            tuple(ttls),
            tuple(edge_ttls),
            float(days),
            limit.total_seconds(),
            common.now(),
        )
    except CachemonError as exc:
        common.show_error(exc)
        return
    st.caption(
        f"{w.window} (UTC), {w.days:.2f} days of data · current TTL {format_duration(w.current_ttl)}: "
        f"observed KV hit rate {w.observed_kv_hit_rate:.2f} %, predicted {w.current.kv_hit_rate:.2f} %"
    )
    method = f"Predictions: {w.method.name}. {w.method.note[0].upper()}{w.method.note[1:]}."
    if w.method.name == tuning_whatif.REPLAY:
        st.caption(method)
    else:
        st.warning(method)
    st.plotly_chart(_curves(w), width="stretch")
    cur = w.current
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "TTL": format_duration(p.ttl),
                    "KV hit %": p.kv_hit_rate,
                    "± err": p.kv_hit_error,
                    "hit % (not origin)": p.hit_rate,
                    "KV reads/day": p.kv_reads,
                    "KV writes/day": p.kv_writes,
                    "R2 reads/day": p.r2_reads,
                    "KV GB": p.stored_gb,
                    "cost USD/day": p.cost,
                    "Δ cost": p.cost - cur.cost,
                    "Δ KV hit (points)": p.kv_hit_rate - cur.kv_hit_rate,
                    "recommended": best is not None and p.ttl == best.ttl,
                    "warmed up": p.warm,
                }
                for p in w.candidates
            ]
        ),
        hide_index=True,
        width="stretch",
    )
    if w.edge:
        st.caption(
            f"Edge: current TTL {format_duration(w.current_edge_ttl)}, observed edge hit rate "
            f"{w.observed_edge_hit_rate:.2f} % (the model fitted as {w.colos:.2f} equal colo caches)"
        )
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "edge TTL": format_duration(e.ttl),
                        "edge hit %": e.edge_hit_rate,
                        "KV lookups/day": e.kv_lookups,
                    }
                    for e in w.edge
                ]
            ),
            hide_index=True,
        )
    _recommendation(w, best, limit, endpoint)
    st.subheader("Busy keys whose own TTL would pay")
    if keys:
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "key": k.key,
                        "KV lookups/day": k.lookups,
                        "KV hit %": k.kv_hit_rate,
                        "TTL": format_duration(k.ttl),
                        "saving USD/day": k.saving,
                    }
                    for k in keys
                ]
            ),
            hide_index=True,
            width="stretch",
        )
    else:
        st.caption("None of the 20 busiest keys at KV would be cheaper with a TTL of its own.")


def _recommendation(w, best, limit, endpoint) -> None:
    cur = w.current
    if best is None:
        st.warning(f"No candidate is within the staleness limit of {format_duration(limit)}.")
    elif best.ttl == w.current_ttl:
        st.success(
            f"Keep {format_duration(best.ttl)}: no candidate within {format_duration(limit)} of staleness "
            "costs less."
        )
    else:
        st.success(
            f"Recommended: {format_duration(best.ttl)}, the cheapest within {format_duration(limit)} of "
            f"staleness ({best.cost - cur.cost:+.4f} USD/day, KV hit rate "
            f"{best.kv_hit_rate - cur.kv_hit_rate:+.2f} points). Prove it with an experiment:"
        )
        start = (common.now() + DAY).replace(hour=0, minute=0, second=0, microsecond=0)
        st.code(
            tuning_whatif.draft_experiment(endpoint, w.current_ttl, best.ttl, start),
            language="toml",
        )


def _curves(w: tuning_whatif.WhatIf) -> go.Figure:
    """Predicted KV hit rate (with its ± one-standard-error band when
    replayed) and cost over a continuous TTL axis, the candidates marked and
    labelled, and the observed point at the current TTL."""
    hours = [p.ttl.total_seconds() / 3600 for p in w.curve]
    rate = [p.kv_hit_rate for p in w.curve]
    now = w.current_ttl.total_seconds() / 3600
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=(
            f"KV hit rate % (share of requests), {w.method.name}",
            "KV + R2 cost USD/day",
        ),
    )
    if w.method.name == tuning_whatif.REPLAY:
        err = [p.kv_hit_error or 0.0 for p in w.curve]
        fig.add_trace(
            go.Scatter(
                x=hours + hours[::-1],
                y=[r + e for r, e in zip(rate, err)] + [r - e for r, e in zip(rate, err)][::-1],
                fill="toself",
                line={"width": 0},
                opacity=0.25,
                name="± 1 standard error (sampling)",
                hoverinfo="skip",
            ),
            row=1,
            col=1,
        )
    fig.add_trace(go.Scatter(x=hours, y=rate, mode="lines", name=w.method.name), row=1, col=1)
    labels = [format_duration(p.ttl) for p in w.candidates]
    cand = [p.ttl.total_seconds() / 3600 for p in w.candidates]
    fig.add_trace(
        go.Scatter(
            x=cand,
            y=[p.kv_hit_rate for p in w.candidates],
            mode="markers+text",
            text=labels,
            textposition="top center",
            name="candidates",
            marker={"size": 9},
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=[now],
            y=[w.observed_kv_hit_rate],
            mode="markers",
            name="observed (current TTL)",
            marker={"size": 12, "symbol": "diamond"},
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=hours, y=[p.cost for p in w.curve], mode="lines", name="cost", showlegend=False
        ),
        row=1,
        col=2,
    )
    fig.add_trace(
        go.Scatter(
            x=cand,
            y=[p.cost for p in w.candidates],
            mode="markers+text",
            text=labels,
            textposition="top center",
            showlegend=False,
            marker={"size": 9},
        ),
        row=1,
        col=2,
    )
    fig.add_trace(
        go.Scatter(
            x=[now],
            y=[w.current.cost],
            mode="markers",
            name="current TTL (predicted)",
            marker={"size": 12, "symbol": "diamond"},
        ),
        row=1,
        col=2,
    )
    fig.update_xaxes(type="log", title_text="TTL (hours, log scale)")
    return fig.update_layout(height=380, margin={"t": 40, "b": 10})


page()
