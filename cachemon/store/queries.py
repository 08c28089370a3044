"""Store queries several domains share: where the request data lies, a window
split into the rollup tables that answer it exactly, tier totals, per-key rows,
and the key-class rule.

Metrics, costs, alerts, tuning and the dashboard all read these; keeping them
in the store means no domain imports another one just for its SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import duckdb

from cachemon.clock import DAY, HOUR, MINUTE, Window, ceil_to, floor_to
from cachemon.errors import EmptyStoreError
from cachemon.store.connection import first_row

# -- key classes ---------------------------------------------------------------


class KeyClass(StrEnum):
    """A key's class by its requests per day; the value is what SQL, stored
    reports and the dashboard say."""

    HOT = "hot"
    WARM = "warm"
    COLD = "cold"


CLASSES: tuple[KeyClass, ...] = tuple(KeyClass)  # busiest first: the order every table shows
# Hot above 100 requests/day, cold under 10 requests a month (30 days),
# warm in between, both bounds inclusive.
HOT_PER_DAY = 100.0
COLD_PER_DAY = 10.0 / 30.0


def key_class_sql(per_day: str) -> str:
    """The SQL expression of the key class of a rate `per_day` (an SQL
    expression of requests per day): the one place the rule is written."""
    return (
        f"CASE WHEN {per_day} > {HOT_PER_DAY!r} THEN '{KeyClass.HOT}' "
        f"WHEN {per_day} < {COLD_PER_DAY!r} THEN '{KeyClass.COLD}' ELSE '{KeyClass.WARM}' END"
    )


# -- windows over the rollups --------------------------------------------------


# Each time range is its own UNION ALL branch: a plain range lets DuckDB skip
# row groups by their min/max, which an OR of ranges defeats.
# `columns` may name the time column as {time}. Parameters from `window_params`.
def three_ranges(columns: str, hour_table: str, minute_table: str) -> str:
    """A UNION ALL of `columns` over a window's whole hours (`hour_table`)
    and the ragged minutes at either end (`minute_table`)."""
    hour, minute = columns.format(time="hour"), columns.format(time="minute")
    return f"""
    SELECT {hour} FROM {hour_table} WHERE hour >= $h_lo AND hour < $h_hi
    UNION ALL
    SELECT {minute} FROM {minute_table} WHERE minute >= $m1_lo AND minute < $m1_hi
    UNION ALL
    SELECT {minute} FROM {minute_table} WHERE minute >= $m2_lo AND minute < $m2_hi
"""


def window_params(window: Window) -> dict:
    """Split a window into whole hours plus the ragged minutes at each end
    (the parameters of `three_ranges`)."""
    s, e = window.start, window.end
    hs, he = ceil_to(s, HOUR), floor_to(e, HOUR)
    if hs < he:
        return {"h_lo": hs, "h_hi": he, "m1_lo": s, "m1_hi": hs, "m2_lo": he, "m2_hi": e}
    return {"h_lo": s, "h_hi": s, "m1_lo": s, "m1_hi": e, "m2_lo": e, "m2_hi": e}


def ordered_sum(column: str) -> str:
    """SQL summing the DOUBLE `column` in value order. A parallel float sum
    adds in whatever order its threads finish, so the same window read twice
    could differ in the last bit (a sampled request counts 1/rate, so even
    request counts are fractions); in value order it reads the same every
    time, and NaN or infinity still show through."""
    return f"sum({column} ORDER BY {column})"


# Per tier of a window, in tier order (parameters: `window_params` and
# $endpoint, NULL for all). Callers add tiers up in this order too.
TIER_TOTALS = f"""
SELECT tier, {", ".join(ordered_sum(c) for c in ("requests", "errors", "bytes", "latency_sum"))}
FROM ({three_ranges("tier, endpoint, requests, errors, bytes, latency_sum", "rollup_hour", "rollup_minute")})
WHERE $endpoint IS NULL OR endpoint = $endpoint
GROUP BY tier
ORDER BY tier
"""

# -- where the data lies -------------------------------------------------------

# Each resolution's span: minutes, then hours and days where retention
# compacted the oldest minutes away.
DATA_SPAN = """
SELECT (SELECT min(minute) FROM rollup_minute), (SELECT max(minute) + INTERVAL 1 MINUTE FROM rollup_minute),
       (SELECT min(hour) FROM rollup_hour), (SELECT max(hour) + INTERVAL 1 HOUR FROM rollup_hour),
       (SELECT min(day) FROM rollup_day), (SELECT max(day) + INTERVAL 1 DAY FROM rollup_day)
"""
# The same, counting only data before $at: data dated later (only an older
# store can hold events from the future) must not make old data look fresh.
DATA_SPAN_BEFORE = """
SELECT (SELECT min(minute) FROM rollup_minute), (SELECT max(minute) + INTERVAL 1 MINUTE FROM rollup_minute WHERE minute < $at),
       (SELECT min(hour) FROM rollup_hour), (SELECT max(hour) + INTERVAL 1 HOUR FROM rollup_hour WHERE hour < $at),
       (SELECT min(day) FROM rollup_day), (SELECT max(day) + INTERVAL 1 DAY FROM rollup_day WHERE day < $at)
