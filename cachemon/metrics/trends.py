"""Trends: the cache's figures over a long range in equal time buckets.

The dashboard's charts of hit rates, latency percentiles, volume, errors,
queue depth; the cost per day is `cachemon.costs.usage.daily_costs`. Buckets are aligned to multiples of the step
(UTC); the first is whole, the last ends where the data ends. Counts come
from the hourly rollups when the step is whole hours (a month is 720 hours
of rows, not 43,200 minutes), from the minute rollups otherwise; quantiles
from each bucket's merged histogram, never averaged.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb
import numpy as np
import pandas as pd

from cachemon.clock import DAY, HOUR, MINUTE, Window, floor_to
from cachemon.errors import InputError
from cachemon.events import TIERS
from cachemon.histogram import grouped_quantiles
from cachemon.store import horizons
from cachemon.store.queries import data_end, three_ranges, window_params

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


@dataclass(frozen=True)
class Range:
    """A trend range the dashboard offers, with its bucket size."""

    name: str
    length: timedelta
    step: timedelta


RANGES = {
    r.name: r
    for r in (
        Range("24h", DAY, timedelta(minutes=15)),
        Range("7d", 7 * DAY, HOUR),
        Range("30d", 30 * DAY, 6 * HOUR),
    )
}
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


def parse_range(text: str) -> Range:
    """A Range by name (24h, 7d, 30d)."""
    if text not in RANGES:
        raise InputError(f"unknown trend range {text!r}: use one of {', '.join(RANGES)}")
    return RANGES[text]


def window_for(con: duckdb.DuckDBPyConnection, r: Range, at: datetime) -> Window:
    """The range ending at the newest data before `at`, starting on a step
    boundary (EmptyStoreError without data)."""
    end = floor_to(data_end(con, at), MINUTE)
    return Window(floor_to(end - r.length, r.step), end)


def trend(
    con: duckdb.DuckDBPyConnection, window: Window, step: timedelta, endpoint: str | None = None
) -> pd.DataFrame:
    """One row per bucket of `window` with data, columns COLUMNS: requests
    per tier, rates in percent, latency quantiles in ms, queue depth."""
    if step % MINUTE or step <= timedelta(0):
        raise InputError(f"trend step must be whole minutes, got {step}")
    horizons.check_read(con, window.start, "the trend")
    p = _params(window, step) | {"endpoint": endpoint}
    tiers = pd.DataFrame(
        con.execute(TIER_BUCKETS, p).fetchall(), columns=["time", "tier", "requests", "errors"]
    )
    if tiers.empty:
        return pd.DataFrame(columns=COLUMNS)
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
        df[name] = [q.get(t, (None,) * 3)[i] for t in df.index]
    queue = {
        b: (float(mx), float(mean))
        for b, mx, mean in con.execute(
            QUEUE_BUCKETS, {"step": p["step"], "lo": window.start, "hi": window.end}
        ).fetchall()
    }
    df["queue_depth_max"] = [queue.get(t, (np.nan, np.nan))[0] for t in df.index]
    df["queue_depth_mean"] = [queue.get(t, (np.nan, np.nan))[1] for t in df.index]
    df = df.reset_index()
    df["time"] = pd.to_datetime(df["time"], utc=True)
    ends = (df["time"] + step).clip(upper=pd.Timestamp(window.end))
    df["minutes"] = (ends - df["time"]).dt.total_seconds() / 60
    return df[list(COLUMNS)].sort_values("time", ignore_index=True)


def _params(window: Window, step: timedelta) -> dict:
    seconds = int(step.total_seconds())
    if step % HOUR == timedelta(0) and window.start == floor_to(window.start, HOUR):
        return window_params(window) | {"step": seconds}
    # Buckets shorter than an hour cannot use the hourly rollups.
    s, e = window.start, window.end
    return {"h_lo": s, "h_hi": s, "m1_lo": s, "m1_hi": e, "m2_lo": e, "m2_hi": e, "step": seconds}
