"""The one ingestion path: events of any source become rollups in the store.

Two ways in, both one transaction each:

* `replace_window` — a pulled or simulated window [start, end) of a source
  replaces whatever that source had there, so pulling a window twice, or
  overlapping windows, never double counts, and a crash leaves the old data
  or the new, never half.
* `append_import` — an imported file is a source of its own (named by the
  SHA-256 of its bytes): importing it again is a no-op, and different files
  covering the same hours add up. A file is aggregated as it streams in
  (`cachemon.ingest.imports`).

Per-key counts (`cachemon.ingest.keys`) are kept per minute (`key_minute`)
until retention's minute horizon, so every window there counts exactly; the
days they make up (`key_day`) and the top-key summaries of the hours and
days a write touched are recomputed with it. Hourly rollups are recomputed
from the minute rollups of the hours a write touched, so they always equal
the sum of their minutes.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb

from cachemon import rollups, sqltime
from cachemon.clock import DAY, HOUR, MINUTE, Window, as_utc, ceil_to, floor_to, iso
from cachemon.errors import SourceError, StoreError
from cachemon.events import EventFrame
from cachemon.ingest import estimates, imports, keys
from cachemon.ingest import samples as ingest_samples
from cachemon.rollups import Rollups, Sampling
from cachemon.store import horizons, topkeys
from cachemon.store.connection import first_row, transaction

# The rollups of one write are registered as r_minute, r_latency, r_gauges
# and r_keys (see cachemon.rollups), whatever source produced them.
STORE_MINUTE = """
INSERT INTO rollup_minute
SELECT $source, minute, tier, endpoint, experiment, cohort, requests, errors, bytes,
       latency_sum, latency_min, latency_max, events
FROM r_minute
"""
STORE_LATENCY = """
INSERT INTO latency_minute
SELECT $source, minute, tier, endpoint, experiment, cohort, bucket, weight FROM r_latency
"""
STORE_GAUGES = """
INSERT INTO gauge_minute
SELECT $source, minute, name, value_sum, samples, value_min, value_max, value_last FROM r_gauges
"""


# Hours of the minutes by integer arithmetic, not date_trunc (`sqltime`).
HOUR_OF_MINUTE = sqltime.HOUR_OF_MINUTE
RECOMPUTE_ROLLUP_HOUR = f"""
INSERT INTO rollup_hour
SELECT source, {HOUR_OF_MINUTE}, tier, endpoint, experiment, cohort,
       sum(requests), sum(errors), sum(bytes), sum(latency_sum),
       min(latency_min), max(latency_max), sum(events)
