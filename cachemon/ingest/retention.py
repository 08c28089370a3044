"""Retention: old minute rows compacted to hours, old hours to days.

Every write keeps `rollup_hour`, `latency_hour` and `key_day` equal to the
sums of their finer rows, so compacting is mostly deleting: minute rows
older than `minute_days` go (gauges are first summed into `gauge_hour`,
per-key minutes into `key_hour`: top keys of a window are exact where its
edges are minutes after the minute horizon, or whole hours after the hour
horizon, or whole days; `cachemon.store.topkeys.covered` says so),
and hourly rows older than `hour_days` are first summed into `rollup_day`
/ `latency_day` (per-key hours are already in `key_day`). Histogram
buckets add up, so daily totals and quantiles stay exact.

Horizons are whole UTC days, stored in `retention_state`, never run ahead
of the data (a compaction "as of" a far future would otherwise close every
later write), and never move back: what lies before them no longer exists
at the finer resolution, so writes there are refused and readers that need
minutes say so (`cachemon.store.horizons`: readers and writers check there,
without depending on this module) instead of returning numbers short of data.

SHARDS samples older than `sample_days` are deleted (`sample_cutoff`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb

from cachemon.clock import DAY, EARLIEST, floor_to
from cachemon.ingest import keys
from cachemon.settings import RetentionConfig
from cachemon.store.connection import first_row, transaction
from cachemon.store.horizons import Horizons, horizons

# Up to when any source's data is complete: the latest watermark.
LATEST_WATERMARK = "SELECT max(until) FROM watermarks"
# Where the data ends: the latest watermark, hour or day of any source
# (imports have no watermark; days remain when hours were compacted).
DATA_END = f"""
SELECT greatest(({LATEST_WATERMARK}),
                (SELECT max(hour) + INTERVAL 1 HOUR FROM rollup_hour),
                (SELECT max(day) + INTERVAL 1 DAY FROM rollup_day))
"""
SET_HORIZON = """
INSERT INTO retention_state VALUES ($name, $horizon)
ON CONFLICT (name) DO UPDATE SET horizon = greatest(retention_state.horizon, excluded.horizon)
"""
GAUGES_TO_HOURS = """
INSERT INTO gauge_hour
SELECT source, date_trunc('hour', minute), name, sum(value_sum), sum(samples), min(value_min), max(value_max),
       arg_max(value_last, minute)
FROM gauge_minute WHERE minute < $before GROUP BY ALL
"""
ROLLUPS_TO_DAYS = """
INSERT INTO rollup_day
SELECT source, date_trunc('day', hour), tier, endpoint, experiment, cohort, sum(requests), sum(errors),
       sum(bytes), sum(latency_sum), min(latency_min), max(latency_max), sum(events)
FROM rollup_hour WHERE hour < $before GROUP BY ALL
"""
LATENCY_TO_DAYS = """
INSERT INTO latency_day
SELECT source, date_trunc('day', hour), tier, endpoint, experiment, cohort, bucket, sum(weight)
FROM latency_hour WHERE hour < $before GROUP BY ALL
"""
MINUTE_DELETES = tuple(
    f"DELETE FROM {t} WHERE minute < $before"
    for t in ("rollup_minute", "latency_minute", "gauge_minute")
)
HOUR_DELETES = (
    *(f"DELETE FROM {t} WHERE hour < $before" for t in ("rollup_hour", "latency_hour", "key_hour")),
    "DELETE FROM key_top WHERE part = 'hour' AND t < $before",
    "DELETE FROM key_top_cutoff WHERE part = 'hour' AND t < $before",
)


# SHARDS samples older than [retention] sample_days, then the hashes of keys
# no sample row names any more.
SAMPLE_DELETES = (
    "DELETE FROM samples WHERE t < $before",
    "DELETE FROM sample_minutes WHERE minute < $before",
)
ORPHAN_SAMPLE_KEYS = (
    "DELETE FROM sample_keys WHERE key_id NOT IN (SELECT DISTINCT key_id FROM samples)"
)


@dataclass(frozen=True)
class Result:
    horizons: Horizons
    minute_rows: int  # minute rows removed (request, latency and gauge rows)
    hour_rows: int  # hourly rows removed after their days were written
    sample_rows: int = 0  # SHARDS sample rows removed
    key_minute_rows: int = 0  # per-key minute rows merged into hours


def latest_watermark(con: duckdb.DuckDBPyConnection) -> datetime | None:
    """The latest watermark of any source (None before the first ingest)."""
    return first_row(con, LATEST_WATERMARK)[0]


def targets(now: datetime, cfg: RetentionConfig) -> Horizons:
    """Where `cfg` puts the horizons at `now` (whole UTC days)."""
    today = floor_to(now, DAY)
    return Horizons(today - timedelta(days=cfg.minute_days), today - timedelta(days=cfg.hour_days))


def within_data(want: Horizons, data_end: datetime | None) -> Horizons:
    """`want`, but no later than the day the data ends in; with no data, the
    earliest instant cachemon accepts (nothing is closed)."""
    cap = floor_to(data_end, DAY) if data_end is not None else EARLIEST
    return Horizons(min(want.minute, cap), min(want.hour, cap))


def apply(con: duckdb.DuckDBPyConnection, now: datetime, cfg: RetentionConfig) -> Result:
    """Compact what `cfg` no longer keeps, in one transaction."""
    with transaction(con):
        want = within_data(targets(now, cfg), first_row(con, DATA_END)[0])
        p = {"before": want.minute}
        con.execute(GAUGES_TO_HOURS, p)
        minute_rows = sum(_deleted(con, sql, p) for sql in MINUTE_DELETES)
        key_minute_rows = keys.compact_minutes(con, want.minute)
        p = {"before": want.hour}
        con.execute(ROLLUPS_TO_DAYS, p)
        con.execute(LATENCY_TO_DAYS, p)
        hour_rows = sum(_deleted(con, sql, p) for sql in HOUR_DELETES)
        con.execute(SET_HORIZON, {"name": "minute", "horizon": want.minute})
        con.execute(SET_HORIZON, {"name": "hour", "horizon": want.hour})
        sample_rows = _drop_samples(con, sample_cutoff(now, cfg))
    return Result(
        horizons(con),
        minute_rows,
        hour_rows,
        sample_rows=sample_rows,
        key_minute_rows=key_minute_rows,
    )


def sample_cutoff(now: datetime, cfg: RetentionConfig) -> datetime:
    """Samples before this go: `sample_days` whole UTC days before today.
    Nothing is closed (a sample is a copy of traffic the rollups also
    count), so unlike the horizons this needs no cap at the data's end."""
    return floor_to(now, DAY) - timedelta(days=cfg.sample_days)


def _drop_samples(con: duckdb.DuckDBPyConnection, before: datetime) -> int:
    rows = _deleted(con, SAMPLE_DELETES[0], {"before": before})
    con.execute(SAMPLE_DELETES[1], {"before": before})
    if rows:
        con.execute(ORPHAN_SAMPLE_KEYS)
    return rows


def _deleted(con: duckdb.DuckDBPyConnection, sql: str, params: dict) -> int:
    return con.execute(sql, params).fetchall()[0][0]
