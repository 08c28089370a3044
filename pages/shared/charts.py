"""What every dashboard chart shares: colours that mean something, time
axes fixed to the page's range with alert bands and a "now" line, and log
axes whose ticks are labelled in units (100 ms, 1 s; 1h, 1d), never a bare
"2 3 … 9".

Pure functions of a Plotly figure (no Streamlit), so they are tested
without a browser.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime

import plotly.graph_objects as go

from cachemon.clock import MINUTE, Window
from cachemon.severity import Severity

GOOD = "#16a34a"
BAD = "#dc2626"
WARN = "#f59e0b"
NEUTRAL = "#64748b"
# Tiers: the cache tiers in cool colours, the origin (a miss of every tier) in the warning colour.
TIER_COLOURS = {"edge": "#2563eb", "kv": "#0d9488", "r2": "#7c3aed", "api": WARN}
SEVERITY_COLOURS = {Severity.CRITICAL: BAD, Severity.WARNING: WARN, Severity.INFO: "#2563eb"}
# Latency ticks (ms) and their labels, for log axes.
LATENCY_TICKS = (
    (1, "1 ms"),
    (2, "2 ms"),
    (5, "5 ms"),
    (10, "10 ms"),
    (20, "20 ms"),
    (50, "50 ms"),
    (100, "100 ms"),
    (200, "200 ms"),
    (500, "500 ms"),
    (1000, "1 s"),
    (2000, "2 s"),
    (5000, "5 s"),
    (10000, "10 s"),
    (30000, "30 s"),
    (60000, "1 min"),
)
# Duration ticks (seconds) for TTL axes.
DURATION_TICKS = (
    (60, "1m"),
    (300, "5m"),
    (900, "15m"),
    (3600, "1h"),
    (6 * 3600, "6h"),
    (86400, "1d"),
    (7 * 86400, "7d"),
    (30 * 86400, "30d"),
    (90 * 86400, "90d"),
    (365 * 86400, "1y"),
)


# A legend in a row above the plot, so charts side by side keep one plot width.
LEGEND_ABOVE = {"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 0, "title": None}


def shade(colour: str, alpha: float = 0.15) -> str:
    """A hex colour as a translucent rgba fill."""
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha:g})"


def severity_shade(severity: str, alpha: float = 0.15) -> str:
    """The severity's colour as a translucent fill (grey for one not known)."""
    colour = SEVERITY_COLOURS.get(severity)  # a StrEnum member hashes as its value
    return shade(colour, alpha) if colour else shade(NEUTRAL, alpha)


def delta_colour(delta: float | None, lower_is_better: bool) -> str:
    """GOOD for a change in the good direction, BAD for the other, NEUTRAL for none."""
    if delta is None or not math.isfinite(delta) or delta == 0:
        return NEUTRAL
    return GOOD if (delta < 0) == lower_is_better else BAD


def ticks_between(ticks, lo: float, hi: float) -> tuple[list, list]:
    """The ticks (value, label) that fall in [lo, hi], widened by one on each
    side so a narrow range still has two labels."""
    values = [v for v, _ in ticks]
    first = max(0, max((i for i, v in enumerate(values) if v <= lo), default=0))
    last = min(
        len(values) - 1, min((i for i, v in enumerate(values) if v >= hi), default=len(values) - 1)
    )
    chosen = ticks[first : last + 1]
    return [v for v, _ in chosen], [label for _, label in chosen]


def latency_axis(fig: go.Figure, lo_ms: float, hi_ms: float, axis: str = "y") -> go.Figure:
    """A log latency axis with labelled ticks (ms, s) covering [lo_ms, hi_ms]."""
    lo, hi = max(lo_ms, 0.5), max(hi_ms, lo_ms * 1.01, 1.0)
    vals, text = ticks_between(LATENCY_TICKS, lo, hi)
    return fig.update_layout(
        {
            f"{axis}axis": {
                "type": "log",
                "tickvals": vals,
                "ticktext": text,
                "title": {"text": "latency"},
                "range": [math.log10(lo * 0.8), math.log10(hi * 1.25)],
            }
        }
    )


def log_duration_axis(
    fig: go.Figure, lo_seconds: float, hi_seconds: float, axis: str = "x", title: str = "TTL"
) -> go.Figure:
    """A log duration axis (a TTL) with labelled ticks 1m, 1h, 6h, 1d, 7d, 30d."""
    lo, hi = max(lo_seconds, 1.0), max(hi_seconds, lo_seconds * 1.01, 2.0)
    vals, text = ticks_between(DURATION_TICKS, lo, hi)
    return fig.update_layout(
        {
            f"{axis}axis": {
                "type": "log",
                "tickvals": vals,
                "ticktext": text,
                "title": {"text": title},
                "range": [math.log10(lo / 1.3), math.log10(hi * 1.3)],
            }
        }
    )


