"""The estimate markers of budgeted per-key rows (`cachemon.ingest.estimates`):
a write replaces a source's markers in its window like its rows, cutting
spans that reach into it at its edges; other sources are untouched."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

from cachemon.ingest import estimates
from cachemon.rollups import KeyEstimate
from cachemon.store import db as store_db
from tests.helpers import T0

H = timedelta(hours=1)
M = timedelta(minutes=1)


def _spans(con, table):
    return con.execute(f"SELECT source, lo, hi FROM {table} ORDER BY source, lo").fetchall()


def test_a_write_cuts_the_spans_it_overlaps_and_adds_its_own(tmp_path):
    with store_db.writer(tmp_path / "s.duckdb", T0) as con:
        con.execute("SET TimeZone = 'UTC'")
        con.execute("CREATE TEMP TABLE key_map (key VARCHAR, key_id INTEGER)")
        con.execute("INSERT INTO key_map VALUES ('a', 1), ('b', 2)")
        for source in ("ae", "other"):
            for lo in (T0, T0 + H, T0 + 2 * H):
                con.execute(
                    "INSERT INTO key_estimates VALUES (?, ?, ?, 0.5, 10)", [source, lo, lo + H]
                )
                con.execute("INSERT INTO key_heavy VALUES (?, ?, ?, 1)", [source, lo, lo + H])
        # A re-pulled overlap: [T0 + 50m, T0 + 2h 10m), estimated again with key b heavy.
        lo, hi = T0 + 50 * M, T0 + 2 * H + 10 * M
        r = SimpleNamespace(key_estimate=KeyEstimate(0.25, 20.0, ("b",)))
        estimates.replace(con, "ae", r, lo, hi)
        want = [
            ("ae", T0, lo),
            ("ae", lo, hi),
            ("ae", hi, T0 + 3 * H),
            *(("other", t, t + H) for t in (T0, T0 + H, T0 + 2 * H)),
        ]
        assert [(s, a, b) for s, a, b in _spans(con, "key_estimates")] == want
        assert _spans(con, "key_heavy") == want
        assert con.execute(
            "SELECT rate, threshold FROM key_estimates WHERE source = 'ae' ORDER BY lo"
        ).fetchall() == [(0.5, 10.0), (0.25, 20.0), (0.5, 10.0)]
        assert con.execute(
            "SELECT key_id FROM key_heavy WHERE source = 'ae' ORDER BY lo"
        ).fetchall() == [(1,), (2,), (1,)]
        # An exact write leaves no marker in its window.
        estimates.replace(con, "ae", SimpleNamespace(key_estimate=None), T0, T0 + 3 * H)
        assert [s for s, *_ in _spans(con, "key_estimates")] == ["other"] * 3
        estimates.drop(con, "other")
        assert _spans(con, "key_estimates") == _spans(con, "key_heavy") == []
