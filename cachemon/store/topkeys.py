"""Top keys of any window, exact and fast.

Per-key counts live in parts: whole days in `key_day`, hours older than the
minute horizon in `key_hour`, and minutes in `key_minute` for as long as
[retention] minute_days keeps minutes (an hour is in exactly one of
key_hour/key_minute; key_day sums both). So a window is answered exactly:
whole days from key_day, whole hours from key_hour (or their minutes),
ragged minutes from key_minute. Where a window's edge falls in an hour
whose minutes are gone (older than the minute horizon) that hour counts
whole, and before the hour horizon the whole day: `covered` says which span
was really counted and `top_keys` counts exactly that span, never more
silently (`TopKeys.exact` is False then).

A week holds about a million per-key rows (the long tail of one-off searches
dominates), too many to GROUP BY for every request. So ingestion keeps, for
every hour and day, a summary: the `LIST_SIZE` biggest keys of that part
(`key_top`) and the largest count left out (`key_top_cutoff`). For a window,
a key's known counts (from the lists, plus the ragged minutes) give a lower
bound, and adding the cutoffs of the parts whose list it is missing from
gives an upper bound; a key in no list is bounded by the sum of all cutoffs.
When the k best lower bounds are exact and beat every other upper bound,
that is the exact answer (the threshold algorithm of Fagin et al.).
Otherwise, rarely (an endpoint filter, ties, flat traffic), the parts are
aggregated in full.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import duckdb

from cachemon.clock import DAY, HOUR, MINUTE, Window, ceil_to, floor_to
from cachemon.errors import InputError
from cachemon.sqltime import HOUR_OF_MINUTE, bucket_sql
from cachemon.store import horizons
from cachemon.store.queries import KEY_ROWS, key_ranges

if TYPE_CHECKING:
    import pandas as pd

LIST_SIZE = 1000

# -- maintenance (called by ingest inside its transaction) -------------------

# date_trunc in UTC, by integer arithmetic (`sqltime.bucket_sql`).
DAY_OF_T = bucket_sql("t", 86400)
_SUMS = """sum(edge) AS edge, sum(kv) AS kv, sum(r2) AS r2, sum(api) AS api, sum(errors) AS errors,
       sum(fill_errors) AS fill_errors"""
_COLS = "key_id, edge, kv, r2, api, errors, fill_errors"
_RANK = f"""
CREATE OR REPLACE TEMP TABLE ranked AS
SELECT t, key_id, {_SUMS}, sum(edge + kv + r2 + api) AS requests,
       row_number() OVER (PARTITION BY t ORDER BY sum(edge + kv + r2 + api) DESC, key_id) AS rank
FROM ({{rows}})
GROUP BY t, key_id
"""
# Hours: compacted ones from key_hour, the others from their minutes.
RANK_HOURS = _RANK.format(
    rows=f"""SELECT hour AS t, {_COLS} FROM key_hour WHERE hour >= $lo AND hour < $hi
    UNION ALL
    SELECT {HOUR_OF_MINUTE}, {_COLS} FROM key_minute WHERE minute >= $lo AND minute < $hi"""
)
RANK_DAYS = _RANK.format(
    rows=f"SELECT day AS t, {_COLS} FROM key_day WHERE day >= $lo AND day < $hi"
)
CLEAR_TOP = "DELETE FROM key_top WHERE part = $part AND t >= $lo AND t < $hi"
CLEAR_CUTOFF = "DELETE FROM key_top_cutoff WHERE part = $part AND t >= $lo AND t < $hi"
INSERT_TOP = f"""
INSERT INTO key_top
SELECT $part, t, key_id, edge, kv, r2, api, errors, requests, fill_errors FROM ranked
WHERE rank <= {LIST_SIZE} ORDER BY t
"""
INSERT_CUTOFF = f"""
INSERT INTO key_top_cutoff
SELECT $part, t, coalesce(max(requests) FILTER (WHERE rank > {LIST_SIZE}), 0) FROM ranked GROUP BY t
"""
# A source's days, from its compacted hours and its minutes (key_day sums both).
CLEAR_KEY_DAY = "DELETE FROM key_day WHERE source = $source AND day >= $lo AND day < $hi"
RECOMPUTE_KEY_DAY = f"""
INSERT INTO key_day
SELECT source, {DAY_OF_T}, key_id, sum(edge), sum(kv), sum(r2), sum(api), sum(errors),
       min(first_seen), max(last_seen), sum(fill_errors)
