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
from contextlib import contextmanager
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
from cachemon.sqltime import floored_us

# Events are aggregated as `coded` registers them: `ts`, the timestamp as
# epoch microseconds, and `key_code`, the key as an index into the batch's
# distinct keys. Minutes by integer arithmetic group ~8x faster than
# date_trunc on a time-zone-aware timestamp, and integer keys than strings;
# names and timestamps are put back on the (far fewer) result rows.
US_PER_MINUTE = 60_000_000


MINUTE_OF = floored_us("ts", US_PER_MINUTE)

MINUTE_SQL = f"""
SELECT {MINUTE_OF} AS minute, tier, endpoint, experiment, cohort,
       sum(sample_interval) AS requests, sum(if(status = 'error', sample_interval, 0)) AS errors,
       sum(bytes * sample_interval) AS bytes, sum(latency_ms * sample_interval) AS latency_sum,
       min(latency_ms) AS latency_min, max(latency_ms) AS latency_max, count(*) AS events
FROM batch WHERE kind = 'request'
GROUP BY ALL ORDER BY 1
"""

LATENCY_SQL = f"""
SELECT {MINUTE_OF} AS minute, tier, endpoint, experiment, cohort,
       if(latency_ms > 0, CAST(ceil(ln(latency_ms) / {LN_GAMMA!r}) AS INTEGER), {ZERO_BUCKET}) AS bucket,
       sum(sample_interval) AS weight
FROM batch WHERE kind = 'request'
GROUP BY ALL ORDER BY 1
"""

# Gauges are few; this one reads plain timestamps, as the Analytics Engine
# source's gauge points are registered without coding.
GAUGE_SQL = """
SELECT date_trunc('minute', timestamp) AS minute, kind AS name,
       sum(latency_ms) AS value_sum, count(*) AS samples, min(latency_ms) AS value_min,
       max(latency_ms) AS value_max, arg_max(latency_ms, timestamp) AS value_last
FROM batch WHERE kind <> 'request'
GROUP BY ALL
"""

KEYS_SQL = f"""
SELECT key_code, min(endpoint) AS endpoint, experiment, cohort, {MINUTE_OF} AS t,
       sum(if(tier = 'edge', sample_interval, 0)) AS edge, sum(if(tier = 'kv', sample_interval, 0)) AS kv,
       sum(if(tier = 'r2', sample_interval, 0)) AS r2, sum(if(tier = 'api', sample_interval, 0)) AS api,
       sum(if(status = 'error', sample_interval, 0)) AS errors,
       sum(if(status = 'error' AND tier IN ('r2', 'api'), sample_interval, 0)) AS fill_errors,
       min(ts) AS first_seen, max(ts) AS last_seen
FROM batch WHERE kind = 'request'
GROUP BY key_code, experiment, cohort, t
"""