FROM rollup_minute WHERE source = $source AND minute >= $lo AND minute < $hi
GROUP BY ALL
"""

RECOMPUTE_LATENCY_HOUR = f"""
INSERT INTO latency_hour
SELECT source, {HOUR_OF_MINUTE}, tier, endpoint, experiment, cohort, bucket, sum(weight)
FROM latency_minute WHERE source = $source AND minute >= $lo AND minute < $hi
GROUP BY ALL
"""

# (table, time column): every table a window replace clears for its source.
_MINUTE_TABLES = (
    ("rollup_minute", "minute"),
    ("latency_minute", "minute"),
    ("gauge_minute", "minute"),
    ("key_minute", "minute"),
)
_HOUR_TABLES = (("rollup_hour", "hour"), ("latency_hour", "hour"))
# Per-key summaries, and what retention compacted (cachemon.ingest.retention).
_COMPACTED_TABLES = (
    ("key_hour", "hour"),
    ("key_day", "day"),
    ("rollup_day", "day"),
    ("latency_day", "day"),
    ("gauge_hour", "hour"),
)

# Where a source's per-key rows are (its days sum all of them).
SOURCE_SPAN = "SELECT min(day), max(day) FROM key_day WHERE source = ?"

UPSERT_WATERMARK = """
INSERT INTO watermarks VALUES ($source, $until, $now)
ON CONFLICT (source) DO UPDATE SET until = excluded.until, updated_at = excluded.updated_at
"""
UPSERT_STATE = """
INSERT INTO source_state VALUES ($source, $state, $clock)
ON CONFLICT (source) DO UPDATE SET state = excluded.state, clock = excluded.clock
"""


@dataclass(frozen=True)
class IngestResult:
    source: str
    events: int
    window: Window | None


def replace_window(
    con: duckdb.DuckDBPyConnection,
    data: EventFrame | Rollups,
    source: str,
    window: Window,
    now: datetime,
    state: bytes | None = None,
    sampling: Sampling = ingest_samples.DEFAULT,
) -> IngestResult:
    """Replace `source`'s data in `window` by `data` (events, or rollups made
    for this window), atomically, and move the source's watermark to the
    window's end (never backwards). Events are sampled by `sampling` (SHARDS,
    `[ttl]`); rollups bring their own samples."""
    if floor_to(window.start, MINUTE) != window.start or floor_to(window.end, MINUTE) != window.end:
        raise SourceError(f"window {window} is not aligned to whole minutes")
    with _transaction(con):
        r = (
            rollups.from_events(con, data, window, sampling)
            if isinstance(data, EventFrame)
            else data
        )
        _check_inside(r, window, source)
        with _registered(con, r):
            p = {"source": source, "lo": window.start, "hi": window.end}
            for table, col in _MINUTE_TABLES:
                con.execute(
                    f"DELETE FROM {table} WHERE source = $source AND {col} >= $lo AND {col} < $hi",
                    p,
                )
            _store_minutes(con, source)
            changed = keys.replace_keys(con, source, window)
            ingest_samples.replace(con, source, r, window.start, window.end)
            estimates.replace(con, source, r, window.start, window.end)
        _recompute_hours(con, source, window.start, window.end)
        keys.refresh_summaries(con, source, *changed)
        previous = first_row(con, "SELECT until FROM watermarks WHERE source = ?", [source])
        until = max(window.end, previous[0]) if previous else window.end
        con.execute(UPSERT_WATERMARK, {"source": source, "until": until, "now": now})
        if state is not None:
            con.execute(UPSERT_STATE, {"source": source, "state": state, "clock": window.end})
    return IngestResult(source, r.events, window)


def append_import(
    con: duckdb.DuckDBPyConnection, frame: EventFrame, sha256: str, file_name: str, now: datetime
) -> IngestResult | None:
    """Add a file's events as source `file:<sha>`; None if already imported."""
    acc = imports.ImportAccumulator(ingest_samples.DEFAULT)
    acc.add(frame)
    return append_imports(con, [acc.finish(sha256, file_name)], now)[0]


def append_imports(
    con: duckdb.DuckDBPyConnection, files: list[imports.ImportFile], now: datetime
) -> list[IngestResult | None]:
    """Add several files' rollups, each as source `file:<sha>`, in ONE
    transaction: all of them or (on any failure) none. A file already
    imported, or twice in `files`, gives None."""
    out: list[IngestResult | None] = []
    seen: set[str] = set()
    with _transaction(con):
        for f in files:
            if f.sha256 in seen or first_row(
                con, "SELECT 1 FROM imports WHERE sha256 = ?", [f.sha256]
            ):
                out.append(None)
                continue
            seen.add(f.sha256)
            out.append(_store_import(con, f, now))
    return out


def _store_import(
    con: duckdb.DuckDBPyConnection, f: imports.ImportFile, now: datetime
) -> IngestResult:
    source = f"file:{f.sha256[:16]}"
    if f.span:
        lo, hi = floor_to(f.span[0], HOUR), ceil_to(f.span[1] + timedelta(microseconds=1), HOUR)
        with _registered(con, f.rollups):
            _store_minutes(con, source)
            keys.store_imported(con, source)
            ingest_samples.store(con, source, f.rollups, *ingest_samples.covered(*f.span))
        _recompute_hours(con, source, lo, hi)
        keys.refresh_summaries(con, source, lo, hi)
    con.execute(
        "INSERT INTO imports VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            f.sha256,
            source,
            f.name,
            f.events,
            f.span[0] if f.span else None,
            f.span[1] if f.span else None,
            now,
        ],
    )
    return IngestResult(source, f.events, None)


