"""Experiments, as GrowthBook's results page: status, cohorts and allocation,
the sample-ratio check in words, each treatment's metrics against the control
(per-cohort values, absolute and relative lift, the always-valid interval,
coloured by good and bad), the hit-rate confidence sequence over the daily
analyses with the margin, the days still needed in words, the history of
decisions and the promotions with the estimates they were decided on.

Experiments have their own dates: the page does not follow the global range."""

import json
from datetime import datetime, timedelta

import duckdb
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from cachemon.clock import format_duration
from cachemon.errors import CachemonError
from cachemon.settings import Config
from cachemon.timerange import stamp
from cachemon.tuning import analysis as tuning_analysis
from cachemon.tuning import promote, results
from cachemon.tuning.experiments import METRIC_UNITS, example_toml
from cachemon.tuning.stats import SRM_P
from pages.shared import common
from pages.shared.charts import BAD, GOOD, NEUTRAL

# The table's metric names, each with the unit of the cohorts' values.
METRIC_LABELS = {
    "hit_rate": "hit rate %",
    "cost_per_request": "cost USD per 1M requests",
    "error_rate": "error rate %",
    "p95_latency": "p95 latency ms",
}
# A lift's unit, short enough for a cell.
LIFT_UNITS = METRIC_UNITS | {"cost_per_request": "USD/1M"}
VERDICT_COLOURS = {results.Verdict.BETTER: GOOD, results.Verdict.WORSE: BAD}
NONE = "—"
TEXT = st.column_config.TextColumn


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
    promotions = promote.history(con)
    # A promotion's estimates come from its experiment's analyses, configured or not.
    named = {e.name for e in cfg.experiments}
    earlier = {n: results.stored(con, n) for n in {p[2] for p in promotions} - named if n}
    return out, promotions, earlier


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
        experiments, promotions, earlier = common.cached(_load, at)
    except CachemonError as exc:
        common.show_error(exc)
        return
    st.caption(
        "Experiments do not follow the global time range: each experiment has its own dates "
        "(its start and planned duration), and its results cover them. Times in UTC."
    )
    for e, state, history, plan in experiments:
        _experiment(e, state, history, plan)
    histories = earlier | {e.name: h for e, _, h, _ in experiments}
    st.subheader("Promotions and rollbacks")
    if promotions:
        st.caption(
            "Each promotion with the analysis it was decided on: the newest one stored at or "
            "before it, and the winning treatment's hit-rate lift then."
        )
        st.dataframe(
            pd.DataFrame([_promotion(p, histories.get(p[2], [])) for p in promotions]),
            hide_index=True,
            width="stretch",
            column_config=PROMOTION_COLUMNS,
        )
    else:
        st.caption("No TTL was promoted or rolled back yet.")


def _experiment(e, state, history, plan):
    st.subheader(f"{e.name} · {state}")
    st.caption(
        f"{e.description or 'no description'} · endpoint {e.endpoint} · "
        f"{stamp(e.start)} to {stamp(e.start + e.duration)} ({format_duration(e.duration)}) · "
        f"scheme {e.scheme} · margin {e.margin:g} points"
    )
    latest = history[-1].analysis if history else None
    units = dict(latest.units) if latest else {}
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "cohort": c.name,
                    "KV TTL": format_duration(c.ttl),
                    "weight": f"{c.weight:g}",
                    "allocation": f"{a.numerator}/{a.denominator} ({float(a):.2%})",
                    "keys": units.get(c.name, 0) if latest else NONE,
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
        f"Last analysis {stamp(latest.at)} over {stamp(latest.window_start)} to "
        f"{stamp(latest.window_end)} · {len(history)} stored analyses"
    )
    _kpis(e, latest)
    split = results.split(e, latest)
    if split.mismatch:
        st.error(f"Sample ratio mismatch: {split.text}")
    else:
        st.caption(f"Sample ratio: {split.text}")
    if latest.decision == tuning_analysis.Decision.COLLECTING:
        st.info(
            f"Collecting: the results stay hidden until the cohorts hold "
            f"{tuning_analysis.MIN_UNITS:,} keys in all ({sum(units.values()):,} so far)."
        )
    for c in latest.comparisons:
        _comparison(e, c, history)
    with st.expander("Decision history"):
        st.dataframe(
            pd.DataFrame([_analysed(h, e) for h in history]),
            hide_index=True,
            width="stretch",
        )


def _kpis(e, latest) -> None:
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


