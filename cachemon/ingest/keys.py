"""Per-key counts of a write: which keys exist (`cache_keys`, their cohorts),
and their rows per minute (`key_minute`), summed per day (`key_day`).

Minutes are kept for as long as [retention] minute_days keeps minutes, so
top keys and per-key figures of any window there are exact; retention then
merges them into hours (`key_hour`, `compact_minutes`), and later hours
into the days key_day already holds. An hour is in exactly one of key_minute
and key_hour; key_day sums both (`cachemon.store.topkeys`).

Each function runs inside the caller's transaction (`cachemon.ingest.write`).
"""

from __future__ import annotations

from datetime import datetime

import duckdb

from cachemon import sqltime
from cachemon.clock import HOUR, Window, ceil_to, floor_to, iso
from cachemon.errors import StoreError
from cachemon.store import topkeys
from cachemon.store.connection import first_row

# The rollups' per-key rows are registered as r_keys, their keys coded as
# `key_code` into r_key_names (`cachemon.rollups.coded_keys`): the strings
# are looked up once per distinct key, not once per row.
# key_map: each code's key_id, existing or new. New ids follow on from the
# largest, in key order, so the same input always gives the same ids (a
# sequence hands them out in whatever order parallel threads reach it, and
# the top-key summaries break ties by id).
KEY_MAP = """
CREATE OR REPLACE TEMP TABLE key_map AS
WITH used AS (SELECT key_code, min(endpoint) AS endpoint FROM r_keys GROUP BY key_code),
m AS (SELECT u.key_code, n.key, u.endpoint, k.key_id
      FROM used u JOIN r_key_names n USING (key_code) LEFT JOIN cache_keys k ON k.key = n.key)
SELECT key_code, key, endpoint, key_id IS NULL AS new,
       coalesce(key_id, (SELECT coalesce(max(key_id), 0) FROM cache_keys)
                + row_number() OVER (PARTITION BY key_id IS NULL ORDER BY key)) AS key_id
FROM m
"""
INSERT_NEW_KEYS = """
INSERT INTO cache_keys SELECT key_id, key, endpoint FROM key_map WHERE new ORDER BY key_id;
INSERT INTO key_cohorts
SELECT DISTINCT m.key_id, b.experiment, b.cohort FROM r_keys b JOIN key_map m USING (key_code)
WHERE b.experiment <> '' AND NOT EXISTS (
    SELECT 1 FROM key_cohorts c WHERE c.key_id = m.key_id AND c.experiment = b.experiment AND c.cohort = b.cohort)
"""

INSERT_KEY_MINUTE = """
INSERT INTO key_minute
SELECT $source, b.t, m.key_id, b.edge, b.kv, b.r2, b.api, b.errors, b.first_seen, b.last_seen,
       b.fill_errors
FROM r_keys b JOIN key_map m USING (key_code)
ORDER BY b.t
"""

# Retention: minutes before the minute horizon become hours (every source);
# key_day and the summaries already count them.
COMPACT_KEY_MINUTES = f"""
INSERT INTO key_hour
SELECT source, {sqltime.HOUR_OF_MINUTE}, key_id, sum(edge), sum(kv), sum(r2), sum(api),
       sum(errors), min(first_seen), max(last_seen), sum(fill_errors)
FROM key_minute WHERE minute < $before
GROUP BY ALL ORDER BY 2
"""
DELETE_KEY_MINUTES = "DELETE FROM key_minute WHERE minute < $before"

COMPACTED = "SELECT 1 FROM key_hour WHERE source = $source AND hour = $hour LIMIT 1"


def key_hour_compacted(con: duckdb.DuckDBPyConnection, source: str, hour: datetime) -> bool:
    """Whether `source`'s per-key counts of `hour` are in key_hour (whole)."""
    return first_row(con, COMPACTED, {"source": source, "hour": hour}) is not None


def store_imported(con: duckdb.DuckDBPyConnection, source: str) -> None:
    """An imported file's per-key rows (per minute, as every source's)."""
    _insert(con, source)


def replace_keys(
    con: duckdb.DuckDBPyConnection, source: str, window: Window
) -> tuple[datetime, datetime]:
    """The window's per-key minutes replace `source`'s there; returns the
    hours whose counts changed."""
    full_lo, full_hi = ceil_to(window.start, HOUR), floor_to(window.end, HOUR)
    if full_lo >= full_hi:
        full_lo = full_hi = window.end
    p = {"source": source, "lo": window.start, "hi": window.end}
    for lo, hi in ((window.start, full_lo), (full_hi, window.end)):
        hour = floor_to(lo, HOUR)
        if lo < hi and key_hour_compacted(con, source, hour):
            raise StoreError(
                f"window {window} covers part of hour {iso(hour)}, whose per-key counts are already "
                "compacted; re-ingest whole hours there"
            )
    # Whole hours compacted by an older cachemon (schema < 9) are replaced whole.
    con.execute(
        "DELETE FROM key_hour WHERE source = $source AND hour >= $lo AND hour < $hi",
        p | {"lo": full_lo, "hi": full_hi},
    )
    con.execute(
        "DELETE FROM key_minute WHERE source = $source AND minute >= $lo AND minute < $hi", p
    )
    _insert(con, source)
    return floor_to(window.start, HOUR), ceil_to(window.end, HOUR)


def _insert(con: duckdb.DuckDBPyConnection, source: str) -> None:
    con.execute(KEY_MAP)
    con.execute(INSERT_NEW_KEYS)
    con.execute(INSERT_KEY_MINUTE, {"source": source})


def compact_minutes(con: duckdb.DuckDBPyConnection, before: datetime) -> int:
    """Merge every source's per-key minutes before `before` (the minute
    horizon) into hours; returns the minute rows merged."""
    p = {"before": before}
    con.execute(COMPACT_KEY_MINUTES, p)
    return con.execute(DELETE_KEY_MINUTES, p).fetchall()[0][0]


def refresh_summaries(
    con: duckdb.DuckDBPyConnection, source: str, start: datetime, end: datetime
) -> None:
    """key_day and the top-key summaries follow a change of `source`'s
    per-key rows in [start, end)."""
    topkeys.recompute_days(con, source, start, end)
    topkeys.refresh(con, start, end)