FROM (SELECT source, hour AS t, {_COLS}, first_seen, last_seen FROM key_hour
      WHERE source = $source AND hour >= $lo AND hour < $hi
      UNION ALL
      SELECT source, minute, {_COLS}, first_seen, last_seen FROM key_minute
      WHERE source = $source AND minute >= $lo AND minute < $hi)
GROUP BY ALL ORDER BY 2
"""
MINUTE_SPAN = "SELECT source, min(minute), max(minute) FROM key_minute GROUP BY source"


def refresh(con: duckdb.DuckDBPyConnection, start: datetime, end: datetime) -> None:
    """Rebuild the hour and day summaries touching [start, end) from
    key_hour, key_minute and key_day (all sources)."""
    for part, rank, step in (("hour", RANK_HOURS, HOUR), ("day", RANK_DAYS, DAY)):
        p = {"part": part, "lo": floor_to(start, step), "hi": ceil_to(end, step)}
        con.execute(rank, {"lo": p["lo"], "hi": p["hi"]})
        for sql in (CLEAR_TOP, CLEAR_CUTOFF, INSERT_TOP, INSERT_CUTOFF):
            con.execute(sql, p if "$lo" in sql else {"part": part})


def recompute_days(
    con: duckdb.DuckDBPyConnection, source: str, start: datetime, end: datetime
) -> None:
    """`source`'s key_day rows of the days touching [start, end), from its
    hours and minutes."""
    p = {"source": source, "lo": floor_to(start, DAY), "hi": ceil_to(end, DAY)}
    con.execute(CLEAR_KEY_DAY, p)
    con.execute(RECOMPUTE_KEY_DAY, p)


def rebuild_uncompacted(con: duckdb.DuckDBPyConnection) -> None:
    """Schema migration 9: key_day and the summaries once covered compacted
    hours only; add the per-key minutes every store still holds."""
    spans = con.execute(MINUTE_SPAN).fetchall()
    for source, lo, hi in spans:
        recompute_days(con, source, lo, hi + MINUTE)
    if spans:
        refresh(con, min(s[1] for s in spans), max(s[2] for s in spans) + MINUTE)


# -- queries --------------------------------------------------------------------

# The parts of a window (parameters from `queries.key_ranges`): days [d_lo, d_hi),
# whole hours [h_lo, d_lo) and [d_hi, h_hi), ragged minutes [lo, h_lo) and [h_hi, hi).
KEY_PARTS = f"SELECT *, edge + kv + r2 + api AS requests FROM ({KEY_ROWS})"
# The same day and hour parts, in the (small) summary tables.
_SUMMARY_PARTS = """
    (part = 'day' AND t >= $d_lo AND t < $d_hi)
    OR (part = 'hour' AND t >= $h_lo AND t < $d_lo)
    OR (part = 'hour' AND t >= $d_hi AND t < $h_hi)
"""
CUTOFF_TOTAL = f"SELECT coalesce(sum(cutoff), 0) FROM key_top_cutoff WHERE {_SUMMARY_PARTS}"
_TOP_ROWS = f"""
    SELECT key_id, edge, kv, r2, api, errors, requests, cutoff
    FROM key_top JOIN key_top_cutoff USING (part, t) WHERE {_SUMMARY_PARTS}