def _comparison(e, c, history) -> None:
    control = e.cohorts[0].name
    st.markdown(f"**{c.treatment} vs {control}: {c.decision}** — {c.reason}")
    rows = results.lifts(c)
    table = pd.DataFrame([_lift_row(r) for r in rows])
    colours = pd.DataFrame(
        [[_colour(r, col) for col in table.columns] for r in rows], columns=table.columns
    )
    st.dataframe(
        table.style.apply(lambda _: colours, axis=None),
        hide_index=True,
        width="stretch",
        column_config={
            "metric": TEXT(width="medium"),
            "interval (abs lift)": TEXT(width="medium"),
            "result": TEXT(width="medium"),
        },
    )
    notes = [
        "Lifts are treatment − control; the interval is the analysis's always-valid 95 % confidence "
        "sequence (the hit rate's at the Holm-adjusted level across treatments); p-values are "
        "always-valid and Holm-adjusted. Green: better, red: worse, in the metric's direction "
        "(a higher hit rate, a lower cost, error rate or latency is better)."
    ]
    if any(r.adjusted for r in rows):
        notes.append(
            "* CUPED-adjusted (each key's hit rate in the week before the start): the lift "
            "differs from treatment − control by the pre-period imbalance it removes."
        )
    st.caption(" ".join(notes))
    if c.outlook:
        st.markdown(f"**Days still needed:** {results.explain(c.outlook)}")
        st.caption(f"In figures: {c.outlook.line}")
    points, without = results.sequence(history, c.treatment)
    st.plotly_chart(
        _sequence_chart(e, points), width="stretch", key=f"sequence-{e.name}-{c.treatment}"
    )
    st.caption(
        f"{c.treatment} vs {control}: the hit-rate lift and its interval at each of the "
        f"{len(points)} analyses with an estimate, from the start ({stamp(e.start)}) to the last; "
        f"the planned end is {stamp(e.start + e.duration)}."
    )
    if without:
        st.caption(
            f"{len(without)} of {len(history)} analyses have no estimate for {c.treatment} "
            "(still collecting, or blocked by a sample ratio mismatch): "
            + ", ".join(f"{stamp(s.analyzed_at)} {s.decision}" for s in without[-5:])
            + (" …" if len(without) > 5 else "")
        )


def _num(value: float | None, signed: bool = False) -> str:
    text = common.fmt(value, signed=signed)
    return NONE if text is None else text


def _lift_row(r: results.Lift) -> dict:
    unit = LIFT_UNITS.get(r.metric, "")
    star = " *" if r.adjusted else ""
    interval = (
        NONE
        if r.lower is None or r.upper is None
        else f"[{_num(r.lower, True)}, {_num(r.upper, True)}] {unit}"
    )
    result = str(r.verdict)
    if r.p_value is not None:
        result += f" (p = {r.p_value:.4f})" if r.p_value >= 0.0001 else " (p < 0.0001)"
    return {
        "metric": METRIC_LABELS.get(r.metric, r.metric),
        "control": _num(r.control),
        "treatment": _num(r.treatment),
        "abs lift": f"{_num(r.absolute, True)} {unit}{star}",
        "rel lift %": NONE if r.relative is None else _num(100 * r.relative, True),
        "interval (abs lift)": interval,
        "result": result,
    }


def _colour(r: results.Lift, column: str) -> str:
    """Lift, relative lift and result cells in the verdict's colour (an
    improvement is never red); the rest plain."""
    colour = VERDICT_COLOURS.get(r.verdict)
    if colour and column in ("abs lift", "rel lift %", "result"):
        return f"color: {colour}; font-weight: 600"
    return ""


