"""Top keys of any window, exact and fast.

Per-key counts live in parts: whole days in `key_day`, other hours in
`key_hour`, minutes of not yet compacted hours in `key_minute` (an hour is in
exactly one of key_hour/key_minute; key_day sums key_hour). An hour compacted
while only partly inside the window counts whole, and the caller is told
which span was really covered.

A week holds about a million per-key rows (the long tail of one-off searches
dominates), too many to GROUP BY for every request. So ingestion keeps, for
every hour and day, a summary: the `LIST_SIZE` biggest keys of that part
(`key_top`) and the largest count left out (`key_top_cutoff`). For a window,
a key's known counts (from the lists, plus key_minute) give a lower bound,
and adding the cutoffs of the parts whose list it is missing from gives an
upper bound; a key in no list is bounded by the sum of all cutoffs. When the
k best lower bounds are exact and beat every other upper bound, that is the
exact answer (the threshold algorithm of Fagin et al.). Otherwise, rarely
(an endpoint filter, ties, flat traffic), the parts are aggregated in full.
"""

from __future__ import annotations

from datetime import datetime

import duckdb
import pandas as pd

from cachemon.clock import DAY, HOUR, Window, ceil_to, floor_to

LIST_SIZE = 1000

# -- maintenance (called by ingest inside its transaction) -------------------

_RANK = """
CREATE OR REPLACE TEMP TABLE ranked AS
SELECT {col} AS t, key_id, sum(edge) AS edge, sum(kv) AS kv, sum(r2) AS r2, sum(api) AS api,
       sum(errors) AS errors, sum(edge + kv + r2 + api) AS requests,
       row_number() OVER (PARTITION BY {col} ORDER BY sum(edge + kv + r2 + api) DESC, key_id) AS rank
FROM {table} WHERE {col} >= $lo AND {col} < $hi
GROUP BY {col}, key_id
"""
RANK_HOURS = _RANK.format(col="hour", table="key_hour")
RANK_DAYS = _RANK.format(col="day", table="key_day")
CLEAR_TOP = "DELETE FROM key_top WHERE part = $part AND t >= $lo AND t < $hi"
CLEAR_CUTOFF = "DELETE FROM key_top_cutoff WHERE part = $part AND t >= $lo AND t < $hi"
INSERT_TOP = f"""
INSERT INTO key_top
SELECT $part, t, key_id, edge, kv, r2, api, errors, requests FROM ranked WHERE rank <= {LIST_SIZE} ORDER BY t
"""
INSERT_CUTOFF = f"""
INSERT INTO key_top_cutoff
SELECT $part, t, coalesce(max(requests) FILTER (WHERE rank > {LIST_SIZE}), 0) FROM ranked GROUP BY t
"""


def refresh(con: duckdb.DuckDBPyConnection, start: datetime, end: datetime) -> None:
    """Rebuild the hour and day summaries touching [start, end) from
    key_hour / key_day (all sources)."""
    for part, rank, step in (("hour", RANK_HOURS, HOUR), ("day", RANK_DAYS, DAY)):
        p = {"part": part, "lo": floor_to(start, step), "hi": ceil_to(end, step)}
        con.execute(rank, {"lo": p["lo"], "hi": p["hi"]})
        for sql in (CLEAR_TOP, CLEAR_CUTOFF, INSERT_TOP, INSERT_CUTOFF):
            con.execute(sql, p if "$lo" in sql else {"part": part})


# -- queries --------------------------------------------------------------------

