"""Key classes by keys, requests and cost: what the hot, warm and cold keys
of a window weigh.

A key's class is the store's one rule (`store.queries.key_class_sql`) over
its rate in `[costs] class_window` ending where the window ends (per day
of the data there is, as the optimiser's per-key table has it), never over
the window itself: an hour holds too few requests of any key to call it cold.
The window then counts, per class, the keys it saw, their requests and
what those requests cost: the per-key cost rule `TierMix.request_cost`
(a Worker run each, KV reads, KV writes, R2 gets at list prices), summed
over the class's keys. Storage and Analytics Engine are not per key, so
they are in no class.

The cost is given as a daily rate from the part of the window with data,
as the page's headline is (`costs.basis`, Kind.RATE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb
import numpy as np

from cachemon.clock import DAY, Window, ceil_to, floor_to
from cachemon.costs.basis import Basis, Kind
from cachemon.costs.tiermix import TierMix, kv_writes_sql
from cachemon.settings import Config
from cachemon.store import topkeys
from cachemon.store.queries import (
    CLASSES,
    KEY_ROWS,
    KeyClass,
    data_days,
    key_class_sql,
    key_ranges,
)

# Per key of the window: requests by tier and the fills that wrote nothing
# (r2 + api − the rule's KV writes, clipped per key as the rule is).
RANGE_KEYS = f"""
SELECT key_id, edge, kv, r2, api, r2 + api - {kv_writes_sql()} AS failed_fills FROM (
    SELECT key_id, sum(edge) AS edge, sum(kv) AS kv, sum(r2) AS r2, sum(api) AS api,
           sum(fill_errors) AS fill_errors
    FROM ({KEY_ROWS}) GROUP BY key_id
) WHERE edge + kv + r2 + api > 0
"""
RANGE_KEYS_TEMP = f"CREATE OR REPLACE TEMP TABLE class_range AS {RANGE_KEYS}"


def class_of_sql(keys: str, replace: bool = False) -> str:
    """The one query for a key's class over the class window (the Costs
    page's class shares and the Top keys page's class column): every row of
    the relation `keys` (a constant table name or subquery with a key_id,
    never user text) with `class` appended, the store's rule
    (`key_class_sql`) on its key's requests per day of data in the class
    window. A key without requests there has a rate of 0: cold by the rule.
    Only the keys of `keys` are grouped (a month of per-key rows grouped
    for every key would take seconds). With `replace`, the class takes the
    place of the relation's own `class` column (a projection DuckDB does
    faster than dropping the column first). Parameters: `ClassSpan.params()`."""
    cls = key_class_sql("coalesce(r.requests, 0) / $days")
    return f"""
SELECT {f"k.* REPLACE ({cls} AS class)" if replace else f"k.*, {cls} AS class"}
FROM {keys} k LEFT JOIN (
    SELECT key_id, sum(edge + kv + r2 + api) AS requests FROM ({KEY_ROWS})
    WHERE key_id IN (SELECT key_id FROM {keys}) GROUP BY key_id
) r USING (key_id)
"""


# Whether a span holds any per-key row below key_day (minutes, or compacted hours).
KEY_ROWS_BETWEEN = """
SELECT EXISTS (SELECT 1 FROM key_minute WHERE minute >= $a AND minute < $b)
    OR EXISTS (SELECT 1 FROM key_hour WHERE hour >= $a AND hour < $b)
"""


def key_rows(con: duckdb.DuckDBPyConnection, lo: datetime, hi: datetime) -> dict:
    """`key_ranges(lo, hi)` (the parameters of KEY_ROWS), with an end that
    cuts a day moved out to the day's bound when the part cut off holds no
    per-key rows (the data begins or ends inside that day, as a range slid
    to the data's end does): that day's key_day row is then exactly the
    window's part of it, one row a key instead of its minutes (a month's
    ragged first day is a quarter of its per-key rows). The sums are the
    same: key_day sums the day's hours and minutes."""
    day_lo, day_hi = floor_to(lo, DAY), ceil_to(hi, DAY)
    if day_lo < lo and not _key_rows_between(con, day_lo, lo):
        lo = day_lo
    if hi < day_hi and not _key_rows_between(con, hi, day_hi):
        hi = day_hi
    return key_ranges(lo, hi)


def _key_rows_between(con: duckdb.DuckDBPyConnection, a: datetime, b: datetime) -> bool:
    return bool(con.execute(KEY_ROWS_BETWEEN, {"a": a, "b": b}).fetchall()[0][0])


@dataclass(frozen=True)
class ClassSpan:
    """The class window as every class query takes it (`class_span`)."""

    counted: Window  # widened to what per-key rows count exactly (`topkeys.covered`)
    window: Window  # its part with data: the classes' span
    days: float  # its days of data: the rates divide by these
    # The per-key rows' parameters (`key_rows`); None: `key_ranges` of the data's part.
    rows: tuple[tuple[str, datetime], ...] | None = None

    def params(self) -> dict:
        """`class_of_sql`'s parameters: the per-key rows from the data's start, and the days."""
        rows = dict(self.rows) if self.rows is not None else None
        return (rows or key_ranges(self.window.start, self.counted.end)) | {"days": self.days}


