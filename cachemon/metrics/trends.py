"""Trends: the cache's figures over any window in equal time buckets.

The Overview's and the Trends page's charts of hit rates, latency
percentiles, volume, errors and queue depth (the cost per day is
`cachemon.costs.usage.daily_costs`). Buckets are aligned to multiples of the
step since the epoch (UTC), so a window's first and last buckets may be cut
by the window, or by where the store's data begins and ends: each row's
`minutes` is the part of its bucket inside both, and rates per minute
divide by it. Counts come from the hourly rollups for the window's whole
hours when the step is whole hours (a month is 720 hours of rows, not
43,200 minutes), from the minute rollups otherwise; quantiles from each
bucket's merged histogram, never averaged.

`coverage` is the share of a window the store has request data for: a
comparison with a period that is mostly empty (the week before the store
began) is not a change, and the dashboard says "n/a" instead.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import TYPE_CHECKING

import duckdb

from cachemon.clock import DAY, HOUR, MINUTE, Window
from cachemon.errors import InputError
from cachemon.histogram import grouped_quantiles
from cachemon.names import TIERS
from cachemon.store import horizons
from cachemon.store.queries import data_span, three_ranges, window_params

if TYPE_CHECKING:
    import pandas as pd

# Bucket starts by epoch arithmetic: exact in UTC for any step.
_BUCKET = "to_timestamp(floor(epoch({time}) / $step) * $step) AS b"

TIER_BUCKETS = f"""
SELECT b, tier, sum(requests), sum(errors)
FROM ({three_ranges(_BUCKET + ", tier, endpoint, requests, errors", "rollup_hour", "rollup_minute")})
WHERE $endpoint IS NULL OR endpoint = $endpoint
GROUP BY b, tier
"""
LATENCY_BUCKETS = f"""
SELECT b, bucket, sum(weight) AS weight
FROM ({three_ranges(_BUCKET + ", endpoint, bucket, weight", "latency_hour", "latency_minute")})
WHERE $endpoint IS NULL OR endpoint = $endpoint
GROUP BY b, bucket ORDER BY b, bucket
"""
QUEUE_BUCKETS = f"""
SELECT {_BUCKET.format(time="minute")}, max(value_max), sum(value_sum) / sum(samples)
FROM gauge_minute WHERE name = 'queue_depth' AND minute >= $lo AND minute < $hi
GROUP BY b
"""
# Minutes of a window with request data (any endpoint): a whole hour with a
# row counts 60 minutes (older hours may have no minute rows left), the
# ragged minutes at either end count one by one.
COVERED_MINUTES = """
SELECT (SELECT 60 * count(DISTINCT hour) FROM rollup_hour WHERE hour >= $h_lo AND hour < $h_hi)
     + (SELECT count(DISTINCT minute) FROM rollup_minute WHERE minute >= $m1_lo AND minute < $m1_hi)
     + (SELECT count(DISTINCT minute) FROM rollup_minute WHERE minute >= $m2_lo AND minute < $m2_hi)