def load_state(con: duckdb.DuckDBPyConnection, source: str) -> tuple[bytes, datetime] | None:
    """The saved state of a stateful source (the simulator), if any."""
    row = first_row(con, "SELECT state, clock FROM source_state WHERE source = ?", [source])
    return (bytes(row[0]), row[1]) if row else None


def state_clock(con: duckdb.DuckDBPyConnection, source: str) -> datetime | None:
    """Up to when a stateful source's saved state has run (without loading it)."""
    row = first_row(con, "SELECT clock FROM source_state WHERE source = ?", [source])
    return row[0] if row else None


def watermark(con: duckdb.DuckDBPyConnection, source: str) -> datetime | None:
    row = first_row(con, "SELECT until FROM watermarks WHERE source = ?", [source])
    return row[0] if row else None


def watermarks(con: duckdb.DuckDBPyConnection) -> dict[str, datetime]:
    """Every source's watermark (data is complete up to it)."""
    return {
        source: as_utc(until)
        for source, until in con.execute(
            "SELECT source, until FROM watermarks ORDER BY source"
        ).fetchall()
    }


def drop_source(con: duckdb.DuckDBPyConnection, source: str) -> None:
    """Remove every row, the watermark and the state of `source`."""
    with _transaction(con):
        span = first_row(con, SOURCE_SPAN, [source])
        for table, _ in _MINUTE_TABLES + _HOUR_TABLES + _COMPACTED_TABLES:
            con.execute(f"DELETE FROM {table} WHERE source = ?", [source])
        for table in ("watermarks", "source_state"):
            con.execute(f"DELETE FROM {table} WHERE source = ?", [source])
        ingest_samples.drop(con, source)
        estimates.drop(con, source)
        if span[0] is not None:
            topkeys.refresh(con, span[0], span[1] + DAY)


def _store_minutes(con: duckdb.DuckDBPyConnection, source: str) -> None:
    for sql in (STORE_MINUTE, STORE_LATENCY, STORE_GAUGES):
        con.execute(sql, {"source": source})


def _recompute_hours(
    con: duckdb.DuckDBPyConnection, source: str, start: datetime, end: datetime
) -> None:
    horizons.check_write(con, floor_to(start, HOUR))
    p = {"source": source, "lo": floor_to(start, HOUR), "hi": ceil_to(end, HOUR)}
    for table, col in _HOUR_TABLES:
        con.execute(
            f"DELETE FROM {table} WHERE source = $source AND {col} >= $lo AND {col} < $hi", p
        )
    con.execute(RECOMPUTE_ROLLUP_HOUR, p)
    con.execute(RECOMPUTE_LATENCY_HOUR, p)


def _check_inside(r: Rollups, window: Window, source: str) -> None:
    span = r.time_range()
    if span and (span[0] < window.start or span[1] >= window.end):
        raise SourceError(
            f"{source}: data from {iso(span[0])} to {iso(span[1])} falls outside window {window}"
        )


@contextmanager
def _transaction(con: duckdb.DuckDBPyConnection):
    try:
        with transaction(con):
            yield
    except duckdb.Error as exc:
        # Input that passed validation but not the store's constraints: say
        # so plainly (the write was rolled back whole).
        raise StoreError(
            f"the store refused the write, nothing was written: {str(exc).splitlines()[0]}"
        ) from exc


class _registered:
    """Register a Rollups' tables under the names the STORE_* SQL reads; the
    per-key rows coded (r_keys, r_key_names: `rollups.coded_keys`)."""

    NAMES = ("r_minute", "r_latency", "r_gauges", "r_keys", "r_key_names")

    def __init__(self, con: duckdb.DuckDBPyConnection, r: Rollups):
        self.con, self.r = con, r

    def __enter__(self):
        coded, names = rollups.coded_keys(self.r.keys)
        tables = (self.r.minute, self.r.latency, self.r.gauges, coded, names)
        for name, table in zip(self.NAMES, tables, strict=True):
            self.con.register(name, table)

    def __exit__(self, exc_type, *exc):
        for name in self.NAMES:
            try:
                self.con.unregister(name)
            except duckdb.Error:
                if (
                    exc_type is None
                ):  # an aborted transaction refuses it; the next register replaces it
                    raise
        return False
