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

Counts are sums of `sample_interval`, never row counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

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


@dataclass(frozen=True)
class Rollups:
    minute: pa.Table
    latency: pa.Table
    gauges: pa.Table
    keys: pa.Table
    events: int  # raw rows behind them (data points), for reporting

    def time_range(self) -> tuple[datetime, datetime] | None:
        """Earliest and latest minute the rollups touch."""
        cols = [self.minute["minute"], self.gauges["minute"], self.keys["t"]]
        lo = [pc.min(c).as_py() for c in cols if len(c)]
        hi = [pc.max(c).as_py() for c in cols if len(c)]
        return (min(lo), max(hi)) if lo else None


def from_events(con: duckdb.DuckDBPyConnection, frame: EventFrame) -> Rollups:
    """Aggregate events with DuckDB (a scratch connection is fine)."""
    con.register("batch", frame.table)
    try:
        return Rollups(
            minute=con.sql(MINUTE_SQL).to_arrow_table(),
            latency=con.sql(LATENCY_SQL).to_arrow_table(),
            gauges=con.sql(GAUGE_SQL).to_arrow_table(),
            keys=con.sql(KEYS_SQL).to_arrow_table(),
            events=len(frame),
        )
    finally:
        con.unregister("batch")
