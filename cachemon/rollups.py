"""Rollups: what every source hands to the store.

Events (simulator, files) are aggregated here in DuckDB; the Analytics Engine
source gets the same tables straight from the API, aggregated there. Either
way `ingest` stores a `Rollups`, so every source takes one path.

Tables (pyarrow), one row per group:

* `minute`  — minute, tier, endpoint, experiment, cohort, requests, errors,
  bytes, latency_sum, latency_min, latency_max, events
* `latency` — minute, tier, endpoint, experiment, cohort, bucket, weight
* `gauges`  — minute, name, value_sum, samples, value_min, value_max, value_last
* `keys`    — key, endpoint, experiment, cohort, t, whole_hour, edge, kv,
  r2, api, errors, first_seen, last_seen; `t` is the hour inside the window's whole hours
  (`whole_hour` true) and the minute in its ragged edges.

Counts are sums of `sample_interval`, never row counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from cachemon.clock import HOUR, Window, ceil_to, floor_to
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
SELECT key, any_value(endpoint) AS endpoint, experiment, cohort,
       if(timestamp >= $full_lo AND timestamp < $full_hi,
          date_trunc('hour', timestamp), date_trunc('minute', timestamp)) AS t,
       timestamp >= $full_lo AND timestamp < $full_hi AS whole_hour,
       sum(if(tier = 'edge', sample_interval, 0)) AS edge, sum(if(tier = 'kv', sample_interval, 0)) AS kv,
       sum(if(tier = 'r2', sample_interval, 0)) AS r2, sum(if(tier = 'api', sample_interval, 0)) AS api,
       sum(if(status = 'error', sample_interval, 0)) AS errors,
       min(timestamp) AS first_seen, max(timestamp) AS last_seen
FROM batch WHERE kind = 'request'
GROUP BY key, experiment, cohort, t, whole_hour
"""


# "Every hour is whole": the bounds used for imports, which have no window.
ALL_HOURS = Window(datetime(1970, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC))


@dataclass(frozen=True)
class Rollups:
    minute: pa.Table
    latency: pa.Table
    gauges: pa.Table
    keys: pa.Table
    events: int  # raw rows behind them (data points), for reporting

    def time_range(self) -> tuple[datetime, datetime] | None:
        """Earliest and latest minute (or hour) the rollups touch."""
        cols = [self.minute["minute"], self.gauges["minute"], self.keys["t"]]
        lo = [pc.min(c).as_py() for c in cols if len(c)]
        hi = [pc.max(c).as_py() for c in cols if len(c)]
        return (min(lo), max(hi)) if lo else None


def whole_hours(window: Window | None) -> tuple[datetime, datetime] | None:
    """[first, last) whole hours of a window; None (no window) means all."""
    if window is None:
        return None
    lo, hi = ceil_to(window.start, HOUR), floor_to(window.end, HOUR)
    return (lo, hi) if lo < hi else (window.end, window.end)


def from_events(
    con: duckdb.DuckDBPyConnection, frame: EventFrame, window: Window | None
) -> Rollups:
    """Aggregate events with DuckDB (a scratch connection is fine)."""
    lo, hi = whole_hours(window) or (ALL_HOURS.start, ALL_HOURS.end)
    con.register("batch", frame.table)
    try:
        return Rollups(
            minute=con.sql(MINUTE_SQL).to_arrow_table(),
            latency=con.sql(LATENCY_SQL).to_arrow_table(),
            gauges=con.sql(GAUGE_SQL).to_arrow_table(),
            keys=con.sql(KEYS_SQL, params={"full_lo": lo, "full_hi": hi}).to_arrow_table(),
            events=len(frame),
        )
    finally:
        con.unregister("batch")
