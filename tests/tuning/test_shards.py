"""The TTL what-if by SHARDS replay: exact at rate 1 against a plain per-key
loop, within the issue's bounds at rate 0.1 on Poisson, bursty and polling
traces and on the simulator, its error band, and every surface saying which
method made the figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachemon import config
from cachemon import settings as cm_settings
from cachemon.clock import Window, iso
from cachemon.errors import InputError
from cachemon.events import TIERS
from cachemon.ingest import write as ingest_write
from cachemon.keyhash import key_hashes
from cachemon.rollups import Sampling
from cachemon.store import db as store_db
from cachemon.store.samples import Samples
from cachemon.testing import traces
from cachemon.tuning import keyrates, shards
from cachemon.tuning import whatif as tuning_whatif
from cachemon.tuning.experiments import Cohort, Experiment
from tests.helpers import ROOT, SMALL, T0, load, simulate, small_sim

US = 1_000_000
END = datetime(2026, 11, 29, tzinfo=UTC)
WINDOW = Window(END - timedelta(days=7), END)
HISTORY = Window(WINDOW.start - timedelta(weeks=8), END)
# The range, at the TTLs people ask about (the bench covers the whole grid).
TTLS = [t for t in shards.LANDMARKS if timedelta(hours=1) <= t <= timedelta(days=30)]
# The validated rate: ~500 of the 5,000 keys (see docs/ttl.md and the bench).
RATE = 0.1


def _us(d: datetime) -> int:
    return round(d.timestamp() * US)


def _population(tr: traces.Trace, window: Window) -> np.ndarray:
    inside = (tr.t_us >= _us(window.start)) & (tr.t_us < _us(window.end))
    return np.unique(tr.keys[inside], return_counts=True)[1].astype(float)


@given(
    st.lists(
        st.tuples(
            st.integers(0, 7),
            st.integers(0, 3 * 86400 * US),
            st.sampled_from(TIERS),
            st.booleans(),
        ),
        min_size=1,
        max_size=120,
    ),
    st.integers(60, 2 * 86400),
    st.integers(0, 3 * 86400),
)
@settings(max_examples=150, deadline=None)
def test_replay_at_rate_one_is_the_exact_fixed_ttl_cache(rows, ttl_s, start_s):
    """Property: for any trace, window and TTL, the full-trace replay counts
    exactly the window's KV hits of a plain per-key loop started at the first
    request (the warm-up), and the KV lookups there; an error answered by r2
    or api is a failed fill and writes nothing."""
    t0 = _us(T0)
    key = np.array([f"k{k}" for k, *_ in rows], dtype=object)
    t = np.array([t0 + dt for _, dt, *_ in rows], dtype=np.int64)
    tier = np.array([x for *_, x, _ in rows], dtype=object)
    err = np.array([e for *_, e in rows], dtype=bool)
    failed = err & np.isin(tier, ["r2", "api"])
    window = Window(T0 + timedelta(seconds=start_s), T0 + timedelta(days=3, seconds=1))
    ttl = timedelta(seconds=ttl_s)
    full = shards.full_trace("title", key, t, tier, error=err)
    c = shards.curve(full, window, [ttl], with_grid=False)
    look = tier != "edge"
    inside = look & (t >= _us(window.start)) & (t < _us(window.end))
    if not inside.any():
        assert c is None
        return
    ratio = traces.exact_hit_ratio(key[look], t[look], window, ttl, failed[look])
    assert c.hit_ratio[0] == pytest.approx(ratio, abs=1e-12)
    assert c.lookups == inside.sum() and c.error[0] == 0
    # Entries in KV: each write lives `ttl`, clipped to the window (a plain loop too).
    expiry, present = {}, 0
    ws, we = _us(window.start), _us(window.end)
    for k, at, bad in sorted(zip(key[look], t[look], failed[look]), key=lambda r: r[1]):
        if not at < expiry.get(k, -1) and not bad:
            expiry[k] = at + int(ttl.total_seconds() * US)
            present += max(0, min(expiry[k], we) - max(at, ws))
    assert c.entries[0] == pytest.approx(present / (we - ws), rel=1e-9, abs=1e-12)


@pytest.fixture(scope="module", params=traces.SHAPES)
def trace(request):
    """A trace of each shape: 5,000 Zipf keys, 8 weeks of history, a week's window."""
    tr = traces.generate(request.param, HISTORY, 5000, 5000, seed=11)
    exact = np.array([traces.exact_hit_ratio(tr.keys, tr.t_us, WINDOW, t) for t in TTLS])
    return tr, exact