def class_span(con: duckdb.DuckDBPyConnection, classes: Window) -> ClassSpan:
    """The class window `classes` (`[costs] class_window` ending with a
    range) widened to what per-key rows count exactly, and its data."""
    counted = topkeys.covered(con, classes)
    window, days = data_days(con, counted)
    rows = key_rows(con, window.start, counted.end)
    return ClassSpan(counted, window, days, tuple(sorted(rows.items())))


# The class of each key of the window, over the class window.
CLASS_OF_TEMP = f"CREATE OR REPLACE TEMP TABLE class_of AS {class_of_sql('class_range')}"
# CLASS_SUMS in one query when the window is the class window (the 30d range
# at the default class_window): its per-key sums are the classes' too. One
# pass, without writing millions of keys into two temp tables first (the
# same sums, less work).
CLASS_SUMS_OF_RANGE = f"""
SELECT {key_class_sql("(edge + kv + r2 + api) / $days")} AS class, count(*), sum(edge), sum(kv),
       sum(r2), sum(api), sum(failed_fills)
FROM ({RANGE_KEYS}) GROUP BY 1
"""
CLASS_SUMS = """
SELECT class, count(*), sum(edge), sum(kv), sum(r2), sum(api), sum(failed_fills)
FROM class_of GROUP BY 1
"""


@dataclass(frozen=True)
class ClassShare:
    """One class's keys, requests and cost (USD/day, list) in the window."""

    klass: KeyClass
    keys: int
    requests: float
    cost_per_day: float


@dataclass(frozen=True)
class ClassShares:
    """Every class (in CLASSES order, empty ones too), the span counted and
    the span the classes are from."""

    rows: tuple[ClassShare, ...]
    counted: Window  # the span the keys, requests and cost are counted over
    basis: Basis  # the cost's: a rate from the part of `counted` with data
    class_window: Window  # the classes' span (the part with data)
    class_days: float  # its days: the rates divide by these

    def total(self, measure: str) -> float:
        """The sum of `keys`, `requests` or `cost_per_day` over the classes."""
        return float(sum(getattr(r, measure) for r in self.rows))

    def share(self, klass: KeyClass, measure: str) -> float | None:
        """`klass`'s percentage of `measure`; None when the window has none."""
        total = self.total(measure)
        row = next(r for r in self.rows if r.klass is klass)
        share = 100.0 * getattr(row, measure) / total if total > 0 else None
        # An absurd count in an older store (inf) makes no share, not nan.
        return share if share is not None and math.isfinite(share) else None


def class_shares(con: duckdb.DuckDBPyConnection, cfg: Config, window: Window) -> ClassShares:
    """The keys, requests and cost of each class in `window` (widened to
    what per-key rows count exactly, `store.topkeys.covered`), classes over
    `[costs] class_window` ending with it."""
    counted = topkeys.covered(con, window)
    # The class window as the Top keys page takes it (`optimize.key_page`).
    cs = class_span(con, Window(counted.end - cfg.costs.class_window, counted.end))
    rows = key_rows(con, counted.start, counted.end)
    try:
        if counted == cs.counted:  # the same rows: no data lies before the data's start
            sums = con.execute(CLASS_SUMS_OF_RANGE, rows | {"days": cs.days}).fetchall()
        else:
            con.execute(RANGE_KEYS_TEMP, rows)
            con.execute(CLASS_OF_TEMP, cs.params())
            sums = con.execute(CLASS_SUMS).fetchall()
        sums = {KeyClass(c): rest for c, *rest in sums}
    finally:
        for table in ("class_range", "class_of"):
            con.execute(f"DROP TABLE IF EXISTS {table}")  # a runner's connection lives on
    keys = np.array([float(sums[c][0]) if c in sums else 0.0 for c in CLASSES])
    edge, kv, r2, api, failed = (
        np.array([float(sums[c][i] or 0.0) if c in sums else 0.0 for c in CLASSES])
        for i in range(1, 6)
    )
    # The per-key rule on each class's sums: every term is linear in the
    # counts, and `failed` holds the per-key clipped writes' complement, so
    # this is the sum of the keys' own costs.
    mix = TierMix(edge, kv, r2, api, failed, r2_lookup=cfg.costs.r2_flow)
    covered = data_days(con, counted)[0]
    length = covered.length if covered.length > timedelta(0) else counted.length
    per_day = DAY / length if length > timedelta(0) else 0.0
    cost = np.asarray(mix.request_cost(cfg.pricing), dtype=float) * per_day
    requests = np.asarray(mix.requests, dtype=float)
    return ClassShares(
        tuple(
            ClassShare(c, int(keys[i]), float(requests[i]), float(cost[i]))
            for i, c in enumerate(CLASSES)
        ),
        counted,
        Basis(Kind.RATE, counted, covered),
        cs.window,
        cs.days,
    )
