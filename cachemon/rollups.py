"""Rollups: what every source hands to the store.

Events (simulator, files) are aggregated here in DuckDB; the Analytics Engine
source gets the same tables straight from the API, aggregated there. Either
way `ingest` stores a `Rollups`, so every source takes one path.

Tables (pyarrow), one row per group:

* `minute`  — minute, tier, endpoint, experiment, cohort, requests, errors,
  bytes, latency_sum, latency_min, latency_max, events
* `latency` — minute, tier, endpoint, experiment, cohort, bucket, weight
* `gauges`  — minute, name, value_sum, samples, value_min, value_max, value_last
* `keys`    — key, endpoint, experiment, cohort, t (the minute), edge, kv,
  r2, api, errors, fill_errors, first_seen, last_seen; `fill_errors` are the
  errors of requests answered by R2 or the origin (failed fills: no KV write).
* `samples` — timestamp, endpoint, key, key_hash, tier, error, weight: the
  raw request rows of the keys whose `keyhash.key_hash` is under
  `sample_rate` (SHARDS; `None` when the source has no key hash).

Counts are sums of `sample_interval`, never row counts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cachemon import keyhash
from cachemon.clock import MINUTE, Window, floor_to
from cachemon.events import EventFrame
from cachemon.histogram import LN_GAMMA, ZERO_BUCKET

MINUTE_SQL = """
SELECT date_trunc('minute', timestamp) AS minute, tier, endpoint, experiment, cohort,
       sum(sample_interval) AS requests, sum(if(status = 'error', sample_interval, 0)) AS errors,
       sum(bytes * sample_interval) AS bytes, sum(latency_ms * sample_interval) AS latency_sum,
       min(latency_ms) AS latency_min, max(latency_ms) AS latency_max, count(*) AS events
FROM batch WHERE kind = 'request'
GROUP BY ALL ORDER BY 1
"""

LATENCY_SQL = f"""
SELECT date_trunc('minute', timestamp) AS minute, tier, endpoint, experiment, cohort,
       if(latency_ms > 0, CAST(ceil(ln(latency_ms) / {LN_GAMMA!r}) AS INTEGER), {ZERO_BUCKET}) AS bucket,
       sum(sample_interval) AS weight
FROM batch WHERE kind = 'request'
GROUP BY ALL ORDER BY 1
"""

GAUGE_SQL = """
SELECT date_trunc('minute', timestamp) AS minute, kind AS name,
       sum(latency_ms) AS value_sum, count(*) AS samples, min(latency_ms) AS value_min,
       max(latency_ms) AS value_max, arg_max(latency_ms, timestamp) AS value_last
FROM batch WHERE kind <> 'request'
GROUP BY ALL
"""

KEYS_SQL = """
SELECT key, any_value(endpoint) AS endpoint, experiment, cohort, date_trunc('minute', timestamp) AS t,
       sum(if(tier = 'edge', sample_interval, 0)) AS edge, sum(if(tier = 'kv', sample_interval, 0)) AS kv,
       sum(if(tier = 'r2', sample_interval, 0)) AS r2, sum(if(tier = 'api', sample_interval, 0)) AS api,
       sum(if(status = 'error', sample_interval, 0)) AS errors,
       sum(if(status = 'error' AND tier IN ('r2', 'api'), sample_interval, 0)) AS fill_errors,
       min(timestamp) AS first_seen, max(timestamp) AS last_seen
FROM batch WHERE kind = 'request'
GROUP BY key, experiment, cohort, t
"""


# SHARDS samples: the distinct request keys (hashed once each, in Python),
# then the rows of those under the rate (`sampled_keys` is registered).
REQUEST_KEYS_SQL = "SELECT DISTINCT key FROM batch WHERE kind = 'request'"
SAMPLES_SQL = """
SELECT b.timestamp, b.endpoint, b.key, h.key_hash, b.tier, b.status = 'error' AS error,
       b.sample_interval AS weight
