"""The simulator looks like the real cache and is deterministic."""

from dataclasses import replace
from datetime import timedelta

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from cachemon.assignment import seed_sha256_byte
from cachemon.clock import HOUR, Window
from cachemon.sources.catalog import EXPERIMENT
from cachemon.sources.simulator import Simulator, _ttl_hits
from tests.helpers import SMALL, T0, simulate, small_sim, to_pandas


def _requests(df):
    return df[df.kind == "request"]


def test_same_seed_same_events_and_other_seed_differs():
    _, a = simulate(1)
    _, b = simulate(1)
    _, c = simulate(1, sim=small_sim(seed=8))
    pd.testing.assert_frame_equal(a, b)
    assert len(a) != len(c) or not a.equals(c)


@settings(max_examples=8, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=179), min_size=1, max_size=4, unique=True))
def test_events_do_not_depend_on_how_the_span_is_cut(cuts):
    """Cache state carries across windows: any cutting gives the same events."""
    span = Window(T0, T0 + timedelta(hours=3))
    _, whole = simulate(3, step=timedelta(hours=3))
    points = [span.start] + [T0 + timedelta(minutes=c) for c in sorted(cuts)] + [span.end]
    sim = small_sim()
    frames = [sim.generate(Window(a, b)) for a, b in zip(points, points[1:])]
    pieces = to_pandas(*frames)
    key = ["timestamp", "kind", "key"]
    pd.testing.assert_frame_equal(
        whole.sort_values(key, kind="stable").reset_index(drop=True),
        pieces.sort_values(key, kind="stable").reset_index(drop=True),
    )


def test_saved_state_resumes_exactly():
    sim = small_sim()
    sim.generate(Window(T0, T0 + HOUR))
    saved = sim.state.to_bytes()
    nxt = Window(T0 + HOUR, T0 + 2 * HOUR)
    a = to_pandas(sim.generate(nxt))
    other = small_sim()
    other.restore(saved)
    b = to_pandas(other.generate(nxt))
    pd.testing.assert_frame_equal(a, b)


def test_tier_shares_and_latency_look_like_the_seed():
    _, df = simulate(
        24,
        start=T0 - timedelta(hours=8),
        sim=Simulator(replace(SMALL, requests_per_hour=20000, catalog_keys=20000)),
    )
    req = _requests(df)
    w = req.groupby("tier").sample_interval.sum() / req.sample_interval.sum() * 100
    assert 65 < w["edge"] < 90 and 8 < w["kv"] < 30 and 0 < w["r2"] < 5 and 1 < w["api"] < 10
    med = req.groupby("tier").latency_ms.median()
    assert med["edge"] < med["kv"] < med["r2"] < med["api"]
    assert set(req.endpoint) == {"title", "isbn", "author"}


def test_volume_follows_the_diurnal_shape_and_sampling_is_unbiased():
    sim = small_sim(requests_per_hour=125_000 / 10)
    hours = {}
    for w in Window(T0 - timedelta(hours=8), T0 + timedelta(hours=16)).split(HOUR):
        df = _requests(to_pandas(sim.generate(w)))
        true_n = len(sim._hour(int(w.start.timestamp()) // 3600).t)
        hours[w.start.hour] = (df.sample_interval.sum(), true_n)
        # Horvitz-Thompson: weighted sampled count estimates the true count.
        assert abs(df.sample_interval.sum() - true_n) / true_n < 0.06
    assert hours[18][1] > 2 * hours[6][1]  # evening peak vs early morning
    assert np.mean([h[1] for h in hours.values()]) > 0.8 * 12_500


def test_key_popularity_is_zipf_like():
    _, df = simulate(6, sim=small_sim(requests_per_hour=30000, long_tail_share=0.0))
    counts = (
        _requests(df)
        .query("endpoint == 'title'")
        .groupby("key")
        .sample_interval.sum()
        .sort_values(ascending=False)
    )
    ranks = np.arange(1, 51)
    slope = np.polyfit(np.log(ranks), np.log(counts.to_numpy()[:50]), 1)[0]
    assert -1.0 < slope < -0.6  # α ≈ 0.8


def test_title_cohorts_use_the_seed_hash():
    _, df = simulate(1)
    title = _requests(df).query(
        "endpoint == 'title' and not key.str.contains(':q=lt-')", engine="python"
    )
    assert (title.experiment == EXPERIMENT).all()
    for key, cohort in title.groupby("key").cohort.first().head(50).items():
        assert cohort == ("control", "treatment")[seed_sha256_byte(key, EXPERIMENT, [0.5, 0.5])]
    assert (_requests(df).query("endpoint != 'title'").cohort == "").all()


def test_incidents_origin_slowdown_queue_backlog_and_purge():
    # Thursday 09:00-09:45 UTC: origin slowdown.
    _, df = simulate(3)
    api = _requests(df).query("tier == 'api'")
    slow = api[(api.timestamp >= T0 + HOUR) & (api.timestamp < T0 + HOUR + timedelta(minutes=45))]
    normal = api[api.timestamp < T0 + HOUR]
    assert slow.latency_ms.median() > 3 * normal.latency_ms.median()
    assert (slow.status == "error").mean() > 0.05
    # Saturday 02:00-04:00: warming queue backlog above the 1000 threshold.
    sat = T0 + timedelta(days=2) - timedelta(hours=7)  # Saturday 01:00
    _, sdf = simulate(3, start=sat)
    q = sdf[sdf.kind == "queue_depth"]
    assert q.latency_ms.max() > 1000 and q[q.timestamp < sat + HOUR].latency_ms.max() < 200
    # Tuesday 14:00: edge purge, the edge hit rate collapses right after.
    tue = T0 + timedelta(days=5, hours=5)  # next Tuesday 13:00
    _, pdf = simulate(2, start=tue)
    r = _requests(pdf)
    before = r[r.timestamp < tue + HOUR]
    after = r[(r.timestamp >= tue + HOUR) & (r.timestamp < tue + HOUR + timedelta(minutes=10))]

    def share(x):
        return x[x.tier == "edge"].sample_interval.sum() / x.sample_interval.sum()

    assert share(after) < share(before) - 0.2


def test_gauges_are_present():
    _, df = simulate(1)
    kinds = df[df.kind != "request"].groupby("kind").size()
    assert (
        kinds["queue_depth"] == 60
        and kinds["kv_storage_bytes"] == 12
        and kinds["r2_storage_bytes"] == 12
    )
    assert (df[df.kind == "kv_storage_bytes"].latency_ms > 0).all()


def test_ttl_cache_model_matches_a_plain_loop():
    rng = np.random.default_rng(3)
    n = 2000
    group = rng.integers(0, 30, n)
    t = np.sort(rng.integers(0, 10_000, n))
    ttl = rng.integers(50, 900, 30)
    fails = rng.random(n) < 0.1
    fill = np.where(rng.random(30) < 0.5, rng.integers(-800, 0, 30), -(2**62))
    expect, f = [], fill.copy()
    for g, ti, bad in zip(group, t, fails):
        hit = ti < f[g] + ttl[g]
        expect.append(hit)
        if not hit and not bad:
            f[g] = ti
    got_fill = fill.copy()
    got = _ttl_hits(group, t, ttl, got_fill, fails, 0, 10_000)
    assert (got == np.array(expect)).all()
    assert (got_fill == f).all()
