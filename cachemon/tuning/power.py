"""How many more days a running experiment needs: the outlook beside each
decision.

The decision asks the hit-rate gain's confidence-sequence lower bound to
clear the margin. At the analysis of day `d` the interval is
estimate ± h(n, N*), with n keys so far, per-key variance σ² (the observed,
CUPED-adjusted one) and the tuning N* (expected keys by the planned end;
`stats.cs_halfwidth`). The outlook projects that same width forward at the
observed gain and variance, with keys growing at the rate seen so far
(n·D/d after D days, and N* = n·max(D, T)/d for a planned duration T: an
experiment run past its end is tuned for its new end), and reports the
fewest more daily looks k with estimate − h(D = d + k) > margin.

It says plainly when the margin is out of reach: the observed gain is not
above the margin (a narrower interval around it never clears it), or more
than `MAX_DAYS` more days would be needed at this traffic; and when the
days needed run past the planned end (the duration must be extended, since
the analysis stops counting at the end).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import StrEnum

from cachemon.tuning import stats

MAX_DAYS = 365  # beyond a year more at this traffic, the margin counts as out of reach
POINTS = 100.0  # the hit rate's unit in the analysis: percentage points


class Reach(StrEnum):
    """Whether (and when) the lower bound can clear the margin; the value is stored."""

    CLEARED = "cleared"  # the lower bound is above the margin now
    WITHIN_PLAN = "within the planned duration"
    PAST_END = "past the planned end"  # reachable only by extending the duration
    GAIN_BELOW_MARGIN = "out of reach: gain not above the margin"
    TOO_SLOW = "out of reach at this traffic"


@dataclass(frozen=True)
class Outlook:
    """The days one treatment still needs before its hit-rate gain's lower
    bound clears the margin, at the observed gain and variance."""

    treatment: str
    reach: Reach
    days_more: int | None  # more daily analyses; None when out of reach
    estimate: float  # the gain now, points
    lower: float  # its lower bound now, points
    margin: float  # points
    days_so_far: float  # days of data analysed
    planned_days: float  # the experiment's duration
    unit_variance: float  # the gain's variance per key, points²
    units: int  # keys in the two cohorts so far
    all_units: int  # keys in every cohort so far (N* counts them all)
    level: float  # the interval's level (Holm's step level among treatments)

    @property
    def headline(self) -> str:
        """The short figure a KPI shows: '0 (cleared)', '12', '40 (past the planned end)'."""
        if self.days_more is None:
            return "out of reach"
        if self.reach == Reach.PAST_END:
            return f"{self.days_more} (past the planned end)"
        return f"{self.days_more} (cleared)" if self.reach == Reach.CLEARED else str(self.days_more)

    @property
    def line(self) -> str:
        """Headline and sentence for one line, the headline once ('out of
        reach: the gain …', not 'out of reach: out of reach: …')."""
        return self.text if self.text.startswith(self.headline) else f"{self.headline}: {self.text}"

    @property
    def text(self) -> str:
        """One plain sentence: how many more days, or why the margin is out of reach."""
        gain = f"the gain {self.estimate:.2f} points (lower bound {self.lower:.2f})"
        left = max(self.planned_days - self.days_so_far, 0.0)
        if self.reach == Reach.CLEARED:
            return f"{gain} clears the {self.margin:g}-point margin now"
        if self.reach == Reach.GAIN_BELOW_MARGIN:
            return (
                f"out of reach: {gain} is not above the {self.margin:g}-point margin; more days "
                "narrow the interval around the gain, never above the margin"
            )
        if self.reach == Reach.TOO_SLOW:
            return (
                f"out of reach at this traffic: at {gain} and the variance seen so far, the "
                f"{self.margin:g}-point margin needs more than {MAX_DAYS} more days"
            )
        more = f"{self.days_more} more day{'s' if self.days_more != 1 else ''}"
        if self.reach == Reach.PAST_END:
            total = math.ceil(self.days_so_far + self.days_more)
            return (
                f"needs {more} at {gain} and the variance seen so far: past the planned end "
                f"({left:g} days left); the duration must be at least {total}d"
            )
        return f"needs {more} at {gain} and the variance seen so far ({left:g} days left)"

    def to_json(self) -> dict:
        return asdict(self) | {"headline": self.headline, "text": self.text}

    @classmethod
    def from_json(cls, d: dict | None) -> Outlook | None:
        """An outlook read back from `to_json` (None for analyses stored before it existed)."""
        if d is None:
            return None
        fields = {k: v for k, v in d.items() if k not in ("headline", "text")}
        return cls(**(fields | {"reach": Reach(d["reach"])}))


def lower_bound(o: Outlook, days: float) -> float:
    """The gain's projected lower bound (points) after `days` days of data in
    all: the same confidence-sequence width the analysis computes, with keys
    and N* grown at the observed rate."""
    grow = days / o.days_so_far
    tuning_n = o.all_units * max(days, o.planned_days) / o.days_so_far
    return o.estimate - stats.cs_halfwidth(o.unit_variance, o.units * grow, tuning_n, o.level)


def outlook(
    treatment: str,
    diff: stats.Difference,
    level: float,
    margin: float,
    days_so_far: float,
    planned_days: float,
    all_units: int,
) -> Outlook:
    """The outlook of one treatment from its hit-rate difference `diff` (as a
    ratio, CUPED-adjusted, the one the decision uses) at the interval level
    `level`, after `days_so_far` of a `planned_days` experiment with
    `all_units` keys in all its cohorts so far."""
    if days_so_far <= 0 or planned_days <= 0:
        raise ValueError(f"days so far ({days_so_far}) and planned ({planned_days}) must be > 0")
    base = Outlook(
        treatment,
        Reach.CLEARED,
        0,
        POINTS * diff.estimate,
        POINTS * diff.estimate,
        margin,
        days_so_far,
        max(planned_days, days_so_far),
        diff.variance * diff.n * POINTS**2,
        diff.n,
        all_units,
        level,
    )
    o = _with(base, lower=lower_bound(base, days_so_far))
    if o.lower > margin:
        return o
    if o.estimate <= margin:
        return _with(o, reach=Reach.GAIN_BELOW_MARGIN, days_more=None)
    # The width shrinks monotonically with more days: the first day that clears.
    for k in range(1, MAX_DAYS + 1):
        if lower_bound(o, days_so_far + k) > margin:
            past = days_so_far + k > o.planned_days + 1e-9
            return _with(o, reach=Reach.PAST_END if past else Reach.WITHIN_PLAN, days_more=k)
    return _with(o, reach=Reach.TOO_SLOW, days_more=None)


def _with(o: Outlook, **changes) -> Outlook:
    return Outlook(**(o.__dict__ | changes))
