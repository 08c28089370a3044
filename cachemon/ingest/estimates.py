"""Which per-key rows are estimates: the marker a budgeted pull leaves.

A budgeted Analytics Engine window (`cachemon.sources.ae_keys`) stores its
key sample's rate and heavy-key threshold as a span of `key_estimates`, and
the keys pulled exactly there as spans of `key_heavy`. A write replaces a
source's markers in its window like its rows: spans reaching into the window
are cut at its edges (a re-pulled overlap takes the new window's marker), and
an exact write leaves none there. Top keys read them back
(`cachemon.store.keyestimates`).

Each function runs inside the caller's transaction (`cachemon.ingest.write`),
after the write's keys are mapped (`key_map`, `cachemon.ingest.keys`).
"""

from __future__ import annotations

from datetime import datetime

import duckdb
import pyarrow as pa

from cachemon.rollups import Rollups

TABLES = ("key_estimates", "key_heavy")
# Cut the source's spans at [lo, hi): the part after hi of a span crossing
# it is added, the part before lo kept by moving its end, the rest deleted.
_CUT = (
    """INSERT INTO {t} SELECT * REPLACE ($hi::TIMESTAMPTZ AS lo) FROM {t}
    WHERE source = $source AND lo < $hi AND hi > $hi""",
    "UPDATE {t} SET hi = $lo WHERE source = $source AND lo < $lo AND hi > $lo",
    "DELETE FROM {t} WHERE source = $source AND lo >= $lo AND lo < $hi",
)
CUT = tuple(sql.format(t=t) for t in TABLES for sql in _CUT)
INSERT_ESTIMATE = "INSERT INTO key_estimates VALUES ($source, $lo, $hi, $rate, $threshold)"
# The heavy keys are registered as e_heavy (key); key_map has their ids.
INSERT_HEAVY = """
INSERT INTO key_heavy
SELECT DISTINCT $source, $lo::TIMESTAMPTZ, $hi::TIMESTAMPTZ, m.key_id
FROM e_heavy h JOIN key_map m ON m.key = h.key
"""
DROP = tuple(f"DELETE FROM {t} WHERE source = $source" for t in TABLES)


def replace(
    con: duckdb.DuckDBPyConnection, source: str, r: Rollups, lo: datetime, hi: datetime
) -> None:
    """`source`'s markers in [lo, hi) become `r`'s (none: exact rows)."""
    p = {"source": source, "lo": lo, "hi": hi}
    for sql in CUT:
        con.execute(sql, {k: v for k, v in p.items() if f"${k}" in sql})
    e = r.key_estimate
    if e is None:
        return
    con.execute(INSERT_ESTIMATE, p | {"rate": e.rate, "threshold": e.threshold})
    if not e.heavy:
        return
    con.register("e_heavy", pa.table({"key": pa.array(e.heavy, pa.string())}))
    try:
        con.execute(INSERT_HEAVY, p)
    finally:
        con.unregister("e_heavy")


def drop(con: duckdb.DuckDBPyConnection, source: str) -> None:
    """Remove every marker of `source`."""
    for sql in DROP:
        con.execute(sql, {"source": source})