"""
WEEK = 7 * DAY

COLUMNS = (
    "time",
    "minutes",
    "requests",
    *TIERS,
    "errors",
    "error_rate",
    "combined_hit_rate",
    *(f"{t}_hit_rate" for t in TIERS[:3]),
    "p50",
    "p95",
    "p99",
    "queue_depth_max",
    "queue_depth_mean",
)


def trend(
    con: duckdb.DuckDBPyConnection,
    window: Window,
    step: timedelta,
    endpoint: str | None = None,
    gaps: bool = False,
) -> pd.DataFrame:
    """One row per bucket of `window` with data, columns COLUMNS: requests
    per tier, rates in percent, latency quantiles in ms, queue depth, and
    `minutes`, the part of the bucket inside the window and the store's data
    span (what a rate per minute divides by). With `gaps`, also a
    row for each bucket without data (NaN figures), so a chart shows a gap
    where there is no data instead of a line across it."""
    import pandas as pd  # here, not at the top: the CLI starts without pandas

    if step % MINUTE or step <= timedelta(0):
        raise InputError(f"trend step must be whole minutes, got {step}")
    horizons.check_read(con, window.start, "the trend")
    p = _params(window, step) | {"endpoint": endpoint}
    tiers = pd.DataFrame(
        con.execute(TIER_BUCKETS, p).fetchall(), columns=["time", "tier", "requests", "errors"]
    )
    # The part of the window the store has data for: a bucket's rate per
    # minute divides by its minutes in there (the store's first bucket, or
    # the one where the data ends, is not a slow minute).
    measured = _measured(con, window)
    if tiers.empty:
        df = pd.DataFrame(columns=list(COLUMNS)).astype(float)
        df["time"] = pd.to_datetime(df["time"], utc=True)
        return _with_gaps(df, measured, step, window) if gaps else df
    df = tiers.pivot_table(
        index="time", columns="tier", values="requests", aggfunc="sum", fill_value=0.0
    )
    df = df.reindex(columns=list(TIERS), fill_value=0.0).astype(float)
    df["errors"] = tiers.groupby("time")["errors"].sum().astype(float)
    df["requests"] = df[list(TIERS)].sum(axis=1)
    df["error_rate"] = 100 * df["errors"] / df["requests"]
    df["combined_hit_rate"] = 100 * (1 - df["api"] / df["requests"])
    for t in TIERS[:3]:
        df[f"{t}_hit_rate"] = 100 * df[t] / df["requests"]
    cols = con.execute(LATENCY_BUCKETS, p).fetchnumpy()
    q = grouped_quantiles(
        pd.to_datetime(cols["b"], utc=True), cols["bucket"], cols["weight"], (0.5, 0.95, 0.99)
    )
    for i, name in enumerate(("p50", "p95", "p99")):
        df[name] = [_float(q.get(t, (None,) * 3)[i]) for t in df.index]
    queue = {
        b: (float(mx), float(mean))
        for b, mx, mean in con.execute(
            QUEUE_BUCKETS, {"step": p["step"], "lo": window.start, "hi": window.end}
        ).fetchall()
    }
    df["queue_depth_max"] = [queue.get(t, (math.nan, math.nan))[0] for t in df.index]
    df["queue_depth_mean"] = [queue.get(t, (math.nan, math.nan))[1] for t in df.index]
    df = df.reset_index()
    df["time"] = pd.to_datetime(df["time"], utc=True)
    df["minutes"] = _minutes_inside(df["time"], measured, step)
    df = df[list(COLUMNS)].sort_values("time", ignore_index=True)
    return _with_gaps(df, measured, step, window) if gaps else df


def bucket_starts(window: Window, step: timedelta) -> pd.DatetimeIndex:
    """The start of every bucket of `step` that overlaps `window` (aligned to
    multiples of the step since the epoch, as `trend` buckets)."""
    import pandas as pd

    first = pd.Timestamp(window.start).floor(pd.Timedelta(step))
    if window.end <= window.start:
        return pd.DatetimeIndex([], tz="UTC")
    return pd.date_range(first, pd.Timestamp(window.end), freq=step, inclusive="left")


def shifted(
    con: duckdb.DuckDBPyConnection,
    window: Window,
    step: timedelta,
    endpoint: str | None = None,
    by: timedelta = WEEK,
) -> pd.DataFrame:
    """The trend of the same window `by` earlier (default a week), its times
    moved forward by `by` onto `window`, for an overlay ("same time last
    week"). Buckets stay aligned when `by` is a multiple of `step`."""
    import pandas as pd

    if by % step:
        raise InputError(f"a shift of {by} is not a whole number of {step} buckets")
    earlier = trend(con, Window(window.start - by, window.end - by), step, endpoint, gaps=True)
    return earlier.assign(time=earlier["time"] + pd.Timedelta(by))


def coverage(con: duckdb.DuckDBPyConnection, window: Window) -> float:
    """The share (0 to 1) of `window` with request data in the store, of any
    endpoint: whole hours count by the hour, the ragged ends by the minute."""
    minutes = window.length / MINUTE
    if minutes <= 0:
        return 0.0
    (covered,) = con.execute(COVERED_MINUTES, window_params(window)).fetchone()
    return min(1.0, float(covered or 0) / minutes)


def _float(x) -> float:
    return math.nan if x is None else float(x)


def _measured(con: duckdb.DuckDBPyConnection, window: Window) -> Window:
    """The part of `window` within the store's data span (empty: none)."""
    span = data_span(con)
    if span is None:
        return Window(window.start, window.start)
    lo = min(max(window.start, span[0]), window.end)
    return Window(lo, max(lo, min(window.end, span[1])))


def _minutes_inside(starts: pd.Series, measured: Window, step: timedelta) -> pd.Series:
    """Each bucket's minutes inside the measured part of the window (the
    first and last may be cut; a bucket outside it has none)."""
    import pandas as pd

    lo, hi = pd.Timestamp(measured.start), pd.Timestamp(measured.end)
    ends = (starts + pd.Timedelta(step)).clip(upper=hi)
    return (ends - starts.clip(lower=lo)).dt.total_seconds().clip(lower=0) / 60


def _with_gaps(df: pd.DataFrame, measured: Window, step: timedelta, window: Window) -> pd.DataFrame:
    import pandas as pd

    starts = bucket_starts(window, step)
    out = df.set_index("time").reindex(starts.union(pd.DatetimeIndex(df["time"])))
    out.index.name = "time"
    out = out.reset_index()
    out["minutes"] = _minutes_inside(out["time"], measured, step)
    return out[list(COLUMNS)]


def _params(window: Window, step: timedelta) -> dict:
    seconds = int(step.total_seconds())
    if step % HOUR == timedelta(0):
        # Whole hours lie inside one bucket each: the hourly rollups count
        # them, the ragged minutes at the window's ends come from minutes.
        return window_params(window) | {"step": seconds}
    # Buckets shorter than an hour cannot use the hourly rollups.
    s, e = window.start, window.end
    return {"h_lo": s, "h_hi": s, "m1_lo": s, "m1_hi": e, "m2_lo": e, "m2_hi": e, "step": seconds}
