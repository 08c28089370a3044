"""The variance of a cohort's p95 latency with keys as the unit.

Requests of one key are not independent: a hot key is served from the edge
(fast), a rare one from KV or the origin (slow), so the tier mix of a
cohort's keys drives its latency quantiles. The store has, per key, its
requests by tier, and per cohort and tier a latency histogram. Writing the
cohort's latency CDF as a mixture F(q) = Σ_tier share_tier · F_tier(q), the
estimate of F at the quantile q is a per-key ratio metric

    F̂(q) = Σ_keys Σ_tier n_{key,tier} F_tier(q) / Σ_keys n_key

whose variance the delta method gives with keys as units; the quantile's
variance follows as Var(F̂(q)) / f(q)², f the density at q (the standard
asymptotic of a quantile). The within-tier latency distributions are taken
as known, and each request's own draw from its tier's distribution adds
Σ F_t(1 − F_t) w² / (Σ w)² (w the sample weights).
"""

from __future__ import annotations

import numpy as np

from cachemon.events import TIERS
from cachemon.histogram import bucket_value
from cachemon.tuning.stats import RatioStats

DENSITY_STEP = 0.05  # ±5 % around q: wider than two 2 % buckets


class Cdf:
    """The CDF of a histogram (buckets, weights)."""

    def __init__(self, buckets, weights):
        order = np.argsort(np.asarray(buckets))
        self.values = bucket_value(np.asarray(buckets)[order])
        w = np.asarray(weights, dtype=float)[order]
        self.cum = np.cumsum(w) / w.sum() if w.sum() > 0 else np.zeros(len(w))

    def __call__(self, q: float) -> float:
        i = np.searchsorted(self.values, q, side="right")
        return float(self.cum[i - 1]) if i > 0 else 0.0


def quantile_variance(
    q: float,
    tier_counts: dict[str, np.ndarray],
    tier_cdfs: dict[str, Cdf],
    cohort_cdf: Cdf,
    weight_squares: dict[str, float] | None = None,
) -> float:
    """Variance of the cohort's quantile `q` (ms²) with keys as units.
    `tier_counts[t]` are per-key request counts (same key order in all);
    `weight_squares[t]` the sum of squared sample weights of tier t's
    requests, for the part of the variance that is each request's own
    draw from its tier's latency distribution (sampled data points count
    with their weight)."""
    d = sum(tier_counts[t] for t in TIERS)
    m = sum(tier_counts[t] * tier_cdfs[t](q) for t in TIERS if t in tier_cdfs)
    var_f = RatioStats.of(m, d).variance
    total = float(d.sum())
    for t, w2 in (weight_squares or {}).items():
        if t in tier_cdfs and total > 0:
            f = tier_cdfs[t](q)
            var_f += f * (1 - f) * w2 / total**2
    lo, hi = q * (1 - DENSITY_STEP), q * (1 + DENSITY_STEP)
    density = (cohort_cdf(hi) - cohort_cdf(lo)) / (hi - lo)
    return var_f / density**2 if density > 0 else float("inf")
