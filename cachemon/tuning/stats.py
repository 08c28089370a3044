"""Experiment statistics, as pure functions over sufficient statistics (in
the style of GrowthBook's gbstats).

Keys are the randomised unit, so a hit rate (hits / requests) is a ratio
metric: per key we keep the numerator m and denominator d, and per cohort
only n, Σm, Σd, Σm², Σd², Σmd. The delta method gives the variance of
Σm/Σd from those (Deng, Knoblich, Lu 2018). Two cohorts' statistics merge by
adding their sums, so a day's statistics add to the previous days'.

Decisions checked every day use an asymptotic confidence sequence
(Waudby-Smith et al. 2021, as GrowthBook's sequential testing): its
interval holds at every look at once, so daily peeking does not inflate
false winners.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# scipy.special, not scipy.stats: the same functions, a quarter of the import
# time; imported by the two functions that use it, so that commands and the
# runner that never test an experiment start without scipy.

# The sample-ratio-mismatch threshold, the one definition: key counts whose
# chi-square p-value against the scheme's exact allocation is below it block
# every decision (`Srm.mismatch`). The analysis, the CLI and the dashboard
# read it from here. 0.001 (GrowthBook's default): the check runs at every
# daily look, and a looser level would stop healthy experiments by chance.
SRM_P = 0.001
MIN_UNITS_SRM = 8  # per cohort: below it the chi-square test is not run


@dataclass(frozen=True)
class RatioStats:
    """Sufficient statistics of a ratio metric over units (keys)."""

    n: int
    sum_m: float
    sum_d: float
    sum_m2: float
    sum_d2: float
    sum_md: float

    @classmethod
    def of(cls, m: Sequence[float], d: Sequence[float]) -> RatioStats:
        """From per-unit numerators and denominators (raw input, once)."""
        m, d = np.asarray(m, dtype=float), np.asarray(d, dtype=float)
        if m.shape != d.shape:
            raise ValueError("numerators and denominators differ in length")
        return cls(
            len(m),
            float(m.sum()),
            float(d.sum()),
            float((m * m).sum()),
            float((d * d).sum()),
            float((m * d).sum()),
        )

    def __add__(self, other: RatioStats) -> RatioStats:
        return RatioStats(
            self.n + other.n,
            self.sum_m + other.sum_m,
            self.sum_d + other.sum_d,
            self.sum_m2 + other.sum_m2,
            self.sum_d2 + other.sum_d2,
            self.sum_md + other.sum_md,
        )

    @property
    def ratio(self) -> float:
        return self.sum_m / self.sum_d if self.sum_d else float("nan")

    @property
    def variance(self) -> float:
        """Delta-method variance of the ratio Σm/Σd."""
        n = self.n
        if n < 2 or not self.sum_d:
            return float("nan")
        mu_m, mu_d = self.sum_m / n, self.sum_d / n
        var_m = (self.sum_m2 - n * mu_m**2) / (n - 1)
        var_d = (self.sum_d2 - n * mu_d**2) / (n - 1)
        cov = (self.sum_md - n * mu_m * mu_d) / (n - 1)
        r = mu_m / mu_d
        return max(0.0, (var_m - 2 * r * cov + r * r * var_d) / (mu_d**2 * n))


@dataclass(frozen=True)
class Difference:
    """Treatment minus control of a ratio metric."""

    estimate: float
    variance: float
    n: int  # units in both cohorts

    @classmethod
    def of(cls, control: RatioStats, treatment: RatioStats) -> Difference:
        return cls(
            treatment.ratio - control.ratio,
            treatment.variance + control.variance,
            control.n + treatment.n,
        )

    def fixed_interval(self, alpha: float = 0.05) -> tuple[float, float]:
        """The fixed-horizon (one look) interval, for comparison."""
        from scipy import special

        h = special.ndtri(1 - alpha / 2) * math.sqrt(self.variance)  # the normal quantile
        return self.estimate - h, self.estimate + h

    def sequence_interval(self, alpha: float, tuning_n: float) -> tuple[float, float]:
        """The asymptotic confidence sequence at this look: valid at every
        look. `tuning_n` is the expected total units (GrowthBook's N*)."""
        h = cs_halfwidth(self.variance * self.n, self.n, tuning_n, alpha)
        return self.estimate - h, self.estimate + h

    def sequence_p(self, tuning_n: float) -> float:
        """Always-valid p-value: the smallest α whose sequence excludes 0."""
        if self.variance <= 0 or self.n < 2:
            return 1.0
        lo, hi = 1e-12, 0.999  # α = 1 makes the sequence degenerate (ρ = 0)
        if not _excludes_zero(self, hi, tuning_n):
            return 1.0
        for _ in range(60):
            mid = math.sqrt(lo * hi)
            lo, hi = (lo, mid) if _excludes_zero(self, mid, tuning_n) else (mid, hi)
        return hi


def _excludes_zero(d: Difference, alpha: float, tuning_n: float) -> bool:
    lo, hi = d.sequence_interval(alpha, tuning_n)
    return lo > 0 or hi < 0


def cs_rho(alpha: float, tuning_n: float) -> float:
    return math.sqrt((-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / tuning_n)


def cs_halfwidth(unit_variance: float, n: int, tuning_n: float, alpha: float) -> float:
    """Half-width of the asymptotic confidence sequence for a mean of `n`
    units with per-unit variance `unit_variance` (GrowthBook's formula)."""
    rho = cs_rho(alpha, tuning_n)
    return math.sqrt(unit_variance) * math.sqrt(
        2 * (n * rho**2 + 1) / (n**2 * rho**2) * math.log(math.sqrt(n * rho**2 + 1) / alpha)
    )


@dataclass(frozen=True)
class Srm:
    p_value: float
    observed: tuple[int, ...]
    expected: tuple[float, ...]

    @property
    def mismatch(self) -> bool:
        return self.p_value < SRM_P


def srm(counts: Sequence[int], allocation: Sequence[float]) -> Srm | None:
    """Chi-square goodness of fit of unit counts against the scheme's real
    allocation; None below 8 units a cohort (too few to tell)."""
    from scipy import special

    counts = [int(c) for c in counts]
    if min(counts) < MIN_UNITS_SRM:
        return None
    total = sum(counts)
    expected = [total * float(a) for a in allocation]
    statistic = sum((c - e) ** 2 / e for c, e in zip(counts, expected))
    return Srm(float(special.chdtrc(len(counts) - 1, statistic)), tuple(counts), tuple(expected))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (family-wise error across metrics)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out


def days_needed(
    unit_variance: float,
    units_per_day: float,
    effect: float,
    margin: float,
    alpha: float,
    tuning_n: float,
    max_days: int = 90,
) -> int | None:
    """Days until a true gain of `effect` would be expected to clear
    `margin` with the confidence sequence (half-width ≤ effect − margin),
    at `units_per_day` new keys; None if not within `max_days`."""
    if effect <= margin:
        return None
    for day in range(1, max_days + 1):
        n = units_per_day * day
        if n >= 2 and cs_halfwidth(unit_variance, int(n), tuning_n, alpha) <= effect - margin:
            return day
    return None


def cuped(
    m: Sequence[np.ndarray], d: Sequence[np.ndarray], c: Sequence[np.ndarray]
) -> tuple[float, list[np.ndarray]]:
    """Regression adjustment (CUPED) of a ratio metric with a pre-period
    covariate: per unit, `c` = its denominator × its pre-experiment ratio
    (what it would score if nothing changed). With θ fitted on the pooled,
    linearised residuals, each arm's numerator becomes
    m − θ (c − R_c d), where R_c is the pooled covariate ratio: the arms'
    difference keeps its expectation (the covariate does not depend on the
    arm) and loses the variance the pre-period explains. Returns θ and the
    adjusted numerators, arm by arm."""
    m_all, d_all, c_all = (np.concatenate(x) for x in (m, d, c))
    if d_all.sum() <= 0:
        return 0.0, [np.asarray(x, float) for x in m]
    r, rc = m_all.sum() / d_all.sum(), c_all.sum() / d_all.sum()
    u, v = m_all - r * d_all, c_all - rc * d_all
    theta = float((u * v).sum() / (v * v).sum()) if (v * v).sum() > 0 else 0.0
    return theta, [
        np.asarray(mi, float) - theta * (np.asarray(ci, float) - rc * np.asarray(di, float))
        for mi, di, ci in zip(m, d, c)
    ]