def _sequence_chart(e, points: list[results.Point]) -> go.Figure:
    """The hit-rate lift at every stored analysis with its interval as a
    band, the zero line and the margin a winner's lower bound must clear."""
    x = [p.at for p in points]
    when = [stamp(p.at) for p in points]
    fig = go.Figure()
    # The interval holds from one look to the next: a step band.
    fig.add_trace(
        go.Scatter(
            x=x,
            y=[p.upper for p in points],
            mode="lines",
            line={"width": 0, "shape": "hv"},
            hoverinfo="skip",
            showlegend=False,
        )
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=[p.lower for p in points],
            mode="lines",
            line={"width": 0, "shape": "hv"},
            fill="tonexty",
            fillcolor="rgba(100,116,139,0.25)",
            name="interval",
            hoverinfo="skip",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=[p.estimate for p in points],
            mode="lines+markers",
            name="hit-rate lift",
            line={"color": NEUTRAL},
            marker={"size": 8},
            error_y={
                "type": "data",
                "array": [p.upper - p.estimate for p in points],
                "arrayminus": [p.estimate - p.lower for p in points],
                "color": NEUTRAL,
            },
            customdata=[[w, p.lower, p.upper, str(p.decision)] for w, p in zip(when, points)],
            hovertemplate=(
                "%{customdata[0]}<br>lift %{y:+.2f} points<br>"
                "interval [%{customdata[1]:+.2f}, %{customdata[2]:+.2f}]<br>"
                "%{customdata[3]}<extra></extra>"
            ),
        )
    )
    fig.add_hline(
        y=0,
        line_color="#888",
        line_width=2,
        annotation_text="no difference",
        annotation_position="bottom left",
    )
    fig.add_hline(
        y=e.margin,
        line_color=GOOD,
        line_dash="dash",
        annotation_text=f"margin {e.margin:g} points: a winner's lower bound clears it",
        annotation_position="top left",
    )
    # From the start to the last analysis (no empty future); the planned end
    # is drawn once the analyses reach it (the caption names it).
    end = e.start + e.duration
    last = max(x, default=e.start)
    pad = max((last - e.start) * 0.04, timedelta(minutes=30))
    if end <= last + pad:
        fig.add_vline(x=end, line_color="#888", line_dash="dot")
        fig.add_annotation(
            x=end, y=1, yref="paper", text="planned end", showarrow=False, xanchor="right"
        )
    return fig.update_layout(
        title="Hit-rate lift at each analysis",
        xaxis={
            "title": "analysed at (UTC)",
            "range": [e.start, max(last, end if end <= last + pad else last) + pad],
        },
        yaxis={"title": "hit-rate lift (points)"},
        height=340,
        margin={"t": 50, "b": 10},
        legend={"orientation": "h", "y": -0.25},
    )


def _estimate_then(s) -> str:
    """The winning treatment's (or the first's) hit-rate lift with its
    interval in stored analysis `s`, and the decision then."""
    comps = s.analysis.comparisons
    c = next((c for c in comps if c.decision == tuning_analysis.Decision.WINNER), None) or (
        comps[0] if comps else None
    )
    hit = c and next((m for m in c.metrics if m.metric == "hit_rate"), None)
    if not hit or hit.lower is None or hit.upper is None:
        return f"no estimate · {s.decision}"
    return (
        f"{c.treatment} {_num(hit.estimate, True)} "
        f"[{_num(hit.lower, True)}, {_num(hit.upper, True)}] · {c.decision}"
    )


def _seconds(v) -> str:
    return format_duration(timedelta(seconds=v)) if isinstance(v, int) else NONE


def _ttl_change(old_raw: str | None, new_raw: str | None) -> str:
    """The TTLs a promotion or rollback wrote: each changed endpoint as
    "title 1d → 2d" (every endpoint when the old config was unreadable)."""
    try:
        old, new = (json.loads(r) if r else None for r in (old_raw, new_raw))
    except ValueError:
        return NONE
    if not isinstance(new, dict):
        return NONE
    if not isinstance(old, dict):
        return ", ".join(f"{k} {_seconds(v)}" for k, v in new.items())
    changed = [
        f"{k} {_seconds(old.get(k))} → {_seconds(v)}" for k, v in new.items() if old.get(k) != v
    ]
    return ", ".join(changed) or "unchanged"


def _promotion(p: tuple, history: list) -> dict:
    done_at, action, experiment, old, new, detail = p
    then = results.at_the_time(history, done_at) if history else None
    return {
        "at": stamp(done_at),
        "action": action,
        "experiment": experiment or NONE,
        "KV TTLs written": _ttl_change(old, new),
        "decided on": stamp(then.analyzed_at) if then else NONE,
        "hit-rate lift then (points)": _estimate_then(then) if then else NONE,
        "detail": detail,
    }


PROMOTION_COLUMNS = {
    "at": TEXT(width=125),
    "action": TEXT(width=70),
    "experiment": TEXT(width=130),
    "KV TTLs written": TEXT(width=120),
    "decided on": TEXT(width=125),
    "hit-rate lift then (points)": TEXT(width=290),
}


def _analysed(h, e) -> dict:
    row = {
        "analysed": stamp(h.analyzed_at),
        "decision": str(h.decision),
        "keys": ", ".join(f"{n} {k:,}" for n, k in h.analysis.units),
        "SRM p": NONE if h.analysis.srm_p is None else f"{h.analysis.srm_p:.4f}",
    }
    for c in e.cohorts[1:]:
        comp = next((x for x in h.analysis.comparisons if x.treatment == c.name), None)
        hit = comp and next((m for m in comp.metrics if m.metric == "hit_rate"), None)
        row[f"{c.name} hit-rate lift (points)"] = (
            NONE
            if not hit or hit.lower is None or hit.upper is None
            else f"{_num(hit.estimate, True)} [{_num(hit.lower, True)}, {_num(hit.upper, True)}]"
        )
    o = h.analysis.outlook
    row["days still needed"] = NONE if o is None else o.headline
    return row


page()
