"""The analysts' views against raw events (pandas/numpy), and against cachemon's own numbers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import duckdb
import numpy as np
import pytest

from cachemon.clock import Window
from cachemon.histogram import ALPHA
from cachemon.metrics import window as metrics_window
from cachemon.store import db as store_db
from cachemon.store import snapshots
from cachemon.store import views as store_views
from tests.helpers import load, simulate, weighted_quantile

START = datetime(2026, 11, 19, 8, 0, tzinfo=UTC)
HOURS = 26  # 16 hours of the 19th, 10 of the 20th
UTC = UTC


@pytest.fixture(scope="module")
def two_days(tmp_path_factory):
    path = tmp_path_factory.mktemp("analyst") / "cachemon.duckdb"
    parts, truth = simulate(HOURS, START)
    load(path, parts, now=START + timedelta(hours=HOURS))
    requests = truth[truth.kind == "request"].copy()
    requests["hour"] = requests.timestamp.dt.floor("h")
    requests["day"] = requests.timestamp.dt.floor("D")
    requests["minute"] = requests.timestamp.dt.floor("min")
    return path, requests


def _frame(con, sql, params=None):
    return con.execute(sql, params or {}).df()


@pytest.mark.parametrize("grain", ["minute", "hour", "day"])
def test_requests_views_equal_weighted_raw_counts(two_days, grain):
    path, r = two_days
    with store_db.reader(path) as con:
        got = _frame(con, f"SELECT * FROM v1.requests_{grain}")
    keys = [grain, "endpoint", "tier", "experiment", "cohort"]
    r = r.assign(
        err=np.where(r.status == "error", r.sample_interval, 0.0),
        lat=r.latency_ms * r.sample_interval,
    )
    truth = (
        r.groupby(keys)
        .agg(
            requests=("sample_interval", "sum"),
            errors=("err", "sum"),
            latency_ms_sum=("lat", "sum"),
            data_points=("key", "size"),
        )
        .reset_index()
    )
    merged = truth.merge(got, on=keys, how="outer", suffixes=("_truth", ""), indicator=True)
    assert (merged._merge == "both").all(), merged[merged._merge != "both"].head()
    np.testing.assert_allclose(merged.requests, merged.requests_truth, rtol=1e-12)
    np.testing.assert_allclose(merged.errors, merged.errors_truth, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(merged.latency_ms_sum, merged.latency_ms_sum_truth, rtol=1e-9)
    assert (merged.data_points == merged.data_points_truth).all()


def _check_quantiles(rows, r, period_col):
    assert len(rows)
    for row in rows.itertuples():
        sel = r[r[period_col] == row.period]
        if row.endpoint != "*":
            sel = sel[sel.endpoint == row.endpoint]
        if row.tier != "*":
            sel = sel[sel.tier == row.tier]
        assert row.requests == pytest.approx(sel.sample_interval.sum(), rel=1e-12)
        for q, got in ((0.5, row.p50_ms), (0.95, row.p95_ms), (0.99, row.p99_ms)):
            truth = weighted_quantile(sel.latency_ms, sel.sample_interval, q)
            assert abs(got - truth) <= ALPHA * truth + 1e-9, (row, q, truth)


def test_daily_and_hourly_quantiles_come_from_merged_histograms(two_days):
    path, r = two_days
    lo, hi = datetime(2026, 11, 19, tzinfo=UTC), datetime(2026, 11, 21, tzinfo=UTC)
    with store_db.reader(path) as con:
        days = _frame(con, "SELECT * FROM v1.latency_daily($lo, $hi)", {"lo": lo, "hi": hi})
        hours = _frame(
            con,
            "SELECT * FROM v1.latency_hourly($lo, $hi) WHERE period < $cut",
            {"lo": lo, "hi": hi, "cut": START + timedelta(hours=3)},
        )
    # every (period, endpoint, tier) combination, plus the '*' roll-ups
    endpoints, tiers = sorted(r.endpoint.unique()), sorted(r.tier.unique())
    assert len(days) == 2 * (len(endpoints) + 1) * (len(tiers) + 1)
    _check_quantiles(days, r, "day")
    _check_quantiles(hours, r, "hour")


def test_window_quantiles_equal_cachemon_metrics(two_days):
    path, _ = two_days
    window = Window(START + timedelta(hours=2), START + timedelta(hours=20))
    with store_db.reader(path) as con:
        m = metrics_window.compute(con, window, "custom", top=0)
        row = con.execute(
            "SELECT requests, p50_ms, p95_ms, p99_ms FROM v1.latency_window($lo, $hi) "
            "WHERE endpoint = '*' AND tier = '*'",
            {"lo": window.start, "hi": window.end},
        ).fetchall()
    assert row == [
        (pytest.approx(m.volume.total, rel=1e-12), m.latency.p50, m.latency.p95, m.latency.p99)
    ]


def test_top_keys_and_key_views_equal_raw_per_key_counts(two_days):
    path, r = two_days
    lo, hi = (
        START + timedelta(hours=3),
        START + timedelta(hours=HOURS),
    )  # a whole day plus ragged hours
    sel = r[(r.timestamp >= lo) & (r.timestamp < hi)]
    truth = sel.groupby("key").sample_interval.sum().sort_values(ascending=False)
    with store_db.reader(path) as con:
        top = _frame(con, "SELECT * FROM v1.top_keys($lo, $hi, 20)", {"lo": lo, "hi": hi})
        hourly = _frame(con, "SELECT hour, key, requests FROM v1.keys_hour")
        classes = _frame(
            con,
            "SELECT key, class, requests_per_day FROM v1.key_classes($lo, $hi)",
            {"lo": lo, "hi": hi},
        )
    assert len(top) == 20
    np.testing.assert_allclose(top.requests, truth.iloc[:20].values, rtol=1e-12)
    for row in top.itertuples():
        assert row.requests == pytest.approx(truth[row.key], rel=1e-12)
        api = sel[(sel.key == row.key) & (sel.tier == "api")].sample_interval.sum()
        assert row.hit_rate == pytest.approx(100 * (1 - api / truth[row.key]), rel=1e-12)
    # every hour of every key, the newest (not yet compacted) hour included
    per_hour = r.groupby(["hour", "key"]).sample_interval.sum()
    assert len(hourly) == len(per_hour)
    got = hourly.set_index(["hour", "key"]).requests.sort_index()
    np.testing.assert_allclose(got.values, per_hour.sort_index().values, rtol=1e-12)
    days = (hi - lo) / timedelta(days=1)
    rate = truth / days
    want = np.where(rate > 100, "hot", np.where(rate < 10 / 30, "cold", "warm"))
    assert dict(zip(classes.key, classes["class"])) == dict(zip(truth.index, want))


def test_views_are_versioned_and_work_from_an_attached_snapshot(two_days, tmp_path):
    path, r = two_days
    with store_db.reader(path) as con:
        names = {
            n
            for (n,) in con.execute(
                "SELECT view_name FROM duckdb_views() WHERE schema_name = $s",
                {"s": store_views.SCHEMA},
            ).fetchall()
        }
    assert {
        "requests_hour",
        "latency_histogram_day",
        "cost_day",
        "job_runs",
        "alert_history",
    } <= names
    con = duckdb.connect()
    con.execute("ATTACH $p AS cm (READ_ONLY)", {"p": str(snapshots.snapshot_path(path))})
    total = con.execute("SELECT sum(requests) FROM cm.v1.requests_day").fetchall()[0][0]
    assert total == pytest.approx(r.sample_interval.sum(), rel=1e-12)
    con.execute("USE cm")
    assert (
        len(
            con.execute(
                "SELECT * FROM v1.top_keys(TIMESTAMPTZ '2026-11-19', TIMESTAMPTZ '2026-11-21', 3)"
            ).fetchall()
        )
        == 3
    )
