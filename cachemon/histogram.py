"""Log-bucket latency histograms (the DDSketch mapping).

A value v > 0 falls in bucket ceil(ln v / ln γ) with γ = (1+α)/(1−α).
Every value in bucket k lies in (γ^(k−1), γ^k], and the bucket's
representative 2γ^k/(1+γ) is within α of each of them, so a quantile read
from merged bucket counts is within α relative error of the exact one.
Merging two histograms is adding counts per bucket: exact, and plain SQL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ALPHA = 0.01
GAMMA = (1 + ALPHA) / (1 - ALPHA)
LN_GAMMA = math.log(GAMMA)
# Zero latencies (a sub-millisecond edge hit rounded down) get a bucket of
# their own, far below any real bucket, whose representative is exactly 0.
ZERO_BUCKET = -(2**31) + 1


def bucket_of(values: np.ndarray) -> np.ndarray:
    """Bucket index of each latency (ms); values must be >= 0."""
    v = np.asarray(values, dtype=np.float64)
    out = np.full(v.shape, ZERO_BUCKET, dtype=np.int64)
    pos = v > 0
    out[pos] = np.ceil(np.log(v[pos]) / LN_GAMMA).astype(np.int64)
    return out


def bucket_value(buckets: np.ndarray) -> np.ndarray:
    """Representative value of each bucket index."""
    b = np.asarray(buckets, dtype=np.int64)
    out = 2.0 * np.power(GAMMA, b.astype(np.float64)) / (1.0 + GAMMA)
    return np.where(b == ZERO_BUCKET, 0.0, out)


@dataclass(frozen=True)
class Histogram:
    """Merged bucket counts (weighted), sorted by bucket."""

    buckets: tuple[int, ...]
    counts: tuple[float, ...]

    @classmethod
    def from_pairs(cls, buckets, counts) -> Histogram:
        b = np.asarray(buckets, dtype=np.int64)
        c = np.asarray(counts, dtype=np.float64)
        order = np.argsort(b, kind="stable")
        return cls(tuple(int(x) for x in b[order]), tuple(float(x) for x in c[order]))

    @property
    def total(self) -> float:
        return float(sum(self.counts))

    def quantile(self, q: float) -> float | None:
        """The q-quantile (inverted CDF: smallest value whose cumulative
        weight reaches q of the total), or None for an empty histogram."""
        return sorted_quantiles(
            np.asarray(self.buckets, dtype=np.int64), np.asarray(self.counts), (q,)
        )[0]


def grouped_quantiles(groups, buckets: np.ndarray, counts: np.ndarray, qs) -> dict:
    """Quantiles of many histograms in one pass: rows sorted by group, then
    bucket; returns {group: (quantile, ...)} (a series of windows)."""
    if not len(buckets):
        return {}
    buckets, counts = np.asarray(buckets, dtype=np.int64), np.asarray(counts, dtype=np.float64)
    cuts = np.flatnonzero(np.asarray(groups[1:] != groups[:-1])) + 1
    return {
        groups[lo]: tuple(sorted_quantiles(buckets[lo:hi], counts[lo:hi], qs))
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(buckets)])
    }


def sorted_quantiles(buckets: np.ndarray, counts: np.ndarray, qs) -> list[float | None]:
    """Quantiles (inverted CDF) of one histogram given as arrays sorted by
    bucket; None for an empty one. No per-bucket Python objects, so a
    series of many histograms stays cheap."""
    if any(not 0 <= q <= 1 for q in qs):
        raise ValueError(f"quantiles must be in [0, 1], got {qs}")
    cum = np.cumsum(np.asarray(counts, dtype=np.float64))
    if not len(cum) or cum[-1] <= 0:
        return [None] * len(qs)
    # A relative tolerance keeps float rounding of the running sum from
    # stepping past the bucket that really holds the quantile.
    idx = np.minimum(
        np.searchsorted(cum, np.asarray(qs) * cum[-1] * (1 - 1e-12), side="left"), len(cum) - 1
    )
    return [float(v) for v in bucket_value(buckets[idx])]