def test_sampled_replay_is_within_a_point_of_the_exact_replay(trace):
    """The issue's bound at rate 0.1: mean absolute error ≤ 1 point, none
    over 2, from 1 h to 30 d; the stated error covers the miss mostly, and
    the model it replaces misses by far more on bursts and pollers."""
    tr, exact = trace
    s = traces.shards_sample(tr.samples(), tr.keys, RATE)
    c = shards.curve(s, WINDOW, TTLS, _population(tr, WINDOW), with_grid=False)
    got = 100 * c.hit_ratio
    diff = got - 100 * exact
    print(tr.shape, " ".join(f"{t}: {g:.2f}/{100 * e:.2f}" for t, g, e in zip(TTLS, got, exact)))
    assert np.abs(diff).mean() <= 1.0 and np.abs(diff).max() <= 2.0
    inside = np.unique(tr.keys[(tr.t_us >= _us(WINDOW.start)) & (tr.t_us < _us(WINDOW.end))])
    assert c.keys == (key_hashes(inside) < RATE).sum() and c.warm.all()
    # Within three standard errors (the band the surfaces draw is one).
    assert np.all(np.abs(diff) <= 3 * 100 * c.error + 0.05)
    # The plain SHARDS ratio (no post-stratification) swings with which hot
    # keys hash in: on these traces it is worse than the bound somewhere.
    plain = shards.curve(s, WINDOW, TTLS, with_grid=False)
    assert np.abs(100 * (plain.hit_ratio - exact)).max() > 2.0 or tr.shape == "bursty"


def test_the_model_misses_bursts_and_pollers(trace):
    """The comparison the issue measured (−27 points at 1 h on bursts): the
    fixed-TTL model on the window's per-key rates, on the same traces."""
    tr, exact = trace
    days = 7.0
    mu = _population(tr, WINDOW) / days
    model = np.array([keyrates.model_hits(mu, days, t / timedelta(days=1)).sum() for t in TTLS])
    diff = 100 * (model / mu.sum() - exact)
    print(tr.shape, "model - exact:", " ".join(f"{d:+.2f}" for d in diff))
    worst = {"poisson": 2.0, "bursty": 20.0, "periodic": 5.0}[tr.shape]
    assert np.abs(diff).max() > worst


@pytest.fixture(scope="module")
def sim_trace():
    """The simulator (unsampled, no experiment) for 4 days: title's KV lookups."""
    parts, df = simulate(
        hours=96,
        step=timedelta(hours=6),
        sim=small_sim(
            requests_per_hour=12_000,
            catalog_keys=6000,
            sample_threshold_per_minute=1e12,
            experiment=False,
        ),
    )
    r = df[(df.kind == "request") & (df.endpoint == "title") & (df.tier != "edge")]
    t = r.timestamp.astype("datetime64[us, UTC]").astype("int64").to_numpy()
    return r.key.to_numpy(dtype=object), t, r.tier.to_numpy(dtype=object), r.status == "error"


