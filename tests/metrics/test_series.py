"""Observations over many windows against the raw events (pandas truth)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cachemon.errors import InputError
from cachemon.metrics import series
from cachemon.store import db as store_db
from tests.helpers import T0, weighted_quantile


@pytest.mark.parametrize("endpoint", [None, "isbn"])
def test_observations_equal_raw_event_truth(loaded_store, endpoint):
    path, truth = loaded_store
    length = timedelta(minutes=15)
    # Aligned, unaligned, overlapping and empty (before the data) windows.
    starts = [
        T0,
        T0 + timedelta(minutes=7),
        T0 + timedelta(minutes=10),
        T0 + timedelta(hours=2, minutes=44),
        T0 - timedelta(hours=5),
    ]
    with store_db.reader(path) as con:
        obs = series.observe(con, starts, length, endpoint)
    assert [o.window.start for o in obs] == starts
    req = truth[truth.kind == "request"]
    if endpoint:
        req = req[req.endpoint == endpoint]
    for o in obs:
        w = req[(req.timestamp >= o.window.start) & (req.timestamp < o.window.end)]
        for tier in ("edge", "kv", "r2", "api"):
            assert getattr(o.volume, tier) == pytest.approx(w[w.tier == tier].sample_interval.sum())
        assert o.errors == pytest.approx(w[w.status == "error"].sample_interval.sum())
        if w.empty:
            assert o.p99 is None and o.requests == 0 and o.combined_hit_rate is None
            continue
        assert o.avg_latency == pytest.approx(
            (w.latency_ms * w.sample_interval).sum() / w.sample_interval.sum()
        )
        for q, got in ((0.5, o.p50), (0.95, o.p95), (0.99, o.p99)):
            assert got == pytest.approx(
                weighted_quantile(w.latency_ms, w.sample_interval, q), rel=0.01
            )
        gauges = truth[
            (truth.kind == "queue_depth")
            & (truth.timestamp >= o.window.start)
            & (truth.timestamp < o.window.end)
        ]
        assert o.gauge("queue_depth") == pytest.approx(
            gauges.sort_values("timestamp").latency_ms.iloc[-1]
        )


def test_windows_must_be_whole_minutes(loaded_store):
    with store_db.reader(loaded_store[0]) as con:
        with pytest.raises(InputError, match="whole minutes"):
            series.observe(con, [T0], timedelta(seconds=90))
        assert series.observe(con, [], timedelta(minutes=15)) == []
