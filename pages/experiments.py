"""Experiments: status, cohorts and allocation, SRM, estimates with
confidence intervals (forest plot), decisions over time, the days still
needed (at the observed gain and variance), promotions."""

from datetime import datetime

import duckdb
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from cachemon.clock import format_duration, iso
from cachemon.errors import CachemonError
from cachemon.settings import Config
from cachemon.tuning import analysis as tuning_analysis
from cachemon.tuning import promote, results
from cachemon.tuning.analysis import MetricResult
from cachemon.tuning.experiments import METRIC_UNITS, example_toml
from cachemon.tuning.stats import SRM_P
from pages.shared import common


def _load(con: duckdb.DuckDBPyConnection, cfg: Config, at: datetime):
    out = []
    for e in cfg.experiments:
        state = tuning_analysis.status(e, at)
        plan = (
            tuning_analysis.plan(con, e, min(at, e.start))
            if state == tuning_analysis.Status.SCHEDULED
            else None
        )
        out.append((e, state, results.stored(con, e.name), plan))
    return out, promote.history(con)


def page():
    cfg, at = common.page_start("Experiments"), common.now()
    if not cfg.experiments:
        st.info(
            "No experiment is configured. Add `[[experiments]]` to the config file, like the "
            "example below (docs/experiments.md explains each field); the daily `experiments` "
            "job then analyses it at 04:00 UTC."
        )
        st.code(example_toml(start=at.strftime("%Y-%m-%dT%H:00:00Z")), language="toml")
        return
    try:
        experiments, promotions = common.cached(_load, at)
    except CachemonError as exc:
        common.show_error(exc)
        return
    for e, state, history, plan in experiments:
        _experiment(e, state, history, plan)
    st.subheader("Promotions and rollbacks")
    if promotions:
        st.dataframe(
            pd.DataFrame(
                promotions, columns=["at", "action", "experiment", "old TTLs", "new TTLs", "detail"]
            ),
            hide_index=True,
            width="stretch",
        )
    else:
        st.caption("No TTL was promoted or rolled back yet.")


def _experiment(e, state, history, plan):
    st.subheader(f"{e.name} · {state}")
    st.caption(
        f"{e.description or 'no description'} · endpoint {e.endpoint} · {iso(e.start)} for "
        f"{format_duration(e.duration)} · scheme {e.scheme} · margin {e.margin:g} points"
    )
    latest = history[-1].analysis if history else None
    units = dict(latest.units) if latest else {}
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "cohort": c.name,
                    "KV TTL": format_duration(c.ttl),
                    "weight": c.weight,
                    "allocation": f"{a.numerator}/{a.denominator} ({float(a):.2%})",
                    "keys": units.get(c.name),
                }
                for c, a in zip(e.cohorts, e.allocation())
            ]
        ),
        hide_index=True,
        width="stretch",
    )
    if latest is None:
        st.info(
            "Not analysed yet."
            + (
                f" At current traffic it needs about {plan} days to detect a {e.mde:g}-point gain."
                if plan
                else ""
            )
        )
        return
    st.caption(
        f"Last analysis {iso(latest.at)} over [{iso(latest.window_start)}, {iso(latest.window_end)})"
    )
    cols = st.columns(3)
    cols[0].metric("Decision", str(latest.decision))
    srm = latest.srm_p
    cols[1].metric(
        "SRM p-value",
        "n/a" if srm is None else f"{srm:.4f}",
        help=(
            "Chi-square of key counts against the scheme's exact allocation; "
            f"p < {SRM_P:g} blocks decisions"
        ),
    )
    outlook = latest.outlook
    cols[2].metric(
        "Days still needed",
        "n/a" if outlook is None else outlook.headline,
        help=(
            "More daily analyses until the hit-rate gain's lower bound clears the "
            f"{e.margin:g}-point margin, at the gain and variance observed so far"
            + ("" if outlook is None else f": {outlook.text}")
        ),
    )
    if latest.srm_mismatch:
        st.error(
            "Sample ratio mismatch: the cohorts' key counts do not match the allocation; "
            "no decision until the assignment is fixed."
        )
    for c in latest.comparisons:
        st.markdown(f"**{c.treatment} vs {e.cohorts[0].name}: {c.decision}** — {c.reason}")
        if c.outlook:
            st.caption(f"Days still needed: {c.outlook.line}")
        st.plotly_chart(_forest(c.metrics, e.margin), width="stretch")
    with st.expander("Decision history"):
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "analysed": h.analyzed_at,
                        "decision": str(h.decision),
                        "keys": ", ".join(f"{n} {k}" for n, k in h.analysis.units),
                    }
                    for h in history
                ]
            ),
            hide_index=True,
            width="stretch",
        )


def _forest(metrics: tuple[MetricResult, ...], margin: float) -> go.Figure:
    """Each metric's difference (treatment − control) with its confidence
    interval, one row each on its own scale; grey: no difference, green
    dashed: the hit-rate margin a winner's lower bound must clear."""
    fig = make_subplots(
        rows=len(metrics),
        cols=1,
        vertical_spacing=0.6 / max(len(metrics), 1),
        subplot_titles=[f"{m.metric} ({METRIC_UNITS.get(m.metric, '')})" for m in metrics],
    )
    for row, m in enumerate(metrics, start=1):
        lo = m.lower if m.lower is not None else m.estimate
        hi = m.upper if m.upper is not None else m.estimate
        fig.add_trace(
            go.Scatter(
                x=[m.estimate],
                y=[""],
                mode="markers",
                marker={"size": 10},
                error_x={
                    "type": "data",
                    "array": [hi - m.estimate],
                    "arrayminus": [m.estimate - lo],
                },
                hovertemplate=f"{m.estimate:.4g} [{lo:.4g}, {hi:.4g}]<extra></extra>",
            ),
            row=row,
            col=1,
        )
        fig.add_vline(x=0, line_color="#888", line_width=2, row=row, col=1)
        marks = [0.0, lo, hi]
        if m.metric == "hit_rate":
            fig.add_vline(x=margin, line_color="#16a34a", line_dash="dash", row=row, col=1)
            marks.append(margin)
        pad = 0.1 * (max(marks) - min(marks) or 1.0)
        fig.update_xaxes(range=[min(marks) - pad, max(marks) + pad], row=row, col=1)
    return fig.update_layout(
        height=60 + 110 * len(metrics),
        showlegend=False,
        margin={"t": 40, "b": 20},
        title="Difference, treatment − control (always-valid 95 % confidence sequence)",
    )


page()
