"""Trend series and daily costs against truth computed from raw events."""

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from cachemon import config, settings
from cachemon.clock import HOUR, Window
from cachemon.costs import usage as costs_usage
from cachemon.errors import InputError
from cachemon.histogram import ALPHA
from cachemon.metrics import trends
from cachemon.pricing import DEFAULT
from cachemon.store import db as store_db
from tests.helpers import T0, weighted_quantile

SPAN = Window(T0, T0 + 3 * HOUR)


def _requests(df, endpoint=None):
    r = df[df.kind == "request"]
    return r if endpoint is None else r[r.endpoint == endpoint]


def _bucket(ts: pd.Series, step: timedelta) -> pd.Series:
    return ts.dt.floor(pd.Timedelta(step))


@pytest.mark.parametrize("step", [timedelta(minutes=15), HOUR, timedelta(minutes=45)], ids=str)
@pytest.mark.parametrize("endpoint", [None, "isbn"])
def test_buckets_match_raw_events(loaded_store, step, endpoint):
    path, df = loaded_store
    r = _requests(df, endpoint)
    r = r.assign(b=_bucket(r.timestamp, step))
    with store_db.reader(path) as con:
        got = trends.trend(con, SPAN, step, endpoint).set_index("time")
    truth = r.groupby("b")
    assert list(got.index) == sorted(truth.groups)
    for b, g in truth:
        row, w = got.loc[b], g.sample_interval
        assert row["requests"] == pytest.approx(w.sum(), rel=1e-12)
        for tier in ("edge", "kv", "r2", "api"):
            assert row[tier] == pytest.approx(w[g.tier == tier].sum(), rel=1e-12, abs=1e-9)
        assert row["edge_hit_rate"] == pytest.approx(
            100 * w[g.tier == "edge"].sum() / w.sum(), rel=1e-12
        )
        assert row["combined_hit_rate"] == pytest.approx(
            100 * w[g.tier != "api"].sum() / w.sum(), rel=1e-12
        )
        assert row["error_rate"] == pytest.approx(
            100 * w[g.status == "error"].sum() / w.sum(), rel=1e-12, abs=1e-12
        )
        for q, name in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
            assert row[name] == pytest.approx(
                weighted_quantile(g.latency_ms, w, q), rel=ALPHA + 1e-9
            )


def test_queue_depth_is_the_max_and_mean_of_the_readings(loaded_store):
    path, df = loaded_store
    g = df[df.kind == "queue_depth"].assign(b=lambda x: _bucket(x.timestamp, HOUR))
    with store_db.reader(path) as con:
        got = trends.trend(con, SPAN, HOUR).set_index("time")
    for b, part in g.groupby("b"):
        assert got.loc[b, "queue_depth_max"] == pytest.approx(part.latency_ms.max())
        assert got.loc[b, "queue_depth_mean"] == pytest.approx(part.latency_ms.mean())


def test_the_last_bucket_ends_with_the_window(loaded_store):
    path, _ = loaded_store
    window = Window(T0, T0 + timedelta(hours=2, minutes=20))
    with store_db.reader(path) as con:
        got = trends.trend(con, window, HOUR)
    assert list(got["minutes"]) == [60, 60, 20]


def test_daily_costs_price_each_days_requests(tmp_path):
    from tests.helpers import load, simulate

    parts, df = simulate(30, start=T0 - timedelta(hours=8), step=timedelta(hours=6))
    path = tmp_path / "c.duckdb"
    load(path, parts)
    cfg = config.with_db(settings.Config(), str(path))
    with store_db.reader(path) as con:
        got = costs_usage.daily_costs(
            con, Window(T0 - timedelta(days=3), T0 + timedelta(days=2)), cfg
        )
    r = _requests(df)
    per_day = r.groupby(r.timestamp.dt.floor("D")).sample_interval.sum()
    assert list(got["day"]) == list(per_day.index)
    # The first day is fully covered; the second covers 6 h of data: its cost
    # is those 6 hours', flagged partial, not scaled to 24 h (#21).
    price = DEFAULT["workers_requests"]
    assert got["workers_requests"].iloc[0] == pytest.approx(
        per_day.iloc[0] * price.price / price.per, rel=1e-9
    )
    assert got["workers_requests"].iloc[1] == pytest.approx(
        per_day.iloc[1] * price.price / price.per, rel=1e-9
    )
    assert list(got["partial"]) == [False, True]
    assert np.all(got["list"] >= got["billed"])


def test_a_step_that_is_not_whole_minutes_is_refused(loaded_store):
    path, _ = loaded_store
    with store_db.reader(path) as con, pytest.raises(InputError, match="whole minutes"):
        trends.trend(con, SPAN, timedelta(seconds=90))