"""
_RAGGED = "SELECT key_id, edge, kv, r2, api, errors, edge + kv + r2 + api, 0 FROM key_minute WHERE"
BOUNDED = f"""
WITH c AS (
    SELECT key_id, sum(edge) AS edge, sum(kv) AS kv, sum(r2) AS r2, sum(api) AS api,
           sum(errors) AS errors, sum(requests) AS lower, sum(cutoff) AS seen
    FROM ({_TOP_ROWS}
        UNION ALL {_RAGGED} minute >= $lo AND minute < $h_lo
        UNION ALL {_RAGGED} minute >= $h_hi AND minute < $hi)
    GROUP BY key_id
), r AS (
    SELECT *, lower + $unseen - seen AS upper, row_number() OVER (ORDER BY lower DESC, key_id) AS rank FROM c
)
SELECT key_id, edge, kv, r2, api, errors, lower, upper, (SELECT max(upper) FROM r WHERE rank > $limit)
FROM r WHERE rank <= $limit ORDER BY rank
"""
_FULL = f"""
SELECT key_id, sum(edge), sum(kv), sum(r2), sum(api), sum(errors), sum(requests) AS total
FROM ({KEY_PARTS}) WHERE {{where}}
GROUP BY key_id ORDER BY total DESC, key_id LIMIT $limit
"""
FULL_ALL = _FULL.format(where="true")
FULL_ENDPOINT = _FULL.format(
    where="key_id IN (SELECT key_id FROM cache_keys WHERE endpoint = $endpoint)"
)
KEY_TEXT = "SELECT key_id, key, endpoint FROM cache_keys WHERE key_id IN (SELECT unnest($ids))"
# Whether an hour's per-key minutes are gone (it is compacted into key_hour).
COMPACTED_HOUR = "SELECT 1 FROM key_hour WHERE hour = $hour LIMIT 1"


# One key's rows in buckets of $step seconds, each row at the resolution the
# store keeps it: minutes from key_minute, compacted hours from key_hour, and
# before the hour horizon whole days from key_day. `width` is the bucket's
# length in seconds: the step, or the stored resolution where that is
# coarser (a chart must not split an hour into minutes it does not have).
# A bucket of whole hours (a step of whole hours: 6 h at 30 days) is summed
# from the smallest rows that answer it exactly, so a month is not a scan of
# every per-key minute for one key: whole days from key_day [w_lo, w_hi)
# (a step of whole days), the hours the key is listed in from the hour
# summaries [t_lo, t_hi) outside those days (a listed hour's row is the key's
# exact count there, every source, minutes and compacted hours alike), and
# the rest (ragged ends, hours the key is not listed in) from key_hour and
# key_minute in up to SERIES_RUNS spans [a_i, b_i), each a plain range that
# DuckDB prunes row groups by (a key listed in fewer hours is read in one
# span, as before). Parameters: `_series_params`.
SERIES_RUNS = 8
_SERIES_RUN = """
    UNION ALL
    SELECT hour, 3600, edge, kv, r2, api, errors FROM key_hour
    WHERE key_id = $id AND hour >= $ha{i} AND hour < $b{i}
    UNION ALL
    SELECT minute, 60, edge, kv, r2, api, errors FROM key_minute
    WHERE key_id = $id AND minute >= $a{i} AND minute < $b{i}"""
KEY_SERIES = f"""
SELECT to_timestamp(floor(epoch(t) / greatest($step, res)) * greatest($step, res)) AS bucket,
       greatest($step, res) AS width,
       sum(edge), sum(kv), sum(r2), sum(api), sum(errors)
FROM (
    SELECT day AS t, 86400 AS res, edge, kv, r2, api, errors FROM key_day
    WHERE key_id = $id AND day >= $d_lo AND day < $d_hi
    UNION ALL
    SELECT day, 86400, edge, kv, r2, api, errors FROM key_day
    WHERE key_id = $id AND day >= $w_lo AND day < $w_hi
    UNION ALL
    SELECT t, 3600, edge, kv, r2, api, errors FROM key_top
    WHERE part = 'hour' AND key_id = $id AND t >= $t_lo AND t < $t_hi
      AND NOT (t >= $w_lo AND t < $w_hi)
    {"".join(_SERIES_RUN.format(i=i) for i in range(SERIES_RUNS))}
) GROUP BY ALL ORDER BY bucket, width
"""
# The whole hours a key is listed in, in the hour summaries.
LISTED_HOURS = """
SELECT t FROM key_top WHERE part = 'hour' AND key_id = $id AND t >= $t_lo AND t < $t_hi
  AND NOT (t >= $w_lo AND t < $w_hi)