FROM batch b JOIN sampled_keys h ON h.key = b.key
WHERE b.kind = 'request'
ORDER BY b.timestamp
"""
SAMPLE_SCHEMA = pa.schema(
    [
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("endpoint", pa.string()),
        ("key", pa.string()),
        ("key_hash", pa.float64()),
        ("tier", pa.string()),
        ("error", pa.bool_()),
        ("weight", pa.float64()),
    ]
)
DAY_MINUTES = 1440


@dataclass(frozen=True)
class Sampling:
    """How a source samples keys: the rate R and the row budget (rows a day;
    `cachemon.settings.TtlConfig` holds the configured values)."""

    rate: float
    budget: float


@dataclass(frozen=True)
class Rollups:
    minute: pa.Table
    latency: pa.Table
    gauges: pa.Table
    keys: pa.Table
    events: int  # raw rows behind them (data points), for reporting
    samples: pa.Table | None = None  # SAMPLE_SCHEMA rows; None: the source has no key hash
    sample_rate: float | None = None  # the rate the samples were taken at (after the budget)

    def time_range(self) -> tuple[datetime, datetime] | None:
        """Earliest and latest minute the rollups touch."""
        cols = [self.minute["minute"], self.gauges["minute"], self.keys["t"]]
        lo = [pc.min(c).as_py() for c in cols if len(c)]
        hi = [pc.max(c).as_py() for c in cols if len(c)]
        return (min(lo), max(hi)) if lo else None


def from_events(
    con: duckdb.DuckDBPyConnection,
    frame: EventFrame,
    window: Window | None = None,
    sampling: Sampling | None = None,
) -> Rollups:
    """Aggregate events with DuckDB (a scratch connection is fine). With
    `sampling`, the SHARDS samples too, within the budget of the window's
    minutes (`window` None: of the minutes the events span)."""
    con.register("batch", frame.table)
    try:
        r = Rollups(
            minute=con.sql(MINUTE_SQL).to_arrow_table(),
            latency=con.sql(LATENCY_SQL).to_arrow_table(),
            gauges=con.sql(GAUGE_SQL).to_arrow_table(),
            keys=con.sql(KEYS_SQL).to_arrow_table(),
            events=len(frame),
        )
        if sampling is None:
            return r
        rows = sample_rows(con, sampling.rate)
    finally:
        con.unregister("batch")
    minutes = window_minutes(window) if window is not None else _span_minutes(frame)
    rows, rate = within_budget(rows, sampling.rate, sampling.budget * minutes / DAY_MINUTES)
    return dataclasses.replace(r, samples=rows, sample_rate=rate)


def sample_rows(con: duckdb.DuckDBPyConnection, rate: float) -> pa.Table:
    """The request rows of the registered `batch` whose key hashes under
    `rate`, as SAMPLE_SCHEMA (each distinct key is hashed once)."""
    keys = con.sql(REQUEST_KEYS_SQL).to_arrow_table()["key"].to_pylist()
    hashes = keyhash.key_hashes(keys)
    keep = keyhash.sampled(hashes, rate)
    sampled = pa.table(
        {
            "key": pa.array([k for k, s in zip(keys, keep) if s], pa.string()),
            "key_hash": pa.array(hashes[keep], pa.float64()),
        }
    )
    con.register("sampled_keys", sampled)
    try:
        return con.sql(SAMPLES_SQL).to_arrow_table().cast(SAMPLE_SCHEMA)
    finally:
        con.unregister("sampled_keys")


def within_budget(rows: pa.Table, rate: float, allowed: float) -> tuple[pa.Table, float]:
    """`rows` (SAMPLE_SCHEMA, taken at `rate`) cut to at most `allowed` rows
    by `budget_rate`, and the rate they now are a sample at."""
    if rows.num_rows <= allowed:
        return rows, rate
    hashes, counts = np.unique(rows["key_hash"].to_numpy(), return_counts=True)
    cut = budget_rate(hashes, counts, rate, allowed)
    return rows.filter(pc.less(rows["key_hash"], cut)), cut


def budget_rate(hashes: np.ndarray, rows: np.ndarray, rate: float, allowed: float) -> float:
    """Fixed-size SHARDS: the rate at which a sample fits `allowed` rows,
    given the rows of each distinct key hash under `rate`. `rate` if they
    all fit; else the hash of the first key left out, so the keys of
    smallest hash whose rows fit stay, and the sample is still every row of
    every key under the (lower) rate."""
    if rows.sum() <= allowed:
        return rate
    order = np.argsort(hashes, kind="stable")
    fit = int(np.searchsorted(np.cumsum(rows[order]), allowed, side="right"))
    return min(rate, float(hashes[order][fit]))


def empty_samples() -> pa.Table:
    """No sample rows (a source with a key hash and no requests)."""
    return SAMPLE_SCHEMA.empty_table()


def window_minutes(window: Window) -> float:
    """The window's length in minutes (its share of a day's budget)."""
    return (window.end - window.start) / MINUTE


def _span_minutes(frame: EventFrame) -> float:
    span = frame.time_range()
    return covered_minutes(span) if span else 0.0


def covered_minutes(span: tuple[datetime, datetime]) -> float:
    """Minutes from the first event's minute to the last one's, inclusive:
    what an imported file covers."""
    return (floor_to(span[1], MINUTE) - floor_to(span[0], MINUTE)) / MINUTE + 1
