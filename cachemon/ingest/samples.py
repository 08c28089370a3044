"""SHARDS samples into the store: a write's sampled request rows
(`Rollups.samples`) and the rate each minute was sampled at.

`samples` holds the rows (key ids from `cache_keys`, filled by
`cachemon.ingest.keys` first), `sample_keys` each sampled key's hash once, and
`sample_minutes` one row per source and minute a write covered, with the rate
used there, or NULL when the source has no key hash (so the TTL what-if can
say why it has no sample: `cachemon.store.samples`). A window replace clears
the source's rows of the window first, so re-ingesting never duplicates.

Each function runs inside the caller's transaction (`cachemon.ingest.write`).
"""

from __future__ import annotations

from datetime import datetime

import duckdb

from cachemon.clock import MINUTE, floor_to
from cachemon.errors import StoreError
from cachemon.rollups import Rollups, Sampling, empty_samples
from cachemon.settings import TtlConfig
from cachemon.store.connection import first_row

DELETE_SAMPLES = "DELETE FROM samples WHERE source = $source AND t >= $lo AND t < $hi"
DELETE_MINUTES = (
    "DELETE FROM sample_minutes WHERE source = $source AND minute >= $lo AND minute < $hi"
)
# The sampled rows are registered as s_rows (cachemon.rollups.SAMPLE_SCHEMA);
# their keys are keys of the same write, so key_map (cachemon.ingest.keys,
# run first) has their ids.
INSERT_SAMPLE_KEYS = """
INSERT OR IGNORE INTO sample_keys
SELECT k.key_id, any_value(s.key_hash) FROM s_rows s JOIN key_map k ON k.key = s.key
GROUP BY k.key_id
"""
INSERT_SAMPLES = """
INSERT INTO samples
SELECT $source, s.timestamp, s.endpoint, k.key_id, s.tier, s.error, s.weight
FROM s_rows s JOIN key_map k ON k.key = s.key
ORDER BY s.timestamp
"""
INSERT_MINUTES = """
INSERT INTO sample_minutes
SELECT $source, minute, $rate
FROM generate_series($lo::TIMESTAMPTZ, $hi::TIMESTAMPTZ - INTERVAL 1 MINUTE, INTERVAL 1 MINUTE) t(minute)
"""
DROP = (
    "DELETE FROM samples WHERE source = $source",
    "DELETE FROM sample_minutes WHERE source = $source",
)


def sampling(ttl: TtlConfig) -> Sampling:
    """The sampling `[ttl]` configures."""
    return Sampling(ttl.sample_rate, float(ttl.sample_budget))


DEFAULT = sampling(TtlConfig())


def replace(
    con: duckdb.DuckDBPyConnection, source: str, r: Rollups, lo: datetime, hi: datetime
) -> int:
    """`source`'s samples and sampled minutes in [lo, hi) become those of
    `r`; returns the rows stored."""
    p = {"source": source, "lo": lo, "hi": hi}
    con.execute(DELETE_SAMPLES, p)
    con.execute(DELETE_MINUTES, p)
    return store(con, source, r, lo, hi)


def store(
    con: duckdb.DuckDBPyConnection, source: str, r: Rollups, lo: datetime, hi: datetime
) -> int:
    """Add `r`'s samples (the key ids must exist) and mark [lo, hi) as
    sampled at `r.sample_rate` (NULL: no key hash)."""
    rate = r.sample_rate if r.samples is not None else None
    if hi > lo:
        con.execute(INSERT_MINUTES, {"source": source, "lo": lo, "hi": hi, "rate": rate})
    rows = r.samples if r.samples is not None else empty_samples()
    if rows.num_rows == 0:
        return 0
    con.register("s_rows", rows)
    try:
        con.execute(INSERT_SAMPLE_KEYS)
        stored = first_row(con, INSERT_SAMPLES, {"source": source})[0]
    finally:
        con.unregister("s_rows")
    if stored != rows.num_rows:
        # Every sampled key is a key of the same write: a mismatch is a bug.
        raise StoreError(
            f"{source}: {rows.num_rows - stored} sample rows have keys missing from the per-key rows of the same write"
        )
    return stored


def covered(lo: datetime, hi: datetime) -> tuple[datetime, datetime]:
    """The minutes an imported file's events span, [first minute, last + 1m)."""
    return floor_to(lo, MINUTE), floor_to(hi, MINUTE) + MINUTE


def drop(con: duckdb.DuckDBPyConnection, source: str) -> None:
    """Remove every sample and sampled minute of `source`."""
    for sql in DROP:
        con.execute(sql, {"source": source})
