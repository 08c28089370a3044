"""SQL for the Analytics Engine SQL API, built from validated parts only.

Heavy aggregation stays in Analytics Engine: every query groups by minute
(or hour) and returns rollups, never raw request rows, except the SHARDS
sample (the rows of the keys whose hash is under the rate, sized to a budget). Only functions the
dialect has are used (toStartOfInterval, toDateTime, if, sum, min, max,
count, log, ceil); no CASE, JOIN or PERCENTILE_CONT. Counts are
SUM(_sample_interval). Column and dataset names come from the validated
ColumnMapping / config (identifiers only); times are formatted by us. No
user text is ever pasted in.
"""

from __future__ import annotations

import math
from datetime import datetime

from cachemon.clock import Window, as_utc
from cachemon.histogram import LN_GAMMA, ZERO_BUCKET
from cachemon.settings import ColumnMapping


def _time(dt: datetime) -> str:
    return "toDateTime('" + as_utc(dt).strftime("%Y-%m-%d %H:%M:%S") + "')"


def _range(window: Window) -> str:
    return f"timestamp >= {_time(window.start)} AND timestamp < {_time(window.end)}"


def _dims(m: ColumnMapping) -> str:
    return f"{m.tier} AS tier, {m.endpoint} AS endpoint, {m.experiment} AS experiment, {m.cohort} AS cohort"


_MINUTE = "toStartOfInterval(timestamp, INTERVAL '1' MINUTE)"


def minute_rollups(dataset: str, m: ColumnMapping, window: Window) -> str:
    """Requests, errors, bytes and latency sum/min/max per minute and group."""
    return f"""SELECT {_MINUTE} AS minute, {_dims(m)},
  sum(_sample_interval) AS requests,
  sum(if({m.status} = 'error', _sample_interval, 0)) AS errors,
  sum({m.bytes} * _sample_interval) AS bytes,
  sum({m.latency_ms} * _sample_interval) AS latency_sum,
  min({m.latency_ms}) AS latency_min, max({m.latency_ms}) AS latency_max,
  count() AS events
FROM {dataset}
WHERE {_range(window)} AND {m.kind} = 'request'
GROUP BY minute, tier, endpoint, experiment, cohort
FORMAT JSON"""


def latency_histogram(dataset: str, m: ColumnMapping, window: Window) -> str:
    """Weighted log-bucket latency histogram per minute and group."""
    lat = m.latency_ms
    return f"""SELECT {_MINUTE} AS minute, {_dims(m)},
  if({lat} > 0, ceil(log({lat}) / {LN_GAMMA!r}), {ZERO_BUCKET}) AS bucket,
  sum(_sample_interval) AS weight
FROM {dataset}
WHERE {_range(window)} AND {m.kind} = 'request'
GROUP BY minute, tier, endpoint, experiment, cohort, bucket
FORMAT JSON"""


def gauge_points(dataset: str, m: ColumnMapping, window: Window) -> str:
    """Gauge readings (a few per minute at most), aggregated on our side."""
    return f"""SELECT timestamp, {m.kind} AS name, {m.latency_ms} AS value
FROM {dataset}
WHERE {_range(window)} AND {m.kind} != 'request'
FORMAT JSON"""


def key_counts(dataset: str, m: ColumnMapping, window: Window) -> str:
    """Per-key weighted requests by tier per minute (the store keeps them
    for [retention] minute_days, so every window there is exact), with the
    errors of requests answered by R2 or the origin (failed fills)."""
    return _key_rows(dataset, m, window, "", "")


def sampled_key_counts(
    dataset: str, m: ColumnMapping, window: Window, rate: float, heavy: tuple[float, ...]
) -> str:
    """`key_counts` of the heavy keys (their hashes, from `key_sizes`) and
    of the keys whose hash is under `rate`, each key once, with its hash."""
    keep = _under(m, rate)
    if heavy:
        keep = f"({keep} OR {m.key_hash} IN ({', '.join(repr(float(h)) for h in heavy)}))"
    return _key_rows(dataset, m, window, f"{m.key_hash} AS key_hash, ", f" AND {keep}")


def _key_rows(dataset: str, m: ColumnMapping, window: Window, extra: str, where: str) -> str:
    return f"""SELECT {extra}{m.key} AS key, {m.endpoint} AS endpoint, {m.experiment} AS experiment, {m.cohort} AS cohort,
  {_MINUTE} AS t,
  sum(if({m.tier} = 'edge', _sample_interval, 0)) AS edge,
  sum(if({m.tier} = 'kv', _sample_interval, 0)) AS kv,
  sum(if({m.tier} = 'r2', _sample_interval, 0)) AS r2,
  sum(if({m.tier} = 'api', _sample_interval, 0)) AS api,
  sum(if({m.status} = 'error', _sample_interval, 0)) AS errors,
  sum(if({m.status} = 'error' AND ({m.tier} = 'r2' OR {m.tier} = 'api'), _sample_interval, 0)) AS fill_errors,
  min(timestamp) AS first_seen, max(timestamp) AS last_seen
FROM {dataset}
WHERE {_range(window)} AND {m.kind} = 'request'{where}
GROUP BY {"key_hash, " if extra else ""}key, endpoint, experiment, cohort, t
FORMAT JSON"""


