"""Ingestion is idempotent, atomic and additive where it should be."""

from datetime import timedelta

import pyarrow as pa
import pytest

from cachemon.clock import HOUR, Window
from cachemon.errors import SourceError, StoreError
from cachemon.events import EventFrame
from cachemon.ingest import keys
from cachemon.ingest import write as ingest_write
from cachemon.metrics import window as metrics_window
from cachemon.store import db as store_db
from tests.helpers import T0, load, simulate

SPAN = Window(T0, T0 + timedelta(hours=3))


def _totals(path, window=SPAN):
    with store_db.reader(path) as con:
        m = metrics_window.compute(con, window, "x", top=20)
        keys = con.execute(
            "SELECT sum(edge + kv + r2 + api) FROM (SELECT edge, kv, r2, api FROM key_hour "
            "UNION ALL SELECT edge, kv, r2, api FROM key_minute)"
        ).fetchall()[0][0]
        gauges = con.execute("SELECT sum(samples) FROM gauge_minute").fetchall()[0][0]
    # Rounded: DuckDB sums in parallel, so the last bits of a float vary.
    lat = tuple(round(x, 6) for x in (m.latency.p50, m.latency.p95, m.latency.p99, m.latency.avg))
    return m.volume, lat, [(k.key, k.requests) for k in m.top_keys], keys, gauges


def test_same_window_twice_never_double_counts(db):
    parts, _ = simulate(3)
    load(db, parts)
    once = _totals(db)
    load(db, parts)  # every window again
    assert _totals(db) == once


def test_overlapping_windows_never_double_count(db):
    """Re-pulls overlapping earlier windows (Analytics Engine late data)."""
    parts, df = simulate(3, step=timedelta(minutes=10))
    with store_db.writer(db, T0) as con:
        for w, f in parts:
            ingest_write.replace_window(con, f, "simulator", w, T0)
    once = _totals(db)
    full = pa.concat_tables([f.table for _, f in parts])
    with store_db.writer(db, T0) as con:
        for w in [
            Window(T0 + timedelta(minutes=40), T0 + timedelta(minutes=100)),
            Window(T0 + timedelta(minutes=90), T0 + timedelta(minutes=130)),
        ]:
            ingest_write.replace_window(con, _cut(full, w), "simulator", w, T0)
    assert _totals(db) == once
    assert once[3] == pytest.approx(df[df.kind == "request"].sample_interval.sum())


def _cut(table, w):
    import pyarrow.compute as pc

    mask = pc.and_(
        pc.greater_equal(table["timestamp"], pa.scalar(w.start, pa.timestamp("us", tz="UTC"))),
        pc.less(table["timestamp"], pa.scalar(w.end, pa.timestamp("us", tz="UTC"))),
    )
    return EventFrame(table.filter(mask))


def test_minute_windows_keep_keys_per_minute_then_compact(db):
    """Per-key minutes stay until retention merges them (issue 20: merging
    them an hour behind made top keys of later windows count whole hours)."""
    parts, df = simulate(3, step=timedelta(minutes=7))
    with store_db.writer(db, T0) as con:
        for w, f in parts:
            ingest_write.replace_window(con, f, "simulator", w, T0)
        assert con.execute("SELECT min(minute) FROM key_minute").fetchone()[0] == T0
        assert con.execute("SELECT count(*) FROM key_hour").fetchone()[0] == 0
        # What retention does at the minute horizon (here 10:00).
        keys.compact_minutes(con, T0 + timedelta(hours=2))
        left = con.execute("SELECT min(minute) FROM key_minute").fetchone()[0]
        hours = con.execute("SELECT count(DISTINCT hour) FROM key_hour").fetchone()[0]
    assert left == T0 + timedelta(hours=2) and hours == 2
    req = df[df.kind == "request"]
    with store_db.reader(db) as con:
        m = metrics_window.compute(con, SPAN, "3h", top=3)
    top = req.groupby("key").sample_interval.sum().sort_values(ascending=False)
    assert [k.requests for k in m.top_keys] == list(top.head(3))
    # A window that cuts into a compacted hour is refused, nothing changes.
    w = Window(T0 + timedelta(minutes=30), T0 + timedelta(minutes=45))
    with store_db.writer(db, T0) as con, pytest.raises(StoreError, match="already compacted"):
        ingest_write.replace_window(
            con, _cut(pa.concat_tables([f.table for _, f in parts]), w), "simulator", w, T0
        )
    with store_db.reader(db) as con:
        assert metrics_window.compute(con, SPAN, "3h").volume == m.volume


def test_events_outside_the_window_are_refused(db):
    parts, _ = simulate(1)
    w, f = parts[0]
    with store_db.writer(db, T0) as con, pytest.raises(SourceError, match="outside window"):
        ingest_write.replace_window(
            con, f, "simulator", Window(w.start, w.start + timedelta(minutes=30)), T0
        )
    with store_db.writer(db, T0) as con, pytest.raises(SourceError, match="whole minutes"):
        ingest_write.replace_window(con, f, "s", Window(w.start, w.end + timedelta(seconds=1)), T0)


def test_watermark_never_moves_back(db):
    parts, _ = simulate(2)
    load(db, parts)
    load(db, parts[:1])
    with store_db.reader(db) as con:
        assert ingest_write.watermark(con, "simulator") == T0 + 2 * HOUR


def test_failed_window_leaves_old_data(db, monkeypatch):
    parts, _ = simulate(2)
    load(db, parts)
    before = _totals(db, Window(T0, T0 + 2 * HOUR))

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ingest_write, "_recompute_hours", boom)
    with store_db.writer(db, T0) as con, pytest.raises(RuntimeError):
        ingest_write.replace_window(con, parts[0][1], "simulator", parts[0][0], T0)
    assert _totals(db, Window(T0, T0 + 2 * HOUR)) == before
