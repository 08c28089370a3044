"""Seasonal anomaly scoring: is this window unusual for this time of week?

History for a window ending at t is the same-length windows ending at
t − k·week + j·step for k = 1..weeks and j = −span/step..span/step: the same
minutes of earlier weeks and their neighbourhood, so one odd week does not
make the baseline. The score is the modified z-score (Iglewicz and Hoaglin)

    z = 0.6745 (x − median) / MAD

with a fallback to the mean absolute deviation (z = (x − median) /
(1.2533 · meanAD)) when over half the history is identical, and no score at
all when the history has no spread or too few points.
"""

from __future__ import annotations

from datetime import datetime, timedelta

WEEK = timedelta(days=7)
SPAN = timedelta(hours=1)
STEP = timedelta(minutes=15)
MIN_POINTS = 8


def history_ends(
    at: datetime, weeks: int, span: timedelta = SPAN, step: timedelta = STEP
) -> list[tuple[int, datetime]]:
    """(weeks back, window end) of every history window for `at`."""
    k = int(span / step)
    return [(w, at - w * WEEK + j * step) for w in range(1, weeks + 1) for j in range(-k, k + 1)]


def robust_z(value: float, history: list[float], min_points: int = MIN_POINTS) -> float | None:
    """Modified z-score of `value` against `history`, or None when the
    history is too short or has no spread to measure against."""
    import numpy as np  # heavy, and only an anomaly rule's evaluation scores

    h = np.asarray([x for x in history if x is not None and np.isfinite(x)], dtype=np.float64)
    if len(h) < min_points:
        return None
    med = float(np.median(h))
    mad = float(np.median(np.abs(h - med)))
    if mad > 0:
        return 0.6745 * (value - med) / mad
    mean_ad = float(np.mean(np.abs(h - med)))
    if mean_ad > 0:
        return (value - med) / (1.253314 * mean_ad)
    return None
