"""Top keys: the summary fast path is exact, agrees with a full aggregation,
and falls back when it cannot prove its answer."""

from datetime import timedelta

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachemon.clock import HOUR, Window
from cachemon.ingest import keys
from cachemon.ingest import write as ingest_write
from cachemon.store import db as store_db
from cachemon.store import topkeys
from cachemon.store.queries import key_ranges
from tests.helpers import T0, load, simulate, small_sim

START = T0 - timedelta(hours=20)


@pytest.fixture(scope="module")
def day_store(tmp_path_factory):
    parts, df = simulate(30, start=START, step=timedelta(hours=6))
    path = tmp_path_factory.mktemp("top") / "s.duckdb"
    load(path, parts)
    return path, df[df.kind == "request"]


def _truth(df, window, n):
    r = df[(df.timestamp >= window.start) & (df.timestamp < window.end)]
    top = r.groupby("key").sample_interval.sum().reset_index()
    top = top.sort_values(["sample_interval", "key"], ascending=[False, True]).head(n)
    return list(zip(top.key, top.sample_interval))


def _params(window, limit):
    return key_ranges(window.start, window.end) | {"endpoint": None, "limit": limit}


def _top(con, window, n, endpoint=None):
    """(rows, the span counted) of topkeys.top_keys."""
    top = topkeys.top_keys(con, window, endpoint, n)
    return top.rows, top.counted


def test_summary_path_is_taken_and_agrees_with_full_aggregation(day_store):
    path, df = day_store
    window = Window(START + timedelta(minutes=30), START + timedelta(hours=29, minutes=30))
    p = _params(window, 10)
    with store_db.reader(path) as con:
        fast = topkeys._bounded(con, p)
        full = topkeys._run(con, topkeys.FULL_ALL, p)
        rows, covered = _top(con, window, 10)
    assert fast is not None, "the summaries should prove a Zipf top 10"
    assert [r[0] for r in fast] == [r[0] for r in full]
    assert [r[6] for r in fast] == pytest.approx([r[6] for r in full])
    assert [(r[0], sum(r[2:6])) for r in rows] == _truth(df, covered, 10)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.integers(min_value=0, max_value=29 * 60),
    st.integers(min_value=15, max_value=30 * 60),
    st.integers(min_value=1, max_value=40),
)
def test_any_window_matches_raw_events(day_store, start_min, length_min, n):
    path, df = day_store
    s = START + timedelta(minutes=start_min)
    window = Window(s, min(s + timedelta(minutes=length_min), START + timedelta(hours=30)))
    with store_db.reader(path) as con:
        rows, covered = _top(con, window, n)
    got = [(r[0], sum(r[2:6])) for r in rows]
    truth = _truth(df, covered, n)
    # Ties at the cut may pick either key; the counts must agree exactly.
    assert [c for _, c in got] == pytest.approx([c for _, c in truth])
    assert {k for k, c in got if c > truth[-1][1]} == {k for k, c in truth if c > truth[-1][1]}


def test_flat_traffic_falls_back_and_stays_exact(tmp_path):
    """With every key equally popular the bounds cannot separate the top k."""
    parts, df = simulate(
        4, sim=small_sim(zipf_alpha=0.0, catalog_keys=3000, requests_per_hour=8000)
    )
    path = tmp_path / "flat.duckdb"
    load(path, parts)
    window = Window(T0, T0 + timedelta(hours=4))
    with store_db.reader(path) as con:
        assert topkeys._bounded(con, _params(window, 5)) is None
        rows, covered = _top(con, window, 5)
    assert [sum(r[2:6]) for r in rows] == [
        c for _, c in _truth(df[df.kind == "request"], covered, 5)
    ]


def test_summaries_follow_sources_and_their_removal(tmp_path):
    a_parts, a = simulate(3)
    b_parts, b = simulate(3, sim=small_sim(seed=99))
    path = tmp_path / "two.duckdb"
    load(path, a_parts, source="a")
    load(path, b_parts, source="b")
    window = Window(T0, T0 + timedelta(hours=3))
    both = pd.concat([a, b])
    with store_db.reader(path) as con:
        rows, covered = _top(con, window, 5)
    assert [(r[0], sum(r[2:6])) for r in rows] == _truth(both[both.kind == "request"], covered, 5)
    with store_db.writer(path, T0) as con:
        ingest_write.drop_source(con, "a")
    with store_db.reader(path) as con:
        rows, covered = _top(con, window, 5)
    assert [(r[0], sum(r[2:6])) for r in rows] == _truth(b[b.kind == "request"], covered, 5)


def test_key_series_counts_each_hour_once_from_hours_and_minutes(tmp_path):
    # 20-minute windows: per-key rows go to key_minute; retention compacts
    # them into key_hour (here the first two hours), so the series needs both.
    parts, df = simulate(5, start=START, step=timedelta(minutes=20))
    path = tmp_path / "k.duckdb"
    load(path, parts)
    with store_db.writer(path, T0) as con:
        keys.compact_minutes(con, START + timedelta(hours=2))
    df = df[df.kind == "request"]
    key, endpoint = df.groupby(["key", "endpoint"]).sample_interval.sum().idxmax()
    window = Window(START + timedelta(hours=1, minutes=30), START + timedelta(hours=5))
    r = df[(df.key == key) & (df.timestamp >= START + timedelta(hours=1))]
    truth = r.assign(hour=r.timestamp.dt.floor("h")).pivot_table(
        index="hour", columns="tier", values="sample_interval", aggfunc="sum", fill_value=0.0
    )
    with store_db.reader(path) as con:
        got = topkeys.key_series(con, key, endpoint, window, HOUR).rows.set_index("t")
        compacted = con.execute("SELECT count(*) FROM key_hour").fetchall()[0][0]
        pending = con.execute("SELECT count(*) FROM key_minute").fetchall()[0][0]
        assert topkeys.key_series(con, "<no such key>", endpoint, window, HOUR).rows.empty
    assert compacted and pending  # both tables contribute
    assert list(got.index) == list(truth.index) and len(got) == 4
    for tier in truth.columns:
        assert got[tier].to_numpy() == pytest.approx(truth[tier].to_numpy())