def test_sampled_replay_matches_the_simulator_exact_replay(sim_trace):
    keys, t, tier, err = sim_trace
    failed = err.to_numpy() & np.isin(tier, ["r2", "api"])
    assert failed.any()  # the simulator's origin errors: failed fills, which write nothing
    window = Window(T0 + timedelta(days=3), T0 + timedelta(days=4))
    ttls = [x for x in TTLS if x <= timedelta(days=2)]
    exact = np.array([traces.exact_hit_ratio(keys, t, window, x, failed) for x in ttls])
    full = shards.full_trace("title", keys, t, tier, error=err)
    inside = (t >= _us(window.start)) & (t < _us(window.end))
    pop = np.unique(keys[inside], return_counts=True)[1].astype(float)
    c = shards.curve(traces.shards_sample(full, keys, RATE), window, ttls, pop, with_grid=False)
    diff = 100 * (c.hit_ratio - exact)
    print("simulator", " ".join(f"{x}: {d:+.2f}" for x, d in zip(ttls, diff)))
    assert np.abs(diff).mean() <= 1.0 and np.abs(diff).max() <= 2.0
    # And exact at rate 1, warm-up included (3 days of it before the window).
    c1 = shards.curve(full, window, ttls, with_grid=False)
    assert c1.hit_ratio == pytest.approx(exact, abs=1e-12)
    assert c1.warmup == timedelta(days=3)  # in whole minutes, from the first lookup


def test_failed_fills_write_nothing_in_the_replay():
    """An origin outage: every fill of 6 hours fails, so nothing is written
    then and each lookup of a key misses until one succeeds. The replay
    matches the plain loop that skips those writes, and differs from
    writing on every miss by points (the old replay)."""
    hist = Window(WINDOW.end - timedelta(days=3), WINDOW.end)
    day = Window(WINDOW.end - timedelta(days=1), WINDOW.end)
    tr = traces.generate("bursty", hist, 2000, 20_000, seed=7)
    outage = (tr.t_us >= _us(day.start)) & (tr.t_us < _us(day.start + timedelta(hours=6)))
    full = shards.full_trace("title", tr.keys, tr.t_us, np.full(len(tr.t_us), "api"), error=outage)
    ttls = [timedelta(hours=1), timedelta(hours=12)]
    c = shards.curve(full, day, ttls, with_grid=False)
    exact = [traces.exact_hit_ratio(tr.keys, tr.t_us, day, x, outage) for x in ttls]
    assert c.hit_ratio == pytest.approx(exact, abs=1e-12)
    naive = [traces.exact_hit_ratio(tr.keys, tr.t_us, day, x) for x in ttls]
    assert np.all(np.array(naive) - c.hit_ratio > 0.02)  # over 2 points lower with the outage
    # An error served by KV (not a fill) writes as usual: only r2/api errors are failed fills.
    kv = shards.full_trace("title", tr.keys, tr.t_us, np.full(len(tr.t_us), "kv"), error=outage)
    assert shards.curve(kv, day, ttls, with_grid=False).hit_ratio == pytest.approx(naive)


def _pred(ttl_h: float, cost: float, warm: bool = True) -> tuning_whatif.Prediction:
    ttl = timedelta(hours=ttl_h)
    return tuning_whatif.Prediction("title", ttl, 10.0, 50.0, 1, 1, 1, 0.1, cost, 0.1, warm)


def test_recommend_never_picks_an_approximate_ttl():
    """A TTL longer than the warm-up reads like longer ones (flagged
    `warm=False`): never recommended, even when cheapest; with nothing warm
    cheaper than the current TTL, the current is kept."""
    w = tuning_whatif.WhatIf(
        "title",
        WINDOW,
        1.0,
        timedelta(hours=24),
        13.0,
        _pred(24, 5.0),
        (_pred(6, 6.0), _pred(12, 4.0), _pred(48, 1.0, warm=False)),
    )
    assert tuning_whatif.recommend(w, timedelta(days=7)).ttl == timedelta(hours=12)
    only_cold = replace(w, candidates=(_pred(6, 6.0), _pred(48, 1.0, warm=False)))
    assert tuning_whatif.recommend(only_cold, timedelta(days=7)) is only_cold.current
    # Shown, flagged, not picked: the candidate stays among the figures.
    assert not only_cold.candidates[1].warm