"""
# Where the store keeps per-key counts only per hour in a window (compacted
# minutes): the span of key_hour there.
HOURLY_SPAN = """
SELECT min(hour), max(hour) + INTERVAL 1 HOUR FROM key_hour WHERE hour >= $h_lo AND hour < $hi
"""
KEY_ID = "SELECT key_id FROM cache_keys WHERE key = $key AND endpoint = $endpoint"
# The key and endpoint of an id (the primary key: a point lookup, where the
# key's text is a scan of every key).
KEY_OF_ID = "SELECT key, endpoint FROM cache_keys WHERE key_id = $id"


@dataclass(frozen=True)
class TopKeys:
    """The busiest keys of a window: rows (key, endpoint, edge, kv, r2, api,
    errors), busiest first, counted over `counted`: the window asked for,
    or a wider one where per-key minutes (or hours) are gone."""

    rows: tuple[tuple, ...]
    window: Window
    counted: Window

    @property
    def exact(self) -> bool:
        """Whether the counts are of the window asked for, no wider."""
        return self.counted == self.window


@dataclass(frozen=True)
class KeySeries:
    """One key's requests over a window in buckets of `step`: `rows` has
    columns t (bucket start, UTC), width (the bucket's length), edge, kv,
    r2, api, errors. Where the store keeps the key's counts only per hour
    or day, a bucket is that long, never split: `coarse` lists each such
    resolution with the span of the window it covers."""

    rows: pd.DataFrame
    window: Window
    step: timedelta
    coarse: tuple[tuple[timedelta, Window], ...]

    @property
    def exact(self) -> bool:
        """Whether every bucket is `step` long (no coarser stored rows)."""
        return not self.coarse


SERIES_COLUMNS = ("t", "width", "edge", "kv", "r2", "api", "errors")


def key_series(
    con: duckdb.DuckDBPyConnection,
    key: str,
    endpoint: str,
    window: Window,
    step: timedelta,
    key_id: int | None = None,
) -> KeySeries:
    """Requests of one key by tier over `window` in buckets of `step` (a
    whole number of minutes), at the store's resolution where that is
    coarser (see KeySeries); no rows for an unknown key. `key_id`, when the
    caller has it (the key table), saves looking the key up by its text; it
    must be the id of `key` at `endpoint`."""
    import pandas as pd  # the dashboard's drill-down only: the CLI starts without pandas

    if step < MINUTE or step % MINUTE:
        raise InputError(f"drill-down step {step} is not a whole number of minutes")
    h = horizons.horizons(con)
    lo, hi = window.start, window.end
    p = {
        "step": step.total_seconds(),
        "lo": lo,
        "hi": hi,
        "h_lo": floor_to(lo, HOUR),
        "d_lo": floor_to(lo, DAY),
        # Days before the hour horizon have no hours left: key_day answers them.
        "d_hi": min(h.hour, hi) if h.hour is not None else floor_to(lo, DAY),
    }
    coarse = []
    if step < DAY and h.hour is not None and lo < h.hour:
        coarse.append((DAY, Window(lo, min(h.hour, hi))))
    if step < HOUR:
        h_lo, h_hi = _run(con, HOURLY_SPAN, p)[0]
        if h_lo is not None:
            coarse.append((HOUR, Window(max(lo, h_lo), min(hi, h_hi))))
    key_id = _key_id(con, key, endpoint, key_id)
    rows = []
    if key_id is not None:
        rows = _run(con, KEY_SERIES, _series_params(con, p | {"id": key_id}, h.hour, step))
    df = pd.DataFrame(rows, columns=list(SERIES_COLUMNS))
    df["t"] = pd.to_datetime(df["t"], utc=True)
    df["width"] = pd.to_timedelta(df["width"].astype(float), unit="s")
    df = df.astype({c: float for c in SERIES_COLUMNS[2:]})
    return KeySeries(df, window, step, tuple(coarse))


def _key_id(
    con: duckdb.DuckDBPyConnection, key: str, endpoint: str, key_id: int | None
) -> int | None:
    """The id of `key` at `endpoint` (None: no such key); a given id is
    checked against the key it must name."""
    if key_id is None:
        ids = _run(con, KEY_ID, {"key": key, "endpoint": endpoint})
        return ids[0][0] if ids else None
    named = _run(con, KEY_OF_ID, {"id": key_id})
    if not named or tuple(named[0]) != (key, endpoint):
        raise InputError(f"key id {key_id} is not the key {key!r} at endpoint {endpoint!r}")
    return key_id


def _series_params(
    con: duckdb.DuckDBPyConnection, p: dict, hour_horizon: datetime | None, step: timedelta
) -> dict:
    """KEY_SERIES's parameters: `p` with the whole days and listed hours a
    bucket of `step` may take whole (none unless `step` is whole hours), and
    the spans left to read from key_hour and key_minute (unused ones empty)."""
    lo, hi = p["lo"], p["hi"]
    # Hours (and days) after the hour horizon: before it only key_day is left.
    t_lo = ceil_to(lo, HOUR) if hour_horizon is None else max(ceil_to(lo, HOUR), hour_horizon)
    t_hi = floor_to(hi, HOUR)
    if step % HOUR or t_lo >= t_hi:
        t_lo = t_hi = lo
    w_lo, w_hi = ceil_to(t_lo, DAY), floor_to(t_hi, DAY)
    if step % DAY or w_lo >= w_hi:
        w_lo = w_hi = lo
    p = p | {"t_lo": t_lo, "t_hi": t_hi, "w_lo": w_lo, "w_hi": w_hi}
    days = [(w_lo, w_hi)] if w_lo < w_hi else []
    listed = [(t, t + HOUR) for (t,) in _run(con, LISTED_HOURS, p)] if t_lo < t_hi else []
    spans = _gaps(lo, hi, sorted(days + listed))
    if len(spans) > SERIES_RUNS:
        # Listed in too few hours to pay (a quieter key): its minutes in one
        # scan (spans around many hours would read most row groups anyway).
        p |= {"t_hi": t_lo}
        spans = _gaps(lo, hi, days)  # at most the two ends
    # (a, the hour a starts in, b): key_hour counts an hour cut at the
    # window's start whole, as `covered` does; unused spans are empty.
    runs = [(a, floor_to(a, HOUR), b) for a, b in spans]
    runs += [(lo, lo, lo)] * (SERIES_RUNS - len(runs))
    for i, (a, ha, b) in enumerate(runs):
        p |= {f"a{i}": a, f"ha{i}": ha, f"b{i}": b}
    return p


def _gaps(lo: datetime, hi: datetime, taken: list[tuple[datetime, datetime]]) -> list:
    """The spans of [lo, hi) outside the sorted, disjoint spans `taken`."""
    spans, start = [], lo
    for a, b in taken:
        if start < a:
            spans.append((start, a))
        start = b
    if start < hi:
        spans.append((start, hi))
    return spans


def top_keys(
    con: duckdb.DuckDBPyConnection, window: Window, endpoint: str | None, limit: int
) -> TopKeys:
    """The `limit` busiest keys of `window` (optionally one endpoint),
    counted exactly over `covered(con, window)`."""
    counted = covered(con, window)
    p = key_ranges(counted.start, counted.end) | {"endpoint": endpoint, "limit": limit}
    rows = None if endpoint is not None else _bounded(con, p)
    if rows is None:
        rows = _run(con, FULL_ENDPOINT if endpoint is not None else FULL_ALL, p)
    text = {r[0]: r[1:] for r in _run(con, KEY_TEXT, {"ids": [r[0] for r in rows]})}
    out = sorted(
        ((*text[r[0]], *map(float, r[1:6])) for r in rows), key=lambda r: (-sum(r[2:6]), r[0])
    )
    return TopKeys(tuple(out), window, counted)


def covered(con: duckdb.DuckDBPyConnection, window: Window) -> Window:
    """The span per-key counts of `window` can count exactly: an edge in an
    hour whose minutes are gone (before the minute horizon, or compacted)
    moves out to that hour's bound, and before the hour horizon (hours gone
    too) to the day's. Equal to `window` when exact."""
    h = horizons.horizons(con)
    start = _edge(con, window.start, h, floor_to)
    end = _edge(con, window.end, h, ceil_to)
    return Window(start, end)