_ROW = "key_id, edge, kv, r2, api, errors, edge + kv + r2 + api AS requests"
# One plain range per branch, so DuckDB can skip row groups by min/max.
KEY_PARTS = f"""
    SELECT {_ROW} FROM key_day WHERE day >= $d_lo AND day < $d_hi
    UNION ALL
    SELECT {_ROW} FROM key_hour WHERE hour >= $k_lo AND hour < $d_lo
    UNION ALL
    SELECT {_ROW} FROM key_hour WHERE hour >= $d_hi AND hour < $hi AND hour >= $k_lo
    UNION ALL
    SELECT {_ROW} FROM key_minute WHERE minute >= $lo AND minute < $hi
"""
# The same day and hour parts, in the (small) summary tables.
_SUMMARY_PARTS = """
    (part = 'day' AND t >= $d_lo AND t < $d_hi)
    OR (part = 'hour' AND t >= $k_lo AND t < $d_lo)
    OR (part = 'hour' AND t >= $d_hi AND t < $hi AND t >= $k_lo)
"""
CUTOFF_TOTAL = f"SELECT coalesce(sum(cutoff), 0) FROM key_top_cutoff WHERE {_SUMMARY_PARTS}"
_TOP_ROWS = f"""
    SELECT key_id, edge, kv, r2, api, errors, requests, cutoff
    FROM key_top JOIN key_top_cutoff USING (part, t) WHERE {_SUMMARY_PARTS}
"""
BOUNDED = f"""
WITH c AS (
    SELECT key_id, sum(edge) AS edge, sum(kv) AS kv, sum(r2) AS r2, sum(api) AS api,
           sum(errors) AS errors, sum(requests) AS lower, sum(cutoff) AS seen
    FROM ({_TOP_ROWS}
        UNION ALL
        SELECT key_id, edge, kv, r2, api, errors, edge + kv + r2 + api, 0 FROM key_minute
        WHERE minute >= $lo AND minute < $hi)
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
COMPACTED_HOURS = "SELECT DISTINCT hour FROM key_hour WHERE hour = $first OR hour = $last"


# One key's hours: compacted hours from key_hour, the rest from key_minute.
KEY_SERIES = """
SELECT t, sum(edge), sum(kv), sum(r2), sum(api), sum(errors) FROM (
    SELECT hour AS t, edge, kv, r2, api, errors FROM key_hour WHERE key_id = $id AND hour >= $lo AND hour < $hi
    UNION ALL
    SELECT date_trunc('hour', minute), edge, kv, r2, api, errors FROM key_minute
    WHERE key_id = $id AND minute >= $lo AND minute < $hi
) GROUP BY t ORDER BY t
"""
KEY_ID = "SELECT key_id FROM cache_keys WHERE key = $key AND endpoint = $endpoint"


def key_series(
    con: duckdb.DuckDBPyConnection, key: str, endpoint: str, window: Window
) -> pd.DataFrame:
    """Requests per hour by tier (columns hour, edge, kv, r2, api, errors) of
    one key over the hours that `window` touches; empty for an unknown key."""
    ids = _run(con, KEY_ID, {"key": key, "endpoint": endpoint})
    cols = ["hour", "edge", "kv", "r2", "api", "errors"]
    if not ids:
        return pd.DataFrame(columns=cols)
    rows = _run(
        con, KEY_SERIES, {"id": ids[0][0], "lo": floor_to(window.start, HOUR), "hi": window.end}
    )
    df = pd.DataFrame(rows, columns=cols)
    df["hour"] = pd.to_datetime(df["hour"], utc=True)
    return df.astype({c: float for c in cols[1:]})


def top_keys(con: duckdb.DuckDBPyConnection, window: Window, endpoint: str | None, limit: int):
    """((key, endpoint, edge, kv, r2, api, errors), ...) of the `limit`
    busiest keys, busiest first, and the Window the counts cover."""
    d_lo, d_hi = ceil_to(window.start, DAY), floor_to(window.end, DAY)
    if d_lo >= d_hi:
        d_lo = d_hi = window.end
    k_lo = floor_to(window.start, HOUR)
    p = {
        "d_lo": d_lo,
        "d_hi": d_hi,
        "k_lo": k_lo,
        "lo": window.start,
        "hi": window.end,
        "endpoint": endpoint,
        "limit": limit,
    }
    rows = None if endpoint is not None else _bounded(con, p)
    if rows is None:
        rows = _run(con, FULL_ENDPOINT if endpoint is not None else FULL_ALL, p)
    text = {r[0]: r[1:] for r in _run(con, KEY_TEXT, {"ids": [r[0] for r in rows]})}
    out = sorted(
        ((*text[r[0]], *map(float, r[1:6])) for r in rows), key=lambda r: (-sum(r[2:6]), r[0])
    )
    return tuple(out), covered(con, window)


def covered(con: duckdb.DuckDBPyConnection, window: Window) -> Window:
    """The span per-key counts of `window` really cover: an hour at either
    end that is compacted cannot be split, so it counts whole."""
    k_lo, k_hi = floor_to(window.start, HOUR), floor_to(window.end, HOUR)
    compacted = {r[0] for r in _run(con, COMPACTED_HOURS, {"first": k_lo, "last": k_hi})}
    start = k_lo if k_lo < window.start and k_lo in compacted else window.start
    end = k_hi + HOUR if k_hi < window.end and k_hi in compacted else window.end
    return Window(start, end)


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