def test_a_rate_no_key_falls_under_says_so(tmp_path):
    """`[ttl] sample_rate` so small that no key hashed under it: samples
    were taken, none of the endpoint; the fallback says that, not 'no samples'."""
    parts, _ = simulate(hours=6, step=timedelta(hours=6), sim=small_sim(experiment=False))
    path = tmp_path / "tiny.duckdb"
    with store_db.writer(path, T0) as con:
        for w, frame in parts:
            ingest_write.replace_window(
                con, frame, "simulator", w, T0, sampling=Sampling(1e-6, 1e9)
            )
    cfg = config.with_db(cm_settings.Config(), str(path))
    end = T0 + timedelta(hours=6)
    with store_db.reader(path) as con:
        (w,) = tuning_whatif.whatif(con, cfg, ["title"], [timedelta(hours=1)], Window(T0, end), end)
    assert w.method.name == tuning_whatif.MODEL
    assert (
        "samples taken at rate 1e-06, but no key of the endpoint hashed under it" in w.method.note
    )
    assert "no samples stored" not in w.method.note


def test_the_warm_up_matters_and_short_history_is_flagged():
    """Replayed from an empty cache at the window's start (the old
    `--trace`), the window reads low; with less history than the TTL the
    point is flagged as not warmed up. Each is exact for its own start."""
    tr = traces.generate("poisson", HISTORY, 2000, 4000, seed=5)
    week = [timedelta(days=1), timedelta(days=7)]
    runs = {}
    for name, since in (("warm", HISTORY.start), ("short", WINDOW.start - timedelta(days=2))):
        keep = tr.t_us >= _us(since)
        part = traces.Trace(tr.shape, tr.keys[keep], tr.t_us[keep])
        runs[name] = c = shards.curve(part.samples(), WINDOW, week, with_grid=False)
        assert c.hit_ratio == pytest.approx(
            [traces.exact_hit_ratio(part.keys, part.t_us, WINDOW, x) for x in week], abs=1e-12
        )
    assert list(runs["warm"].warm) == [True, True] and list(runs["short"].warm) == [True, False]
    keep = tr.t_us >= _us(WINDOW.start)
    empty = shards.curve(
        traces.Trace(tr.shape, tr.keys[keep], tr.t_us[keep]).samples(), WINDOW, week, False
    )
    assert not empty.warm.any() and empty.warmup == timedelta(0)
    assert runs["warm"].hit_ratio[1] - empty.hit_ratio[1] > 0.01  # over a point low


def test_the_error_band_shrinks_with_the_rate_and_vanishes_at_one():
    tr = traces.generate("poisson", HISTORY, 5000, 5000, seed=3)
    pop, full = _population(tr, WINDOW), tr.samples()
    day = [timedelta(days=1)]
    errs = [
        shards.curve(traces.shards_sample(full, tr.keys, r), WINDOW, day, pop, False).error[0]
        for r in (0.05, 0.3, 1.0)
    ]
    assert errs[0] > errs[1] > errs[2] == 0


def test_bad_samples_are_named():
    n = 3
    ok = dict(
        endpoint="title",
        rate=0.5,
        key=np.arange(n),
        t_us=np.arange(n) + _us(WINDOW.start),
        tier=np.ones(n, np.int8),
        error=np.zeros(n, bool),
        weight=np.ones(n),
    )
    with pytest.raises(InputError, match="rate must be in"):
        shards.curve(Samples(**ok | {"rate": 0.0}), WINDOW)
    with pytest.raises(InputError, match="samples.weight has 2 rows"):
        shards.curve(Samples(**ok | {"weight": np.ones(2)}), WINDOW)
    with pytest.raises(InputError, match="weight must be positive"):
        shards.curve(Samples(**ok | {"weight": np.zeros(n)}), WINDOW)
    with pytest.raises(InputError, match="tier 'disk' is unknown"):
        shards.full_trace("title", ["a"], [0], ["disk"])
    with pytest.raises(InputError, match="population lookups"):
        shards.curve(Samples(**ok), WINDOW, population=np.array([-1.0]))


# -- the what-if and its surfaces ------------------------------------------------