def _band(period, window: Window) -> tuple[dict, dict]:
    start, end = max(period.start, window.start), min(period.end or window.end, window.end)
    colour = SEVERITY_COLOURS.get(period.severity, NEUTRAL)
    rect = {
        "type": "rect",
        "xref": "x",
        "yref": "paper",
        "x0": start,
        "x1": end,
        "y0": 0,
        "y1": 1,
        "fillcolor": shade(colour),
        "line": {"width": 0},
        "layer": "below",
    }
    note = {
        "x": start,
        "y": 1,
        "xref": "x",
        "yref": "paper",
        "text": f"{period.type} ({period.severity})",
        "showarrow": False,
        "xanchor": "left",
        "yanchor": "bottom",
        "font": {"size": 10, "color": colour},
    }
    return rect, note


def time_axes(
    fig: go.Figure,
    window: Window,
    now: datetime,
    y_title: str,
    periods: Iterable = (),
    log_y: bool = False,
    y_range: tuple[float, float] | None = None,
) -> go.Figure:
    """A time chart of the page's window: the x range is the window (the
    same on every chart, no empty future), alert periods are named bands, a
    "now" line when now falls in the window, titles with units; `log_y`
    makes a latency axis with labelled ticks over `y_range` (ms)."""
    shapes, notes = [], []
    for p in periods:
        if p.start < window.end and (p.end is None or p.end > window.start):
            rect, note = _band(p, window)
            shapes.append(rect)
            notes.append(note)
    # A preset ends at the minute before now: within that minute the line marks the window's end.
    if window.start <= now < window.end + MINUTE:
        now = min(now, window.end)
        shapes.append(
            {
                "type": "line",
                "xref": "x",
                "yref": "paper",
                "x0": now,
                "x1": now,
                "y0": 0,
                "y1": 1,
                "line": {"width": 1, "dash": "dot", "color": NEUTRAL},
            }
        )
        notes.append(
            {
                "x": now,
                "y": 0,
                "xref": "x",
                "yref": "paper",
                "text": "now",
                "showarrow": False,
                "xanchor": "right",
                "yanchor": "bottom",
                "font": {"size": 10, "color": NEUTRAL},
            }
        )
    fig.update_layout(
        shapes=shapes,
        annotations=notes,
        hovermode="x unified",
        legend_title_text=None,
        margin={"t": 40, "b": 10},
        xaxis={"range": [window.start, window.end], "title": {"text": "time (UTC)"}},
        yaxis={"title": {"text": y_title}},
    )
    if log_y:
        lo, hi = y_range or (1.0, 1000.0)
        latency_axis(fig, lo, hi)
        fig.update_layout(yaxis={"title": {"text": y_title}})
    return fig


def titled(fig: go.Figure, title: str, legend_rows: int = 1) -> go.Figure:
    """The chart's title at the top and its legend in a row above the plot
    (not beside it: every chart of a row keeps the same plot width, and a
    phone's narrow chart is not squeezed), with room for `legend_rows` rows
    of legend (they wrap on a narrow screen)."""
    return fig.update_layout(
        title={"text": title, "y": 1, "yref": "container", "yanchor": "top", "pad": {"t": 8}},
        legend=LEGEND_ABOVE,
        showlegend=True,
        margin={"t": 60 + 22 * legend_rows, "b": 10},
    )


def lines(
    df,
    series: dict,
    unit: str,
    hover: str,
    before=None,
    **line,
) -> go.Figure:
    """One line per series of `df` ({column: (name, colour)}; gaps where a
    bucket has no data), hover in `unit` with the `hover` number format; with
    `before` (the same columns a week earlier), each series' last week
    beside it, dashed and lighter."""
    fig = go.Figure()
    for col, (name, colour) in series.items():
        fig.add_scatter(
            x=df["time"],
            y=df[col],
            name=name,
            mode="lines",
            line={"color": colour, **line},
            hovertemplate=f"%{{y:{hover}}} {unit}<extra>{name}</extra>",
        )
        if before is not None:
            fig.add_scatter(
                x=before["time"],
                y=before[col],
                name=f"{name}, last week",
                mode="lines",
                line={"color": colour, "width": 1, "dash": "dash"},
                opacity=0.6,
                hovertemplate=f"%{{y:{hover}}} {unit}<extra>{name} last week</extra>",
            )
    return fig
