"""The one ingestion path: events of any source become rollups in the store.

Two ways in, both one transaction each:

* `replace_window` — a pulled or simulated window [start, end) of a source
  replaces whatever that source had there, so pulling a window twice, or
  overlapping windows, never double counts, and a crash leaves the old data
  or the new, never half.
* `append_import` — an imported file is a source of its own (named by the
  SHA-256 of its bytes): importing it again is a no-op, and different files
  covering the same hours add up.

Per-key counts are kept per hour. A window that covers only part of an hour
writes that hour's per-key rows per minute (`key_minute`); once the hour is
`key_compaction_lag` behind the newest window they are merged into
`key_hour`. Hourly rollups are recomputed from the minute rollups of the
hours a write touched, so they always equal the sum of their minutes.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb
import pyarrow as pa

from cachemon import rollups
from cachemon.clock import DAY, HOUR, MINUTE, Window, as_utc, ceil_to, floor_to, iso
from cachemon.errors import SourceError, StoreError
from cachemon.events import EventFrame
from cachemon.rollups import Rollups
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

RECOMPUTE_ROLLUP_HOUR = """
INSERT INTO rollup_hour
SELECT source, date_trunc('hour', minute), tier, endpoint, experiment, cohort,
       sum(requests), sum(errors), sum(bytes), sum(latency_sum),
       min(latency_min), max(latency_max), sum(events)
FROM rollup_minute WHERE source = $source AND minute >= $lo AND minute < $hi
GROUP BY ALL
"""

RECOMPUTE_LATENCY_HOUR = """
INSERT INTO latency_hour
SELECT source, date_trunc('hour', minute), tier, endpoint, experiment, cohort, bucket, sum(weight)
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

COMPACTED = "SELECT 1 FROM key_hour WHERE source = $source AND hour = $hour LIMIT 1"
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
    key_compaction_lag: timedelta = HOUR,
    state: bytes | None = None,
) -> IngestResult:
    """Replace `source`'s data in `window` by `data` (events, or rollups made
    for this window), atomically, and move the source's watermark to the
    window's end (never backwards)."""
    if floor_to(window.start, MINUTE) != window.start or floor_to(window.end, MINUTE) != window.end:
        raise SourceError(f"window {window} is not aligned to whole minutes")
    with _transaction(con):
        r = rollups.from_events(con, data, window) if isinstance(data, EventFrame) else data
        _check_inside(r, window, source)
        with _registered(con, r):
            p = {"source": source, "lo": window.start, "hi": window.end}
            for table, col in _MINUTE_TABLES:
                con.execute(
                    f"DELETE FROM {table} WHERE source = $source AND {col} >= $lo AND {col} < $hi",
                    p,
                )
            _store_minutes(con, source)
            changed = _replace_keys(con, source, window)
        _recompute_hours(con, source, window.start, window.end)
        before = floor_to(window.end - key_compaction_lag, HOUR)
        compacted = _compact_keys(con, source, before)
        if compacted:
            changed = _hull(changed, (floor_to(compacted, HOUR), before))
        if changed:
            _refresh_key_summaries(con, source, *changed)
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
    acc = ImportAccumulator()
    acc.add(frame)
    return append_imports(con, [acc.finish(sha256, file_name)], now)[0]


