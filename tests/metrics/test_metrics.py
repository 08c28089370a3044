"""Metrics from the store against truth computed from the raw events."""

from datetime import timedelta

import pytest

from cachemon.clock import Window
from cachemon.errors import StoreError
from cachemon.histogram import ALPHA
from cachemon.metrics import window as metrics_window
from cachemon.store import db as store_db
from tests.helpers import T0, weighted_quantile

WINDOWS = [
    Window(T0, T0 + timedelta(hours=3)),  # whole hours
    Window(T0 + timedelta(minutes=17), T0 + timedelta(hours=2, minutes=43)),  # ragged ends
    Window(T0 + timedelta(minutes=65), T0 + timedelta(minutes=80)),  # 15 minutes
    Window(T0 + timedelta(minutes=50), T0 + timedelta(minutes=70)),  # across an hour boundary
]


def _truth(df, window, endpoint=None):
    r = df[(df.kind == "request") & (df.timestamp >= window.start) & (df.timestamp < window.end)]
    return r if endpoint is None else r[r.endpoint == endpoint]


@pytest.mark.parametrize("window", WINDOWS, ids=str)
def test_hit_rates_volume_and_latency_match_raw_events(loaded_store, window):
    path, df = loaded_store
    r = _truth(df, window)
    with store_db.reader(path) as con:
        m = metrics_window.compute(con, window, "custom")
    w = r.sample_interval
    total = w.sum()
    assert m.volume.total == pytest.approx(total, rel=1e-12)
    for tier in ("edge", "kv", "r2", "api"):
        share = 100 * w[r.tier == tier].sum() / total
        assert m.volume.share(tier) == pytest.approx(share, rel=1e-12, abs=1e-12)
    assert m.combined_hit_rate == pytest.approx(100 * w[r.tier != "api"].sum() / total, rel=1e-12)
    assert m.errors == pytest.approx(w[r.status == "error"].sum())
    assert m.latency.avg == pytest.approx((r.latency_ms * w).sum() / total, rel=1e-9)
    for q, got in ((0.5, m.latency.p50), (0.95, m.latency.p95), (0.99, m.latency.p99)):
        truth = weighted_quantile(r.latency_ms, w, q)
        assert abs(got - truth) / truth <= ALPHA + 1e-9, (q, got, truth)


@pytest.mark.parametrize("window", WINDOWS, ids=str)
def test_top_keys_match_raw_events_over_the_span_they_cover(loaded_store, window):
    path, df = loaded_store
    with store_db.reader(path) as con:
        m = metrics_window.compute(con, window, "custom", top=5)
    covered = m.top_keys_window
    assert covered.start <= window.start and covered.end >= window.end
    r = _truth(df, covered)
    per_key = r.groupby("key").sample_interval.sum()
    api = r[r.tier == "api"].groupby("key").sample_interval.sum()
    expected = (
        per_key.reset_index()
        .sort_values(["sample_interval", "key"], ascending=[False, True])
        .head(5)
    )
    assert [k.key for k in m.top_keys] == list(expected.key)
    for k in m.top_keys:
        assert k.requests == pytest.approx(per_key[k.key])
        assert k.hit_rate == pytest.approx(100 * (1 - api.get(k.key, 0) / per_key[k.key]))


def test_long_windows_use_the_pruned_top_k_and_stay_exact(tmp_path):
    """Windows of 3 h and more prune candidates; compare with a plain GROUP BY."""
    from tests.helpers import load, simulate

    parts, df = simulate(30, start=T0 - timedelta(hours=20), step=timedelta(hours=6))
    path = tmp_path / "s.duckdb"
    load(path, parts)
    window = Window(T0 - timedelta(hours=19, minutes=30), T0 + timedelta(hours=9, minutes=30))
    with store_db.reader(path) as con:
        m = metrics_window.compute(con, window, "custom", top=10)
    r = _truth(df, m.top_keys_window)
    top = (
        r.groupby("key")
        .sample_interval.sum()
        .reset_index()
        .sort_values(["sample_interval", "key"], ascending=[False, True])
        .head(10)
    )
    assert [k.key for k in m.top_keys] == list(top.key)


def test_endpoint_filter(loaded_store):
    path, df = loaded_store
    window = WINDOWS[0]
    with store_db.reader(path) as con:
        m = metrics_window.compute(con, window, "3h", endpoint="isbn", top=3)
    r = _truth(df, window, "isbn")
    assert m.volume.total == pytest.approx(r.sample_interval.sum())
    assert all(k.endpoint == "isbn" for k in m.top_keys) and len(m.top_keys) == 3


def test_json_has_the_seed_shape(loaded_store):
    path, _ = loaded_store
    with store_db.reader(path) as con:
        out = metrics_window.to_json(metrics_window.compute(con, WINDOWS[0], "1h"))
    assert set(out["hitRates"]) == {"edge", "kv", "r2_cold", "api", "combined"}
    assert set(out["latency"]) == {"p50", "p95", "p99", "avg"}
    assert {"total_requests", "edge_hits", "kv_hits", "r2_rehydrations", "api_misses"} <= set(
        out["volume"]
    )
    assert out["timestamp"] == "2026-11-19T11:00:00Z" and out["period"] == "1h"
    v = out["volume"]
    assert (
        v["total_requests"]
        == v["edge_hits"] + v["kv_hits"] + v["r2_rehydrations"] + v["api_misses"]
    )
    assert {"key", "requests", "hitRate", "tier"} <= set(out["topKeys"][0])
    assert "costs" not in out and "health" not in out  # absent until built, never faked


def test_empty_window_names_what_the_store_holds(loaded_store):
    path, _ = loaded_store
    with (
        store_db.reader(path) as con,
        pytest.raises(StoreError, match="no requests in .* holds data from 2026-11-19T08:00:00Z"),
    ):
        metrics_window.compute(con, Window(T0 - timedelta(days=2), T0 - timedelta(days=1)), "24h")


def test_kpi_deltas(loaded_store):
    path, _ = loaded_store
    with store_db.reader(path) as con:
        cur = metrics_window.compute(
            con, Window(T0 + timedelta(hours=2), T0 + timedelta(hours=3)), "1h"
        )
        prev = metrics_window.compute(
            con, Window(T0 + timedelta(hours=1), T0 + timedelta(hours=2)), "1h"
        )
    d = metrics_window.kpi_deltas(cur, prev)
    assert d["requests"] == cur.volume.total - prev.volume.total
    assert d["p99"] == cur.latency.p99 - prev.latency.p99
    assert metrics_window.kpi_deltas(cur, None)["combined"] is None


def test_a_lagging_source_serves_the_last_good_data_marked_stale(loaded_store):
    path, _ = loaded_store
    asked = Window(
        T0 + timedelta(hours=4, minutes=45), T0 + timedelta(hours=5)
    )  # 2 h after the data
    with store_db.reader(path) as con:
        with pytest.raises(StoreError, match="no requests in"):
            metrics_window.compute(con, asked, "15m")
        m = metrics_window.compute(con, asked, "15m", latest=True)
        fresh = metrics_window.compute(
            con, Window(T0 + timedelta(hours=2, minutes=45), T0 + timedelta(hours=3)), "15m"
        )
    out = metrics_window.to_json(m)
    assert m.window == fresh.window and m.volume == fresh.volume
    assert (
        out["timestamp"] == "2026-11-19T13:00:00Z"
        and out["dataAgeSeconds"] == 7200
        and out["stale"] is True
    )
    assert metrics_window.to_json(fresh)["stale"] is False
