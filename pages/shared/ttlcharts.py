"""The TTL what-if page's charts: predicted KV hit rate and cost over a
log TTL axis (`charts.log_duration_axis`), the candidates marked and
labelled, the current TTL, the recommendation and the staleness limit as
labelled vertical lines, the replay's standard error as bars and a band."""

import math
from datetime import timedelta

import numpy as np
import plotly.graph_objects as go

from cachemon.clock import format_duration
from cachemon.tuning import whatif as tuning_whatif
from pages.shared import charts


def curves(w: tuning_whatif.WhatIf, recommended: timedelta, limit: timedelta):
    """Predicted KV hit rate (with its ± one-standard-error band where the
    replay states one) and cost over a log TTL axis: the candidates marked
    and labelled, figures longer than the warm-up dotted, the current TTL,
    the recommendation and the staleness limit as labelled lines."""
    secs = [p.ttl.total_seconds() for p in w.curve]
    cand = [p.ttl.total_seconds() for p in w.candidates]
    labels = [format_duration(p.ttl) for p in w.candidates]
    # Alternate sides, so neighbours (28d, 30d) keep readable labels.
    positions = ["top center" if i % 2 else "bottom center" for i in range(len(labels))]
    marks = (
        (w.current_ttl, f"current {format_duration(w.current_ttl)}", charts.NEUTRAL),
        (limit, f"staleness limit {format_duration(limit)}", charts.WARN),
    )
    if recommended != w.current_ttl:
        marks += ((recommended, f"recommended {format_duration(recommended)}", charts.GOOD),)
    lo = min([*secs, *cand, w.current_ttl.total_seconds()])
    hi = max([*secs, *cand, limit.total_seconds()])

    hit = go.Figure()
    err = [p.kv_hit_error for p in w.curve]
    stated = [i for i, e in enumerate(err) if e is not None and np.isfinite(e)]
    if stated:
        xs = [secs[i] for i in stated]
        up = [w.curve[i].kv_hit_rate + err[i] for i in stated]
        down = [w.curve[i].kv_hit_rate - err[i] for i in stated]
        hit.add_trace(
            go.Scatter(
                x=xs + xs[::-1],
                y=up + down[::-1],
                fill="toself",
                fillcolor=charts.shade(charts.TIER_COLOURS["kv"], 0.2),
                line={"width": 0},
                name="± 1 standard error",
                hoverinfo="skip",
            )
        )
    _line(hit, w, [p.kv_hit_rate for p in w.curve], "KV hit %")
    cerr = [p.kv_hit_error for p in w.candidates]
    hit.add_trace(
        go.Scatter(
            x=cand,
            y=[p.kv_hit_rate for p in w.candidates],
            error_y={
                "type": "data",
                "array": [e if e is not None and np.isfinite(e) else 0.0 for e in cerr],
                "visible": any(e is not None and np.isfinite(e) for e in cerr),
            },
            mode="markers+text",
            text=labels,
            textposition=positions,
            name="candidates",
            marker={"size": 9, "color": charts.TIER_COLOURS["kv"]},
        )
    )
    hit.add_trace(
        go.Scatter(
            x=[w.current_ttl.total_seconds()],
            y=[w.observed_kv_hit_rate],
            mode="markers",
            name="observed (current TTL)",
            marker={"size": 12, "symbol": "diamond", "color": charts.NEUTRAL},
        )
    )
    cost = go.Figure()
    _line(cost, w, [p.cost for p in w.curve], "cost")
    cost.add_trace(
        go.Scatter(
            x=cand,
            y=[p.cost for p in w.candidates],
            mode="markers+text",
            text=labels,
            textposition=positions,
            name="candidates",
            marker={"size": 9, "color": charts.TIER_COLOURS["kv"]},
        )
    )
    for fig, title, y in (
        (hit, f"KV hit rate ({w.method.name})", "KV hit rate % of requests"),
        (cost, "KV + R2 cost", "cost USD/day"),
    ):
        for i, (ttl, text, colour) in enumerate(marks):
            fig.add_vline(x=ttl.total_seconds(), line={"dash": "dash", "color": colour, "width": 1})
            # Placed by hand: a vline's own annotation lands off a log axis.
            fig.add_annotation(
                x=math.log10(ttl.total_seconds()),
                y=1 - 0.09 * i,
                yref="paper",
                text=text,
                showarrow=False,
                xanchor="right",
                font={"color": colour, "size": 11},
            )
        charts.log_duration_axis(fig, lo, hi)
        fig.update_layout(
            title=title,
            yaxis_title=y,
            height=360,
            margin={"t": 40, "b": 10, "l": 10, "r": 10},
            legend={"orientation": "h", "y": -0.25},
        )
    return hit, cost


def _line(fig: go.Figure, w, ys: list, name: str) -> None:
    """The curve, solid where warmed up and dotted where longer than the
    replay's warm-up (approximate)."""
    secs = [p.ttl.total_seconds() for p in w.curve]
    warm = [p.warm for p in w.curve]
    solid = [y if ok else None for y, ok in zip(ys, warm)]
    # The dotted part starts at the last warm point so the two join.
    first_cold = next((i for i, ok in enumerate(warm) if not ok), None)
    fig.add_trace(
        go.Scatter(
            x=secs,
            y=solid,
            mode="lines",
            name=name,
            line={"color": charts.TIER_COLOURS["kv"]},
        )
    )
    if first_cold is not None:
        lo = max(first_cold - 1, 0)
        fig.add_trace(
            go.Scatter(
                x=secs[lo:],
                y=ys[lo:],
                mode="lines",
                name="longer than the warm-up (approximate)",
                line={"color": charts.TIER_COLOURS["kv"], "dash": "dot"},
            )
        )