def append_imports(
    con: duckdb.DuckDBPyConnection, files: list[ImportFile], now: datetime
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


def _store_import(con, f: ImportFile, now: datetime) -> IngestResult:
    source = f"file:{f.sha256[:16]}"
    if f.span:
        lo, hi = floor_to(f.span[0], HOUR), ceil_to(f.span[1] + timedelta(microseconds=1), HOUR)
        with _registered(con, f.rollups):
            _store_minutes(con, source)
            con.execute(INSERT_NEW_KEYS)
            con.execute(INSERT_KEY_HOUR, {"source": source})
        _recompute_hours(con, source, lo, hi)
        _refresh_key_summaries(con, source, lo, hi)
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


@dataclass(frozen=True)
class ImportFile:
    """One file's events, aggregated: what `append_imports` stores."""

    sha256: str
    name: str
    rollups: Rollups
    events: int
    span: tuple[datetime, datetime] | None


# Merging partial rollups of batches: sums add, minimums and maximums
# combine, and a gauge's last value is the one read last (hence last_at).
GAUGE_PARTIAL_SQL = """
SELECT date_trunc('minute', timestamp) AS minute, kind AS name,
       sum(latency_ms) AS value_sum, count(*) AS samples, min(latency_ms) AS value_min,
       max(latency_ms) AS value_max, arg_max(latency_ms, timestamp) AS value_last, max(timestamp) AS last_at
FROM batch WHERE kind <> 'request'
GROUP BY ALL
"""
MERGE_SQL = {
    "minute": """SELECT minute, tier, endpoint, experiment, cohort, sum(requests) AS requests, sum(errors) AS errors,
        sum(bytes) AS bytes, sum(latency_sum) AS latency_sum, min(latency_min) AS latency_min,
        max(latency_max) AS latency_max, sum(events)::BIGINT AS events
        FROM part GROUP BY ALL ORDER BY 1""",
    "latency": """SELECT minute, tier, endpoint, experiment, cohort, bucket, sum(weight) AS weight
        FROM part GROUP BY ALL ORDER BY 1""",
    "gauges": """SELECT minute, name, sum(value_sum) AS value_sum, sum(samples)::BIGINT AS samples,
        min(value_min) AS value_min, max(value_max) AS value_max, arg_max(value_last, last_at) AS value_last,
        max(last_at) AS last_at FROM part GROUP BY ALL""",
    "keys": """SELECT key, any_value(endpoint) AS endpoint, experiment, cohort, t, whole_hour, sum(edge) AS edge,
        sum(kv) AS kv, sum(r2) AS r2, sum(api) AS api, sum(errors) AS errors,
        min(first_seen) AS first_seen, max(last_seen) AS last_seen
        FROM part GROUP BY key, experiment, cohort, t, whole_hour""",
}
# Partial rollup rows held before they are merged (bounds memory between
# merges; ~100 MB of per-key rows). Merging waits until the pending rows
# also exceed the merged ones, so many distinct keys cost no quadratic time.
MERGE_ROWS = 300_000


class ImportAccumulator:
    """Aggregates a file's validated batches as they stream in, so an import
    holds rollups (bounded by distinct minutes and keys), never all events."""

    def __init__(self):
        self.con = duckdb.connect()
        self.parts: dict[str, list[pa.Table]] = {name: [] for name in MERGE_SQL}
        self.events, self.lo, self.hi = 0, None, None
        self.merged = 0  # rows after the last merge

    def add(self, frame: EventFrame) -> None:
        if len(frame) == 0:
            return
        lo, hi = rollups.ALL_HOURS.start, rollups.ALL_HOURS.end
        self.con.register("batch", frame.table)
        try:
            self.parts["minute"].append(self.con.sql(rollups.MINUTE_SQL).to_arrow_table())
            self.parts["latency"].append(self.con.sql(rollups.LATENCY_SQL).to_arrow_table())
            self.parts["gauges"].append(self.con.sql(GAUGE_PARTIAL_SQL).to_arrow_table())
            self.parts["keys"].append(
                self.con.sql(
                    rollups.KEYS_SQL, params={"full_lo": lo, "full_hi": hi}
                ).to_arrow_table()
            )
        finally:
            self.con.unregister("batch")
        span = frame.time_range()
        self.lo = span[0] if self.lo is None else min(self.lo, span[0])
        self.hi = span[1] if self.hi is None else max(self.hi, span[1])
        self.events += len(frame)
        if sum(t.num_rows for parts in self.parts.values() for t in parts) > max(
            MERGE_ROWS, 2 * self.merged
        ):
            self._merge()

    def _merge(self) -> None:
        for name, sql in MERGE_SQL.items():
            parts = self.parts[name]
            if len(parts) > 1:
                self.con.register("part", pa.concat_tables(parts, promote_options="permissive"))
                try:
                    self.parts[name] = [self.con.sql(sql).to_arrow_table()]
                finally:
                    self.con.unregister("part")
        self.merged = sum(t.num_rows for parts in self.parts.values() for t in parts)

    def finish(self, sha256: str, name: str) -> ImportFile:
        if self.events == 0:
            empty = rollups.from_events(self.con, EventFrame.empty(), None)
            self.con.close()
            return ImportFile(sha256, name, empty, 0, None)
        self._merge()
        r = Rollups(
            *(self.parts[n][0] for n in ("minute", "latency", "gauges", "keys")), events=self.events
        )
        self.con.close()
        return ImportFile(sha256, name, r, self.events, (self.lo, self.hi))


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


def key_hour_compacted(con: duckdb.DuckDBPyConnection, source: str, hour: datetime) -> bool:
    """Whether `source`'s per-key counts of `hour` are in key_hour (whole)."""
    return first_row(con, COMPACTED, {"source": source, "hour": hour}) is not None


def compact_all(con: duckdb.DuckDBPyConnection, before: datetime) -> int:
    """Merge every source's per-key minute rows of hours before `before`
    (sources that stopped writing are never compacted by their own writes).
    Returns how many sources had rows to merge."""
    sources = [
        r[0]
        for r in con.execute(
            "SELECT DISTINCT source FROM key_minute WHERE minute < $before", {"before": before}
        ).fetchall()
    ]
    for source in sources:
        with _transaction(con):
            first = _compact_keys(con, source, before)
            if first:
                _refresh_key_summaries(con, source, floor_to(first, HOUR), before)
    return len(sources)


def drop_source(con: duckdb.DuckDBPyConnection, source: str) -> None:
    """Remove every row, the watermark and the state of `source`."""
    with _transaction(con):
        span = first_row(
            con, "SELECT min(hour), max(hour) FROM key_hour WHERE source = ?", [source]
        )
        for table, _ in _MINUTE_TABLES + _HOUR_TABLES + _COMPACTED_TABLES:
            con.execute(f"DELETE FROM {table} WHERE source = ?", [source])
        for table in ("watermarks", "source_state"):
            con.execute(f"DELETE FROM {table} WHERE source = ?", [source])
        if span[0] is not None:
            topkeys.refresh(con, span[0], span[1] + HOUR)


def _store_minutes(con, source: str) -> None:
    for sql in (STORE_MINUTE, STORE_LATENCY, STORE_GAUGES):
        con.execute(sql, {"source": source})


def _replace_keys(con, source: str, window: Window) -> tuple[datetime, datetime] | None:
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


def _hull(a, b):
    return b if a is None else (min(a[0], b[0]), max(a[1], b[1]))


def _recompute_hours(con, source: str, start: datetime, end: datetime) -> None:
    horizons.check_write(con, floor_to(start, HOUR))
    p = {"source": source, "lo": floor_to(start, HOUR), "hi": ceil_to(end, HOUR)}
    for table, col in _HOUR_TABLES:
        con.execute(
            f"DELETE FROM {table} WHERE source = $source AND {col} >= $lo AND {col} < $hi", p
        )
    con.execute(RECOMPUTE_ROLLUP_HOUR, p)
    con.execute(RECOMPUTE_LATENCY_HOUR, p)


def _compact_keys(con, source: str, before: datetime) -> datetime | None:
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


def _refresh_key_summaries(con, source: str, start: datetime, end: datetime) -> None:
    """key_day and the top-key summaries follow a change of key_hour."""
    p = {"source": source, "lo": floor_to(start, DAY), "hi": ceil_to(end, DAY)}
    con.execute("DELETE FROM key_day WHERE source = $source AND day >= $lo AND day < $hi", p)
    con.execute(RECOMPUTE_KEY_DAY, p)
    topkeys.refresh(con, start, end)


def _check_inside(r: Rollups, window: Window, source: str) -> None:
    span = r.time_range()
    if span and (span[0] < window.start or span[1] >= window.end):
        raise SourceError(
            f"{source}: data from {iso(span[0])} to {iso(span[1])} falls outside window {window}"
        )


@contextmanager
def _transaction(con):
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
    """Register a Rollups' tables under the names the STORE_* SQL reads."""

    NAMES = {"r_minute": "minute", "r_latency": "latency", "r_gauges": "gauges", "r_keys": "keys"}

    def __init__(self, con, r: Rollups):
        self.con, self.r = con, r

    def __enter__(self):
        for name, attr in self.NAMES.items():
            self.con.register(name, getattr(self.r, attr))

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