HOURS = 30
STORE_END = T0 + timedelta(hours=HOURS)
BASE = replace(SMALL, requests_per_hour=6000, sample_threshold_per_minute=1e12, experiment=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    parts, df = simulate(hours=HOURS, step=timedelta(hours=6), sim=small_sim(**_sim_overrides()))
    load(d / "s.duckdb", parts)
    cfg = config.with_db(cm_settings.Config(), str(d / "s.duckdb"))
    return cfg, df[df.kind == "request"], d


def _sim_overrides() -> dict:
    return {
        "requests_per_hour": BASE.requests_per_hour,
        "sample_threshold_per_minute": BASE.sample_threshold_per_minute,
        "experiment": False,
    }


def _samples_of(df: pd.DataFrame, rate: float):
    """A stand-in for the store's sample table: the rows of the keys whose
    hash is under `rate`, as `stored_samples` returns them."""

    def read(con, endpoint, start, end):
        r = df[(df.endpoint == endpoint) & (df.timestamp >= start) & (df.timestamp < end)]
        r = r[key_hashes(r.key) < rate]
        return Samples(
            endpoint,
            rate,
            pd.factorize(r.key)[0].astype(np.int64),
            r.timestamp.astype("datetime64[us, UTC]").astype("int64").to_numpy(),
            np.array([TIERS.index(x) for x in r.tier], dtype=np.int8),
            (r.status == "error").to_numpy(),
            r.sample_interval.to_numpy(dtype=float),
        )

    return read


def test_whatif_predicts_from_the_replay_when_samples_exist(store):
    """At rate 1 the sampled replay is the exact one: KV hit rate = the
    window's exact KV hits over its requests, warm-up from before the window;
    costs follow the predicted misses through the tier mix."""
    cfg, df, _ = store
    window = Window(STORE_END - timedelta(hours=12), STORE_END)
    ttls = [timedelta(hours=1), timedelta(hours=6), timedelta(days=1)]
    with store_db.reader(cfg.store.path) as con:
        (w,) = tuning_whatif.whatif(
            con, cfg, ["title"], ttls, window, STORE_END, samples_of=_samples_of(df, 1.0)
        )
    title = df[df.endpoint == "title"]
    look = title[title.tier != "edge"]
    t = look.timestamp.astype("datetime64[us, UTC]").astype("int64").to_numpy()
    keys = look.key.to_numpy(dtype=object)
    # A failed fill writes nothing (the simulator's rule and the replay's).
    fill_failed = ((look.status == "error") & look.tier.isin(["r2", "api"])).to_numpy()
    inside = title[title.timestamp >= window.start]
    n_look = (inside.tier != "edge").sum()
    assert w.method.name == tuning_whatif.REPLAY
    assert w.method.warmup == pytest.approx(timedelta(hours=18), abs=timedelta(minutes=1))
    assert "exact replay of a SHARDS sample (rate 1" in w.method.note
    fills = inside[inside.tier.isin(["r2", "api"])]
    failed = (fills.status == "error").sum() / len(fills)
    for p, ttl in zip(w.candidates, ttls):
        hits = traces.exact_hit_ratio(keys, t, window, ttl, fill_failed) * n_look
        assert p.kv_hit_rate == pytest.approx(100 * hits / len(inside), abs=1e-9)
        assert p.kv_hit_error == 0 and p.warm == (ttl < timedelta(hours=18))
        # Per day (12 hours): every miss is a fill, written unless it failed.
        assert p.kv_writes == pytest.approx((n_look - hits) * 2 * (1 - failed), rel=1e-9)
    assert [p.ttl for p in w.curve] == list(shards.grid([*ttls, w.current_ttl]))
    # The curve's cost is the tier-mix rule on its own misses: falls as the TTL grows.
    assert w.curve[0].cost > w.curve[-1].cost


def test_whatif_says_when_it_falls_back_to_the_model(store):
    cfg, df, _ = store
    window = Window(STORE_END - timedelta(hours=12), STORE_END)
    with store_db.reader(cfg.store.path) as con:
        (w,) = tuning_whatif.whatif(
            con, cfg, ["title"], [timedelta(hours=6)], window, STORE_END, samples_of=_none
        )
        rates = keyrates.rates(con, "title", window, w.days)
    assert w.method.name == tuning_whatif.MODEL and "no SHARDS sample" in w.method.note
    model = tuning_whatif.predict(rates, timedelta(hours=6), cfg.pricing, 600.0, 30)
    assert w.candidates[0].kv_hit_rate == pytest.approx(model.kv_hit_rate)
    assert w.candidates[0].kv_hit_error is None and w.curve  # the model's curve, no band
    # The curve merges keys of equal counts (for speed): the same figures.
    on = next(p for p in w.curve if p.ttl == timedelta(hours=6))
    assert on.kv_hit_rate == pytest.approx(w.candidates[0].kv_hit_rate, rel=1e-12)
    assert on.cost == pytest.approx(w.candidates[0].cost, rel=1e-12)
    assert on.stored_gb == pytest.approx(w.candidates[0].stored_gb, rel=1e-12)


def _none(con, endpoint, start, end):
    return None


def test_cli_clips_the_trace_to_the_window_and_states_the_method(store, tmp_path):
    """`--trace FILE` counts the window's requests only, warmed up by the
    trace before it (it replayed the whole file, from an empty cache); the
    text and JSON say how the predictions were made (the stored sample's replay)."""
    cfg, df, _ = store
    path = tmp_path / "trace.parquet"
    cols = ["timestamp", "tier", "key", "endpoint", "kind", "status", "latency_ms"]
    df[[*cols, "sample_interval"]].to_parquet(path)
    env = dict(os.environ, CACHEMON_DB=str(cfg.store.path), PYTHONPATH=str(ROOT))
    env.pop("CACHEMON_CONFIG", None)
    cmd = [sys.executable, "-m", "cachemon", "ttl", "whatif", "--endpoint", "title"]
    cmd += ["--ttl", "1h,1d", "--days", "0.5", "--at", iso(STORE_END), "--trace", str(path)]
    out = subprocess.run(cmd + ["--json"], env=env, capture_output=True, text=True, check=True)
    js = json.loads(out.stdout)
    window = Window(STORE_END - timedelta(hours=12), STORE_END)
    title = df[df.endpoint == "title"]
    look = title[title.tier != "edge"]
    t = look.timestamp.astype("datetime64[us, UTC]").astype("int64").to_numpy()
    inside = title[title.timestamp >= window.start]
    for c, ttl in zip(js["candidates"], (timedelta(hours=1), timedelta(days=1))):
        failed = (look.status == "error").to_numpy()
        hits = traces.exact_hit_ratio(look.key.to_numpy(dtype=object), t, window, ttl, failed)
        want = 100 * hits * (inside.tier != "edge").sum() / len(inside)
        assert c["replayKvHitRate"] == pytest.approx(want, abs=1e-4)
    assert js["replayWarmupSeconds"] == pytest.approx(18 * 3600, abs=60)
    # The store holds SHARDS samples (every write keeps them): the figures are the replay's.
    assert js["method"]["name"] == tuning_whatif.REPLAY and "SHARDS sample" in js["method"]["note"]
    assert js["candidates"][0]["kvHitRateError"] is not None
    assert len(js["curve"]) == len(shards.grid()) and js["curve"][0]["ttlSeconds"] == 600
    text = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    assert f"method: {tuning_whatif.REPLAY}: exact replay of a SHARDS sample" in text
    assert f"curve ({tuning_whatif.REPLAY}), KV hit %: 1h " in text and "18.0h of warm-up" in text


def test_a_sample_too_small_for_an_error_says_so(store):
    """One sampled key: the replay still predicts, but no jackknife error
    exists; the note says so and the error is NaN (null in the JSON), never 0."""
    cfg, df, _ = store
    busiest = df[(df.endpoint == "title") & (df.tier != "edge")].key.value_counts().index[0]
    one = _samples_of(df[df.key == busiest], 1.0)

    def read(con, endpoint, start, end):
        return replace(one(con, endpoint, start, end), rate=0.01)

    window = Window(STORE_END - timedelta(hours=12), STORE_END)
    with store_db.reader(cfg.store.path) as con:
        (w,) = tuning_whatif.whatif(
            con, cfg, ["title"], [timedelta(hours=6)], window, STORE_END, samples_of=read
        )
    assert w.method.name == tuning_whatif.REPLAY and w.method.keys == 1
    assert "too few sampled keys to estimate the error" in w.method.note
    assert np.isnan(w.candidates[0].kv_hit_error)


# -- realistic scale: thinned rows, the default SHARDS rate ---------------------

REAL = dict(requests_per_hour=40_000, catalog_keys=10_000, experiment=False)
REAL_END = T0 + timedelta(hours=48)


@pytest.fixture(scope="module")
def real_store(tmp_path_factory):
    """Two days of the simulator at a realistic rate with Analytics Engine
    thinning (sampling intervals of 2 in most minutes), stored with the
    default SHARDS rate; and the same requests unthinned (thinning only drops
    rows), from which the truth is computed."""
    d = tmp_path_factory.mktemp("real")
    step = timedelta(hours=6)
    parts, _ = simulate(hours=48, step=step, sim=small_sim(**REAL, sample_threshold_per_minute=300))
    load(d / "r.duckdb", parts)
    cfg = config.with_db(cm_settings.Config(), str(d / "r.duckdb"))
    _, full = simulate(hours=48, step=step, sim=small_sim(**REAL, sample_threshold_per_minute=1e12))
    return cfg, full[(full.kind == "request") & (full.endpoint == "title")]


def test_the_stated_error_covers_the_replay_at_realistic_scale(real_store):
    """On thinned rows, at rate 0.1, one day of warm-up: each TTL's
    prediction is within two stated errors (which hold the calibration at the
    current TTL) and 2 points of the exact replay of every request. The
    replay of thinned rows reads low (a key's missing rows would have hit or
    refilled it); the calibration is what makes the error say so."""
    cfg, title = real_store
    window = Window(REAL_END - timedelta(days=1), REAL_END)
    ttls = [timedelta(hours=h) for h in (1, 6, 12, 24)]
    with store_db.reader(cfg.store.path) as con:
        (w,) = tuning_whatif.whatif(con, cfg, ["title"], ttls, window, REAL_END)
    look = title[title.tier != "edge"]
    t = look.timestamp.astype("datetime64[us, UTC]").astype("int64").to_numpy()
    failed = ((look.status == "error") & look.tier.isin(["r2", "api"])).to_numpy()
    inside = title[title.timestamp >= window.start]
    share = (inside.tier != "edge").sum() / len(inside)
    exact = np.array(
        [
            100 * share * traces.exact_hit_ratio(look.key.to_numpy(object), t, window, x, failed)
            for x in ttls
        ]
    )
    got = np.array([p.kv_hit_rate for p in w.candidates])
    err = np.array([p.kv_hit_error for p in w.candidates])
    print(w.method.note)
    print(" ".join(f"{x}: {g:.2f}±{e:.2f}/{x_:.2f}" for x, g, e, x_ in zip(ttls, got, err, exact)))
    assert w.method.name == tuning_whatif.REPLAY and w.method.calibration is not None
    # Two standard errors (the replay alone stated ±0.2 and missed by 0.5 to 0.9).
    assert np.all(np.abs(got - exact) <= np.minimum(2 * err, 2.0))


def test_an_experiment_running_other_ttls_is_not_calibrated_and_says_so(real_store):
    """An experiment gives some title keys 48 h: the observed rate is not the
    current TTL's, so no calibration, and the note says the replay assumes
    one TTL for every key."""
    cfg, _ = real_store
    exp = Experiment(
        "longer-title",
        "title",
        (Cohort("control", timedelta(days=1), 0.5), Cohort("treatment", timedelta(days=2), 0.5)),
        T0,
    )
    window = Window(REAL_END - timedelta(days=1), REAL_END)
    with store_db.reader(cfg.store.path) as con:
        (w,) = tuning_whatif.whatif(
            con, replace(cfg, experiments=(exp,)), ["title"], [timedelta(hours=6)], window, REAL_END
        )
        (plain,) = tuning_whatif.whatif(con, cfg, ["title"], [timedelta(hours=6)], window, REAL_END)
    assert w.method.calibration is None and "assumes one TTL for every key" in w.method.note
    assert "longer-title ran others" in w.method.note
    assert w.candidates[0].kv_hit_error < plain.candidates[0].kv_hit_error
