"""Stored analyses of the TTL experiments: `experiment_results`, written by
the daily job (`save`), by the demo (`backfill`), and read back raw
(`history`, what an analyst's query sees) or typed (`stored`); and their
readout (the Experiments page's): each metric's lift and verdict (`lifts`),
the hit-rate confidence sequence over the stored analyses (`sequence`), the
sample-ratio check in words (`split`), the days still needed in words
(`explain`) and the analysis a promotion was decided on (`at_the_time`).

The decision itself is `cachemon.tuning.analysis`; this module only keeps it
and reads it back.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from enum import StrEnum
from fractions import Fraction

import duckdb

from cachemon import jsontext
from cachemon.clock import DAY, floor_to
from cachemon.pricing import Pricing, R2Lookup
from cachemon.tuning import stats
from cachemon.tuning.analysis import Analysis, Comparison, Decision, analyze
from cachemon.tuning.experiments import Experiment
from cachemon.tuning.power import MAX_DAYS, Outlook, Reach

SAVE = "INSERT INTO experiment_results VALUES (?, ?, ?, ?)"
HISTORY = "SELECT analyzed_at, decision, payload FROM experiment_results WHERE experiment = ? ORDER BY analyzed_at"


def backfill(
    con: duckdb.DuckDBPyConnection,
    experiments: tuple[Experiment, ...],
    since: datetime,
    until: datetime,
    pricing: Pricing,
    daily_at: time,
    r2_lookup: R2Lookup = R2Lookup.REHYDRATION,
) -> int:
    """Store the analyses the daily job (at `daily_at` UTC) would have made
    in (since, until] (the demo's history of decisions); returns how many."""
    n = 0
    slot = floor_to(since, DAY) + timedelta(hours=daily_at.hour, minutes=daily_at.minute)
    while slot <= until:
        for e in experiments:
            if since < slot and e.start <= slot:
                save(con, analyze(con, e, slot, pricing, r2_lookup))
                n += 1
        slot += DAY
    return n


def reset(con: duckdb.DuckDBPyConnection) -> None:
    """Forget every stored analysis (the demo replaces the data they described)."""
    con.execute("DELETE FROM experiment_results")


def save(con: duckdb.DuckDBPyConnection, a: Analysis) -> None:
    """Keep analysis `a` (the daily job's, the CLI's `analyze` or a backfill's)."""
    con.execute(SAVE, [a.experiment, a.at, a.decision, jsontext.dumps(a.to_json())])


def history(con: duckdb.DuckDBPyConnection, experiment: str) -> list[dict]:
    """Every stored analysis of `experiment`, oldest first, as raw JSON
    (what an analyst's query sees). Code reads `stored` instead."""
    return [
        {"analyzed_at": t, "decision": d, "result": json.loads(p)}
        for t, d, p in con.execute(HISTORY, [experiment]).fetchall()
    ]


@dataclass(frozen=True)
class Stored:
    """One stored analysis, typed."""

    analyzed_at: datetime
    decision: Decision
    analysis: Analysis


def stored(con: duckdb.DuckDBPyConnection, experiment: str) -> list[Stored]:
    """Every stored analysis of `experiment`, oldest first, read back into
    dataclasses (the dashboard reads `stored(...)[-1].analysis.srm_p`, never
    a JSON key)."""
    return [
        Stored(t, Decision(d), Analysis.from_json(json.loads(p)))
        for t, d, p in con.execute(HISTORY, [experiment]).fetchall()
    ]


# The readout: stored analyses as the Experiments page (GrowthBook's results
# page) shows them. Nothing here computes a statistic: every figure is one the
# analysis stored, put side by side.

# Whether a metric's higher value is an improvement (a cohort value's unit and a
# lift's unit are `experiments.METRIC_UNITS` and `VALUE_UNITS`).
HIGHER_IS_BETTER = {
    "hit_rate": True,
    "cost_per_request": False,
    "error_rate": False,
    "p95_latency": False,
}
# A cohort's value of each metric, in the unit the analysis stores it.
VALUE_UNITS = {
    "hit_rate": "%",
    "cost_per_request": "USD per 1M requests",
    "error_rate": "%",
    "p95_latency": "ms",
}


class Verdict(StrEnum):
    """A lift's interval against zero, read in the metric's direction."""

    BETTER = "better"  # the whole interval is on the improving side of zero
    WORSE = "worse"  # the whole interval is on the worsening side
    UNCLEAR = "no clear difference"  # the interval holds zero (or there is none)


@dataclass(frozen=True)
class Lift:
    """One metric of one treatment against the control, as stored."""

    metric: str
    control: float
    treatment: float
    absolute: float  # treatment − control in the lift unit (CUPED-adjusted for the hit rate)
    relative: float | None  # absolute / control, a fraction; None when the control is 0
    lower: float | None  # the absolute lift's always-valid interval
    upper: float | None
    p_value: float | None  # always-valid, Holm-adjusted
    verdict: Verdict
    # The absolute lift is not treatment − control: the hit rate's CUPED
    # adjustment (each key's pre-period hit rate) moved it.
    adjusted: bool


def lifts(c: Comparison) -> tuple[Lift, ...]:
    """Each metric of comparison `c` with its relative lift and its verdict."""
    out = []
    for m in c.metrics:
        up = HIGHER_IS_BETTER.get(m.metric, True)
        if m.lower is not None and m.lower > 0:
            verdict = Verdict.BETTER if up else Verdict.WORSE
        elif m.upper is not None and m.upper < 0:
            verdict = Verdict.WORSE if up else Verdict.BETTER
        else:
            verdict = Verdict.UNCLEAR
        raw = m.treatment - m.control
        out.append(
            Lift(
                m.metric,
                m.control,
                m.treatment,
                m.estimate,
                m.estimate / m.control if m.control else None,
                m.lower,
                m.upper,
                m.p_value,
                verdict,
                # Rounding of the scaled values aside (relative to the values, not the lift).
                abs(m.estimate - raw) > 1e-9 * max(abs(m.control), abs(m.treatment), 1.0),
            )
        )
    return tuple(out)


@dataclass(frozen=True)
class Point:
    """One stored analysis's hit-rate lift of one treatment: a point of the
    confidence sequence over time (points)."""

    at: datetime
    estimate: float
    lower: float
    upper: float
    decision: Decision


def sequence(history: list[Stored], treatment: str) -> tuple[list[Point], list[Stored]]:
    """The hit-rate confidence sequence of `treatment`, one point per stored
    analysis that has one, oldest first; and the analyses without one (still
    collecting, or blocked by SRM), so a page can say why they are missing."""
    points, without = [], []
    for s in history:
        m = next(
            (
                m
                for c in s.analysis.comparisons
                if c.treatment == treatment
                for m in c.metrics
                if m.metric == "hit_rate" and m.lower is not None and m.upper is not None
            ),
            None,
        )
        if m is None:
            without.append(s)
            continue
        decision = next(c.decision for c in s.analysis.comparisons if c.treatment == treatment)
        points.append(Point(s.analysis.at, m.estimate, m.lower, m.upper, decision))
    return points, without


def _share(x: float) -> str:
    return f"{100 * x:.2f} %"


def _p(p: float) -> str:
    return "p < 0.0001" if p < 0.0001 else f"p = {p:.4f}"


@dataclass(frozen=True)
class Split:
    """The sample-ratio check of one analysis: keys per cohort against the
    scheme's exact allocation."""

    cohorts: tuple[str, ...]
    observed: tuple[int, ...]
    configured: tuple[Fraction, ...]
    p_value: float | None

    @property
    def mismatch(self) -> bool:
        """The split fails the check (`stats.SRM_P`, read when asked)."""
        return self.p_value is not None and self.p_value < stats.SRM_P

    @property
    def shares(self) -> tuple[float, ...]:
        """The observed share of keys of each cohort."""
        total = sum(self.observed)
        return tuple(n / total if total else 0.0 for n in self.observed)

    @property
    def text(self) -> str:
        """What the check means, in words."""
        names = " / ".join(self.cohorts)
        seen = (
            f"observed {' / '.join(_share(s) for s in self.shares)} of keys "
            f"({' / '.join(f'{n:,}' for n in self.observed)}, {names}) against the configured "
            f"{' / '.join(_share(float(a)) for a in self.configured)}"
        )
        if self.p_value is None:
            return (
                f"The split cannot be checked yet: {seen}; the check needs at least "
                f"{stats.MIN_UNITS_SRM} keys in every cohort."
            )
        if self.mismatch:
            return (
                f"The split is off: {seen} ({_p(self.p_value)}, below {stats.SRM_P:g}). "
                "The results cannot be trusted until the assignment is fixed; no decision "
                "is made until then."
            )
        return f"The split matches: {seen} ({_p(self.p_value)}; a mismatch is p < {stats.SRM_P:g})."


def split(e: Experiment, a: Analysis) -> Split:
    """The sample-ratio check of analysis `a` of experiment `e`."""
    counts = dict(a.units)
    return Split(
        tuple(c.name for c in e.cohorts),
        tuple(counts.get(c.name, 0) for c in e.cohorts),
        e.allocation(),
        a.srm_p,
    )


def explain(o: Outlook) -> str:
    """The days still needed in plain words: how many more days at the
    current traffic, for what, and whether that fits the planned duration."""
    target = (
        f"for the hit-rate gain's lower bound to clear the {o.margin:g}-point margin "
        f"(the gain is {o.estimate:.2f} points now, its lower bound {o.lower:.2f})"
    )
    if o.reach == Reach.CLEARED:
        return (
            f"No more days needed: the hit-rate gain's lower bound ({o.lower:.2f} points) "
            f"already clears the {o.margin:g}-point margin."
        )
    if o.reach == Reach.GAIN_BELOW_MARGIN:
        return (
            f"Out of reach: the observed gain ({o.estimate:.2f} points) is not above the "
            f"{o.margin:g}-point margin; more days narrow the interval around it but never "
            "lift it above the margin."
        )
    if o.reach == Reach.TOO_SLOW:
        return f"Out of reach at the current traffic: more than {MAX_DAYS} more days {target}."
    days = f"About {o.days_more} more day{'s' if o.days_more != 1 else ''} at the current traffic"
    left = max(o.planned_days - o.days_so_far, 0.0)
    if o.reach == Reach.PAST_END:
        total = math.ceil(o.days_so_far + (o.days_more or 0))
        return (
            f"{days} {target}: past the planned end ({left:.1f} days left), so the duration "
            f"must grow to at least {total} days."
        )
    return f"{days} {target}, within the planned duration ({left:.1f} days left)."


def at_the_time(history: list[Stored], t: datetime) -> Stored | None:
    """The newest stored analysis made at or before `t` (what a promotion at
    `t` was decided on); None when there is none."""
    before = [s for s in history if s.analyzed_at <= t]
    return before[-1] if before else None