# SHARDS samples: the distinct request keys (hashed once each, in Python),
# then the rows of those under the rate (`sampled_keys` is registered).
REQUEST_KEYS_SQL = "SELECT DISTINCT key_code FROM batch WHERE kind = 'request'"
SAMPLES_SQL = """
SELECT b.timestamp, b.endpoint, b.key_code, h.key_hash, b.tier, b.status = 'error' AS error,
       b.sample_interval AS weight
FROM batch b JOIN sampled_keys h ON h.key_code = b.key_code
WHERE b.kind = 'request'
ORDER BY b.ts, b.key_code
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
class KeyEstimate:
    """How a window's per-key rows were pulled when they are estimates (the
    budgeted Analytics Engine pull): `heavy` keys (at least `threshold`
    weighted requests in the window) are exact; every other key's counts
    come from the keys whose hash is under `rate`, weighted by 1/rate."""

    rate: float
    threshold: float
    heavy: tuple[str, ...]


@dataclass(frozen=True)
class Rollups:
    minute: pa.Table
    latency: pa.Table
    gauges: pa.Table
    keys: pa.Table
    events: int  # raw rows behind them (data points), for reporting
    samples: pa.Table | None = None  # SAMPLE_SCHEMA rows; None: the source has no key hash
    sample_rate: float | None = None  # the rate the samples were taken at (after the budget)
    key_estimate: KeyEstimate | None = None  # None: every per-key row is exact

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
    batch = CodedBatch.of(frame)
    with batch.registered(con):
        r = Rollups(
            minute=batch.sql(con, MINUTE_SQL),
            latency=batch.sql(con, LATENCY_SQL),
            gauges=con.sql(GAUGE_SQL).to_arrow_table(),
            keys=batch.sql(con, KEYS_SQL),
            events=len(frame),
        )
        if sampling is None:
            return r
        rows = sample_rows(con, batch, sampling.rate)
    minutes = window_minutes(window) if window is not None else _span_minutes(frame)
    rows, rate = within_budget(rows, sampling.rate, sampling.budget * minutes / DAY_MINUTES)
    return dataclasses.replace(r, samples=rows, sample_rate=rate)


# Columns the coded SQL returns as epoch microseconds, and what they become.
_TIME_COLUMNS = ("minute", "t", "first_seen", "last_seen")
_TIMESTAMP = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class CodedBatch:
    """Events as the aggregation SQL reads them (registered as `batch`):
    every event column, plus `ts` (epoch microseconds) and `key_code` (an
    index into `names`, the batch's distinct keys)."""

    table: pa.Table
    names: pa.Array

    @classmethod
    def of(cls, frame: EventFrame) -> CodedBatch:
        t = frame.table
        codes, names = _key_codes(t["key"])
        ts = t["timestamp"].cast(pa.int64())
        return cls(t.append_column("ts", ts).append_column("key_code", codes), names)

    @contextmanager
    def registered(self, con: duckdb.DuckDBPyConnection):
        con.register("batch", self.table)
        try:
            yield self
        finally:
            con.unregister("batch")

    def sql(self, con: duckdb.DuckDBPyConnection, query: str) -> pa.Table:
        """`query`'s result with keys and times decoded: `key_code` becomes
        `key` (in its place) and epoch-microsecond columns timestamps."""
        out = con.sql(query).to_arrow_table()
        for i, name in enumerate(out.column_names):
            if name in _TIME_COLUMNS:
                out = out.set_column(i, name, out[name].cast(_TIMESTAMP))
            elif name == "key_code":
                # Dictionary-encoded: no string is copied (`coded_keys` reads it back).
                codes = out[name].combine_chunks() if out.num_rows else pa.array([], pa.int32())
                keys = pa.DictionaryArray.from_arrays(codes.cast(pa.int32()), self.names)
                out = out.set_column(i, "key", keys)
        return out


def coded_keys(keys: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Per-key rows (`Rollups.keys`) with `key` replaced by `key_code`, and
    the table of names (key_code, key) the codes index: how the store looks
    keys up, once per distinct key (`cachemon.ingest.keys`)."""
    codes, names = _key_codes(keys["key"])
    coded = keys.set_column(keys.column_names.index("key"), "key_code", codes)
    return coded, pa.table(
        {"key_code": pa.array(np.arange(len(names), dtype=np.int32)), "key": names}
    )


def _key_codes(key: pa.ChunkedArray) -> tuple[pa.Array | pa.ChunkedArray, pa.Array]:
    """(codes, names): each row's index into `names`, the distinct keys.
    A key column whose chunks all share one dictionary of distinct names
    (the simulator's) is used as it is; any other is encoded once."""
    shared = _shared_dictionary(key)
    if shared is not None and len(pc.unique(shared)) == len(shared):
        return pa.chunked_array([c.indices for c in key.chunks], pa.int32()), shared
    plain = key.cast(pa.string()) if pa.types.is_dictionary(key.type) else key
    enc = pc.dictionary_encode(
        plain.combine_chunks() if plain.num_chunks else pa.array([], pa.string())
    )
    return enc.indices, enc.dictionary


def _shared_dictionary(key: pa.ChunkedArray) -> pa.Array | None:
    """The one dictionary every chunk of `key` uses (the same buffers, as
    slices of one array have), or None."""
    if not pa.types.is_dictionary(key.type) or key.num_chunks == 0:
        return None
    first = key.chunk(0).dictionary
    if key.type.index_type != pa.int32():
        return None
    same = [b.address if b is not None else None for b in first.buffers()]
    for c in key.chunks[1:]:
        d = c.dictionary
        if (
            len(d) != len(first)
            or [b.address if b is not None else None for b in d.buffers()] != same
        ):
            return None
    return first


def sample_rows(con: duckdb.DuckDBPyConnection, batch: CodedBatch, rate: float) -> pa.Table:
    """The request rows of `batch` (registered) whose key hashes under
    `rate`, as SAMPLE_SCHEMA (each distinct key is hashed once)."""
    codes = con.sql(REQUEST_KEYS_SQL).to_arrow_table()["key_code"]
    hashes = keyhash.key_hashes(batch.names.take(codes).to_pylist())
    keep = keyhash.sampled(hashes, rate)
    sampled = pa.table(
        {
            "key_code": pc.filter(codes, pa.array(keep)),
            "key_hash": pa.array(hashes[keep], pa.float64()),
        }
    )
    con.register("sampled_keys", sampled)
    try:
        return batch.sql(con, SAMPLES_SQL).cast(SAMPLE_SCHEMA)
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