# key_sizes' hash buckets: BUCKETS_PER_OCTAVE per halving of the hash, so the
# budget's rate is chosen within 2.2 % of the rows that fit, from a few
# hundred rows whatever the traffic. Rows with no hash (0) or a value that is
# no hash (outside [0, 1)) get a bucket of their own, as in sample_sizes.
BUCKETS_PER_OCTAVE = 32
_BUCKET_SCALE = BUCKETS_PER_OCTAVE / math.log(2)
NO_HASH_BUCKET = 1e6
NOT_A_HASH_BUCKET = 2e6


def bucket_edge(bucket: float) -> float:
    """The smallest hash of a key_sizes bucket (2 ** (bucket / 32))."""
    return 2.0 ** (bucket / BUCKETS_PER_OCTAVE)


def key_sizes(dataset: str, m: ColumnMapping, window: Window, threshold: float) -> str:
    """What the per-key budget needs before any per-key row is pulled: each
    heavy key (at least `threshold` weighted requests in the window; heavy
    = 1, part = its hash) and, for the other keys, each hash bucket
    (heavy = 0, part = the bucket), with the per-key rows (key × minute)
    they would pull. One scan, aggregated by Analytics Engine."""
    t = float(threshold)
    bucket = (
        f"if(key_hash > 0 AND key_hash < 1, floor(log(key_hash) * {_BUCKET_SCALE!r}), "
        f"if(key_hash = 0, {NO_HASH_BUCKET!r}, {NOT_A_HASH_BUCKET!r}))"
    )
    return f"""SELECT if(n >= {t!r}, 1, 0) AS heavy, if(n >= {t!r}, key_hash, {bucket}) AS part,
  sum(rows) AS rows, sum(n) AS n, count() AS keys
FROM (
  SELECT key_hash, sum(n) AS n, count() AS rows
  FROM (
    SELECT {m.key_hash} AS key_hash, {m.key} AS key, {m.endpoint} AS endpoint, {m.experiment} AS experiment,
      {m.cohort} AS cohort, {_MINUTE} AS t, sum(_sample_interval) AS n
    FROM {dataset}
    WHERE {_range(window)} AND {m.kind} = 'request'
    GROUP BY key_hash, key, endpoint, experiment, cohort, t
  )
  GROUP BY key_hash
)
GROUP BY heavy, part
FORMAT JSON"""


def _under(m: ColumnMapping, rate: float) -> str:
    """Rows of sampled keys: the Worker's key hash under `rate` (a float
    cachemon computed, written exactly by repr)."""
    return f"{m.key_hash} < {float(rate)!r}"


# sample_sizes' buckets for the rows not under the rate: a hash above it, and
# a value that is no hash at all (outside [0, 1): the column is not the hash).
ABOVE_RATE = 2.0
NOT_A_HASH = 3.0


def sample_sizes(dataset: str, m: ColumnMapping, window: Window, rate: float) -> str:
    """Rows per key hash under `rate`, what the row budget needs to choose
    the rate before any row is pulled (fixed-size SHARDS), plus one row each
    for the rest: ABOVE_RATE and NOT_A_HASH."""
    h = m.key_hash
    return f"""SELECT if({_under(m, rate)}, {h}, if({h} >= 0 AND {h} < 1, {ABOVE_RATE!r}, {NOT_A_HASH!r})) AS key_hash,
  count() AS n
FROM {dataset}
WHERE {_range(window)} AND {m.kind} = 'request'
GROUP BY key_hash
FORMAT JSON"""


def sample_rows(dataset: str, m: ColumnMapping, window: Window, rate: float) -> str:
    """The raw request rows of the keys whose hash is under `rate` (SHARDS):
    the one query that returns request rows, bounded by the row budget."""
    return f"""SELECT timestamp, {m.endpoint} AS endpoint, {m.key} AS key, {m.key_hash} AS key_hash,
  {m.tier} AS tier, {m.status} AS status, _sample_interval AS weight
FROM {dataset}
WHERE {_range(window)} AND {m.kind} = 'request' AND {_under(m, rate)}
FORMAT JSON"""


def raw_events(dataset: str, m: ColumnMapping, window: Window) -> str:
    """Every data point of a window: for comparison benchmarks only."""
    return f"""SELECT timestamp, {m.tier} AS tier, {m.key} AS key, {m.endpoint} AS endpoint,
  {m.experiment} AS experiment, {m.cohort} AS cohort, {m.status} AS status, {m.kind} AS kind,
  {m.latency_ms} AS latency_ms, {m.bytes} AS bytes, _sample_interval AS sample_interval
FROM {dataset}
WHERE {_range(window)}
FORMAT JSON"""
