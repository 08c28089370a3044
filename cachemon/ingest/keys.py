"""Per-key counts of a write: which keys exist (`cache_keys`, their cohorts),
and their rows per hour (`key_hour`), per minute at a window's ragged edges
(`key_minute`, until `compact_keys` merges them) and per day (`key_day`).

Each function runs inside the caller's transaction (`cachemon.ingest.write`).
"""

from __future__ import annotations

from datetime import datetime

import duckdb

from cachemon.clock import DAY, HOUR, Window, ceil_to, floor_to, iso
from cachemon.errors import StoreError
from cachemon.store import topkeys
from cachemon.store.connection import first_row

# The rollups' per-key rows are registered as r_keys (see cachemon.rollups).
INSERT_NEW_KEYS = """
INSERT INTO cache_keys
SELECT nextval('key_ids'), key, any_value(endpoint) FROM r_keys b
WHERE NOT EXISTS (SELECT 1 FROM cache_keys k WHERE k.key = b.key)
GROUP BY key;
INSERT INTO key_cohorts
SELECT DISTINCT k.key_id, b.experiment, b.cohort FROM r_keys b JOIN cache_keys k ON k.key = b.key
WHERE b.experiment <> '' AND NOT EXISTS (
    SELECT 1 FROM key_cohorts c WHERE c.key_id = k.key_id AND c.experiment = b.experiment AND c.cohort = b.cohort)
"""

_INSERT_KEYS = """
INSERT INTO {table}
SELECT $source, b.t, k.key_id, b.edge, b.kv, b.r2, b.api, b.errors, b.first_seen, b.last_seen
FROM r_keys b JOIN cache_keys k ON k.key = b.key
WHERE {cond}
ORDER BY b.t
"""
INSERT_KEY_HOUR = _INSERT_KEYS.format(table="key_hour", cond="b.whole_hour")
INSERT_KEY_MINUTE = _INSERT_KEYS.format(table="key_minute", cond="NOT b.whole_hour")

COMPACT_KEY_MINUTES = """
INSERT INTO key_hour
SELECT source, date_trunc('hour', minute), key_id, sum(edge), sum(kv), sum(r2), sum(api),
       sum(errors), min(first_seen), max(last_seen)
FROM key_minute WHERE source = $source AND minute < $before
GROUP BY ALL
"""

RECOMPUTE_KEY_DAY = """
INSERT INTO key_day
SELECT source, date_trunc('day', hour), key_id, sum(edge), sum(kv), sum(r2), sum(api),
       sum(errors), min(first_seen), max(last_seen)
FROM key_hour WHERE source = $source AND hour >= $lo AND hour < $hi
GROUP BY ALL ORDER BY 2
"""

COMPACTED = "SELECT 1 FROM key_hour WHERE source = $source AND hour = $hour LIMIT 1"


def key_hour_compacted(con: duckdb.DuckDBPyConnection, source: str, hour: datetime) -> bool:
    """Whether `source`'s per-key counts of `hour` are in key_hour (whole)."""
    return first_row(con, COMPACTED, {"source": source, "hour": hour}) is not None


def store_imported(con: duckdb.DuckDBPyConnection, source: str) -> None:
    """An imported file's per-key rows (whole hours: a file is no window)."""
    con.execute(INSERT_NEW_KEYS)
    con.execute(INSERT_KEY_HOUR, {"source": source})


def replace_keys(
    con: duckdb.DuckDBPyConnection, source: str, window: Window
) -> tuple[datetime, datetime] | None:
    """Whole hours of the window go to key_hour, ragged edges to key_minute;
    returns the span of key_hour that changed, if any."""
    full_lo, full_hi = ceil_to(window.start, HOUR), floor_to(window.end, HOUR)
    if full_lo >= full_hi:
        full_lo = full_hi = window.end
    p = {"source": source, "lo": full_lo, "hi": full_hi}
    for lo, hi in ((window.start, full_lo), (full_hi, window.end)):
        hour = floor_to(lo, HOUR)
        if lo < hi and key_hour_compacted(con, source, hour):
            raise StoreError(
                f"window {window} covers part of hour {iso(hour)}, whose per-key counts are already "
                "compacted; re-ingest whole hours there"
            )
    con.execute("DELETE FROM key_hour WHERE source = $source AND hour >= $lo AND hour < $hi", p)
    con.execute(
        "DELETE FROM key_minute WHERE source = $source AND minute >= $lo AND minute < $hi", p
    )
    con.execute(INSERT_NEW_KEYS)
    con.execute(INSERT_KEY_HOUR, {"source": source})
    con.execute(INSERT_KEY_MINUTE, {"source": source})
    return (full_lo, full_hi) if full_lo < full_hi else None


def compact_keys(con: duckdb.DuckDBPyConnection, source: str, before: datetime) -> datetime | None:
    """Merge per-minute key rows of hours before `before` into key_hour;
    returns the earliest minute merged, if any."""
    p = {"source": source, "before": before}
    first = first_row(
        con, "SELECT min(minute) FROM key_minute WHERE source = $source AND minute < $before", p
    )[0]
    if first is not None:
        con.execute(COMPACT_KEY_MINUTES, p)
        con.execute("DELETE FROM key_minute WHERE source = $source AND minute < $before", p)
    return first


def refresh_summaries(
    con: duckdb.DuckDBPyConnection, source: str, start: datetime, end: datetime
) -> None:
    """key_day and the top-key summaries follow a change of key_hour."""
    p = {"source": source, "lo": floor_to(start, DAY), "hi": ceil_to(end, DAY)}
    con.execute("DELETE FROM key_day WHERE source = $source AND day >= $lo AND day < $hi", p)
    con.execute(RECOMPUTE_KEY_DAY, p)
    topkeys.refresh(con, start, end)