"""


def data_span(
    con: duckdb.DuckDBPyConnection, at: datetime | None = None
) -> tuple[datetime, datetime] | None:
    """First and last-plus-one minute of request data in the store (an
    older hour or day where retention left only those). With `at`, the end
    is where the data before `at` ends (never after `at`), so the age of
    the data as of `at` is never negative nor hidden by later rows."""
    if at is None:
        return _span(first_row(con, DATA_SPAN), None)
    return _span(first_row(con, DATA_SPAN_BEFORE, {"at": at}), at)


@dataclass(frozen=True)
class Spans:
    """The store's `data_span` (`all`) and its span before an instant
    (`before`, `data_span(con, at)`); `settled` when every request row and
    gauge reading is dated before that instant (the usual case: nothing
    from its future), so a range ending there holds every row from its start."""

    all: tuple[datetime, datetime] | None
    before: tuple[datetime, datetime] | None
    settled: bool


# DATA_SPAN and the newest gauge reading.
EXTENT = f"{DATA_SPAN.rstrip()}, (SELECT max(minute) + INTERVAL 1 MINUTE FROM gauge_minute)"


def extent(con: duckdb.DuckDBPyConnection) -> tuple:
    """The first and last-plus-one instant of each resolution's request
    rows (DATA_SPAN's row) and the end of the gauge readings, for
    `data_spans`."""
    return first_row(con, EXTENT)


def data_spans(con: duckdb.DuckDBPyConnection, at: datetime, row: tuple | None = None) -> Spans:
    """`data_span(con)` and `data_span(con, at)` together, from the store's
    `extent` (`row`, read when not given) alone when every row is dated
    before `at`, else with one more query."""
    row = row or extent(con)
    ends = [(row[1], MINUTE), (row[3], HOUR), (row[5], DAY), (row[6], MINUTE)]
    # An end is the last row's start plus its length: all rows start before `at`.
    settled = all(end is None or end - length < at for end, length in ends)
    spans = row[:6]
    return Spans(_span(spans, None), _span(spans, at) if settled else data_span(con, at), settled)


def _span(row: tuple, at: datetime | None) -> tuple[datetime, datetime] | None:
    m_lo, m_hi, h_lo, h_hi, d_lo, d_hi = row
    lo, hi = m_lo, m_hi or h_hi or d_hi
    if h_lo is not None and (lo is None or h_lo < floor_to(lo, HOUR)):
        lo = h_lo
    if d_lo is not None and (lo is None or d_lo < floor_to(lo, DAY)):
        lo = d_lo
    if lo is None:
        return None
    if at is not None:
        # Nothing before `at`: the data starts later; its "end" is its start.
        hi = min(hi, at) if hi is not None else min(lo, at)
    return lo, hi


EMPTY_STORE = "the store has no request data yet: run `python -m cachemon demo`, `import` or `pull`"


def data_end(con: duckdb.DuckDBPyConnection, at: datetime) -> datetime:
    """`at`, or where the data ends when it ends earlier (a lagging source:
    the last good numbers). EmptyStoreError without data."""
    span = data_span(con, at)
    if span is None:
        raise EmptyStoreError(EMPTY_STORE)
    return min(at, span[1])


def data_days(con: duckdb.DuckDBPyConnection, window: Window) -> tuple[Window, float]:
    """The part of `window` the data covers, and its days (at least an
    hour): rates per day divide by these."""
    return days_of(window, data_span(con))


def days_of(window: Window, span: tuple[datetime, datetime] | None) -> tuple[Window, float]:
    """`data_days` of a window given the store's `data_span(con)`."""
    lo = max(window.start, span[0]) if span else window.start
    hi = max(lo, min(window.end, span[1])) if span else window.end
    return Window(lo, hi), max((hi - lo) / DAY, 1 / 24)


# -- per-key rows ----------------------------------------------------------------

# Per-key rows of a window, each counted once: whole days from key_day (which
# sums hours and minutes), the whole hours around them from key_hour where
# compacted, and the minutes from key_minute where not (an hour is in exactly
# one of the two). One plain range per branch, so DuckDB can skip row groups
# by min/max. Parameters from `key_ranges`.
_KEY_ROW = "key_id, edge, kv, r2, api, errors, fill_errors"
KEY_ROWS = f"""
SELECT {_KEY_ROW} FROM key_day WHERE day >= $d_lo AND day < $d_hi
UNION ALL
SELECT {_KEY_ROW} FROM key_hour WHERE hour >= $h_lo AND hour < $d_lo
UNION ALL
SELECT {_KEY_ROW} FROM key_hour WHERE hour >= $d_hi AND hour < $h_hi
UNION ALL
SELECT {_KEY_ROW} FROM key_minute WHERE minute >= $lo AND minute < $d_lo
UNION ALL
SELECT {_KEY_ROW} FROM key_minute WHERE minute >= $d_hi AND minute < $hi
"""


def key_ranges(lo: datetime, hi: datetime) -> dict:
    """Parameters splitting [lo, hi) into whole days [d_lo, d_hi), the whole
    hours around them [h_lo, d_lo) and [d_hi, h_hi), and the ragged minutes
    at either end [lo, h_lo) and [h_hi, hi) (each range may be empty): the
    parts of KEY_ROWS and of the top-key summaries (`store.topkeys`).
    Compacted hourly rows cannot be split, so those hours are the ones wholly
    inside the window; minutes, kept for [retention] minute_days, count exactly."""
    h_lo, h_hi = ceil_to(lo, HOUR), floor_to(hi, HOUR)
    if h_lo >= h_hi:
        h_lo = h_hi = hi
    d_lo, d_hi = ceil_to(lo, DAY), floor_to(hi, DAY)
    if d_lo >= d_hi:
        d_lo = d_hi = h_hi
    return {"lo": lo, "hi": hi, "h_lo": h_lo, "h_hi": h_hi, "d_lo": d_lo, "d_hi": d_hi}