def _edge(con: duckdb.DuckDBPyConnection, t: datetime, h: horizons.Horizons, to) -> datetime:
    if t != floor_to(t, HOUR):
        hour = floor_to(t, HOUR)
        gone = h.minute is not None and hour < h.minute
        if gone or _run(con, COMPACTED_HOUR, {"hour": hour}):
            t = to(t, HOUR)
    # h.hour is a whole day: a ragged day before it has no hours left.
    if t != floor_to(t, DAY) and h.hour is not None and t < h.hour:
        t = to(t, DAY)
    return t


def _bounded(con: duckdb.DuckDBPyConnection, p: dict) -> list[tuple] | None:
    """The exact top k from the summaries, or None when they cannot prove it."""
    unseen = _run(con, CUTOFF_TOTAL, p)[0][0]
    rows = _run(con, BOUNDED, p | {"unseen": unseen})
    if not rows:
        return None
    exact = all(r[7] - r[6] <= 1e-9 * max(1.0, r[6]) for r in rows)
    rest = max(unseen, rows[0][8] if rows[0][8] is not None else 0.0)
    if not exact or rows[-1][6] <= rest:
        return None
    return [r[:7] for r in rows]


def _run(con: duckdb.DuckDBPyConnection, sql: str, params: dict) -> list[tuple]:
    """Run with the subset of `params` that `sql` names (DuckDB rejects extras)."""
    return con.execute(sql, {k: v for k, v in params.items() if f"${k}" in sql}).fetchall()


