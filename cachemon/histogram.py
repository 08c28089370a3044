"""Log-bucket latency histograms (the DDSketch mapping).

A value v > 0 falls in bucket ceil(ln v / ln γ) with γ = (1+α)/(1−α).
Every value in bucket k lies in (γ^(k−1), γ^k], and the bucket's
representative 2γ^k/(1+γ) is within α of each of them, so a quantile read
from merged bucket counts is within α relative error of the exact one.
Merging two histograms is adding counts per bucket: exact, and plain SQL.

One window's histogram (`Histogram`: a few hundred buckets at most) is read
in plain Python, so `cachemon metrics` starts without numpy; a series of
windows (`grouped_quantiles`) and the bucketing of raw values use numpy,
imported when called. Both give the same quantiles to the last bit: the
same running sums, the same search and one representative per bucket
(`one_bucket_value`, the C library's power as in DuckDB's `v1.bucket_ms`;
numpy's vectorised power rounds the last bit differently for some buckets).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

ALPHA = 0.01
GAMMA = (1 + ALPHA) / (1 - ALPHA)
LN_GAMMA = math.log(GAMMA)
# Zero latencies (a sub-millisecond edge hit rounded down) get a bucket of
# their own, far below any real bucket, whose representative is exactly 0.
ZERO_BUCKET = -(2**31) + 1
# A relative tolerance keeps float rounding of the running sum from stepping
# past the bucket that really holds the quantile.
_TOLERANCE = 1 - 1e-12


def bucket_of(values: np.ndarray) -> np.ndarray:
    """Bucket index of each latency (ms); values must be >= 0."""
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    out = np.full(v.shape, ZERO_BUCKET, dtype=np.int64)
    pos = v > 0
    out[pos] = np.ceil(np.log(v[pos]) / LN_GAMMA).astype(np.int64)
    return out


def bucket_value(buckets: np.ndarray) -> np.ndarray:
    """Representative value of each bucket index (`one_bucket_value` of each)."""
    import numpy as np

    b = np.asarray(buckets, dtype=np.int64)
    distinct, where = np.unique(b, return_inverse=True)
    values = np.array([one_bucket_value(int(k)) for k in distinct], dtype=np.float64)
    return values[where].reshape(b.shape)


def one_bucket_value(bucket: int) -> float:
    """Representative value of one bucket index, 2γ^k/(1+γ) (0 for ZERO_BUCKET)."""
    if bucket == ZERO_BUCKET:
        return 0.0
    try:
        power = GAMMA ** float(bucket)
    except OverflowError:  # past float's range (a latency beyond 1e308 ms)
        power = math.inf
    return 2.0 * power / (1.0 + GAMMA)


@dataclass(frozen=True)
class Histogram:
    """Merged bucket counts (weighted), sorted by bucket."""

    buckets: tuple[int, ...]
    counts: tuple[float, ...]

    @classmethod
    def from_pairs(cls, buckets, counts) -> Histogram:
        """The histogram of (bucket, count) pairs given as two sequences in
        any order (a bucket given twice stays two entries)."""
        b = [int(x) for x in buckets]
        c = [float(x) for x in counts]
        if len(b) != len(c):
            raise ValueError(
                f"a histogram needs one count per bucket: {len(b)} buckets, {len(c)} counts"
            )
        order = sorted(range(len(b)), key=b.__getitem__)  # stable, as numpy's argsort
        return cls(tuple(b[i] for i in order), tuple(c[i] for i in order))

    @property
    def total(self) -> float:
        return float(sum(self.counts))

    def quantile(self, q: float) -> float | None:
        """The q-quantile (inverted CDF: smallest value whose cumulative
        weight reaches q of the total), or None for an empty histogram and for
        one with a count that is no weight (negative, NaN or infinite, as an
        older store can hold): the quantile is then unknown, not a guess."""
        return self.quantiles((q,))[0]

    def quantiles(self, qs: Sequence[float]) -> list[float | None]:
        """`quantile` of each of `qs`, in plain Python (`sorted_quantiles`'
        figures exactly)."""
        _check_quantiles(qs)
        cum = list(accumulate(self.counts))
        if not cum or cum[-1] <= 0 or not all(0 <= c < math.inf for c in self.counts):
            return [None] * len(qs)
        last = len(cum) - 1
        out: list[float | None] = []
        for q in qs:
            target = q * cum[-1] * _TOLERANCE
            # q = 0: the first bucket with weight (none lies below it).
            i = bisect_left(cum, target) if target > 0 else bisect_right(cum, 0.0)
            out.append(one_bucket_value(self.buckets[min(i, last)]))
        return out


def grouped_quantiles(groups, buckets: np.ndarray, counts: np.ndarray, qs) -> dict:
    """Quantiles of many histograms in one pass: rows sorted by group, then
    bucket; returns {group: (quantile, ...)} (a series of windows)."""
    import numpy as np

    _check_quantiles(qs)
    if not len(buckets):
        return {}
    buckets, counts = np.asarray(buckets, dtype=np.int64), np.asarray(counts, dtype=np.float64)
    cuts = np.flatnonzero(np.asarray(groups[1:] != groups[:-1])) + 1
    return {
        groups[lo]: tuple(_quantiles_of_arrays(buckets[lo:hi], counts[lo:hi], qs))
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(buckets)])
    }


def sorted_quantiles(buckets: np.ndarray, counts: np.ndarray, qs) -> list[float | None]:
    """Quantiles (inverted CDF) of one histogram given as arrays sorted by
    bucket; None for an empty one or one with a count that is no weight. No per-bucket Python objects, so a
    series of many histograms stays cheap."""
    import numpy as np

    _check_quantiles(qs)
    counts = np.asarray(counts, dtype=np.float64)
    return _quantiles_of_arrays(np.asarray(buckets, dtype=np.int64), counts, qs)


def _quantiles_of_arrays(buckets: np.ndarray, counts: np.ndarray, qs) -> list[float | None]:
    """`sorted_quantiles` of arrays (quantiles already checked)."""
    import numpy as np

    cum = np.cumsum(counts)
    if not len(cum) or cum[-1] <= 0 or not ((counts >= 0) & np.isfinite(counts)).all():
        return [None] * len(qs)
    targets = np.asarray(qs) * cum[-1] * _TOLERANCE
    # q = 0: the first bucket with weight (none lies below it).
    idx = np.where(
        targets > 0, np.searchsorted(cum, targets, side="left"), np.searchsorted(cum, 0.0, "right")
    )
    return [one_bucket_value(int(b)) for b in buckets[np.minimum(idx, len(cum) - 1)]]


def _check_quantiles(qs) -> None:
    if any(not 0 <= q <= 1 for q in qs):
        raise ValueError(f"quantiles must be in [0, 1], got {qs}")