# -- candidates of the busiest keys (the Top keys page) ----------------------------

# Every key of the summaries (and the ragged minutes) with its bounds: the
# lower bound is its known counts, the upper adds the cutoff of every part
# whose list it is missing from (`BOUNDED` without the limit).
KEY_BOUNDS = f"""
SELECT key_id, lower, lower + $unseen - seen AS upper FROM (
    SELECT key_id, sum(requests) AS lower, sum(cutoff) AS seen
    FROM ({_TOP_ROWS}
        UNION ALL {_RAGGED} minute >= $lo AND minute < $h_lo
        UNION ALL {_RAGGED} minute >= $h_hi AND minute < $hi)
    GROUP BY key_id)
"""


def busiest_candidates(
    con: duckdb.DuckDBPyConnection, counted: Window, limit: int
) -> list[int] | None:
    """Key ids among which the `limit` busiest keys of `counted` (a window
    `covered` returned) provably are, ties at the cutoff included, or None
    when the summaries cannot prove it (then only a full count can tell).

    The `limit`-th best lower bound is a threshold: every key with a lower
    bound at or above it has an upper bound there too, so at least `limit`
    candidates count at least the threshold; a key whose upper bound is
    below it, or that is in no list (it counts at most the sum of the
    cutoffs, required to be below the threshold), cannot be among the
    busiest. The caller counts the candidates exactly and ranks them."""
    p = key_ranges(counted.start, counted.end)
    unseen = _run(con, CUTOFF_TOTAL, p)[0][0]
    rows = _run(con, KEY_BOUNDS, p | {"unseen": unseen})
    if len(rows) < limit:
        return None
    threshold = sorted((r[1] for r in rows), reverse=True)[limit - 1]
    if threshold <= unseen:
        return None
    return [r[0] for r in rows if r[2] >= threshold]
