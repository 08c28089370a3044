"""The budgeted per-key pull from Analytics Engine (the loopback emulator):
heavy keys exact, the rest from the keys whose hash is under R weighted by
1/R, R the largest bucket edge within the budget; each key counted once;
R = 1 under the budget, the same store as the exact pull; the store and
`metrics` say which top keys are exact. Truth is pandas on the raw events."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import subprocess
import sys
from dataclasses import replace
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from cachemon import config, rollups, settings
from cachemon.clock import HOUR, Window
from cachemon.errors import SourceError
from cachemon.ingest import load as ingest_load
from cachemon.metrics import window as metrics_window
from cachemon.sources import ae_sql
from cachemon.sources.ae_keys import KeyBudget
from cachemon.sources.analytics_engine import Client, Credentials, pull_rollups
from cachemon.store import db as store_db
from cachemon.testing.ae_emulator import Emulator
from tests.helpers import T0, config_error, simulate, small_sim

TOKEN = "ae-key-budget-token"
HOURS = 3
END = T0 + timedelta(hours=HOURS)
COUNTS = ["edge", "kv", "r2", "api", "errors"]
# The tests' traffic: ~4,500 request rows an hour over ~2,000 keys a window.
BUDGET = dict(key_budget=24 * 900, heavy_share=0.004)


def _hash(key: str) -> float:
    """The Worker's key hash, computed here from its definition (docs/sources.md)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:6], "big") / 2**48


@pytest.fixture(scope="module")
def sim():
    return simulate(HOURS)


@pytest.fixture(scope="module")
def emu(sim):
    e = Emulator(TOKEN).start()
    for _, f in sim[0]:
        e.add(f)
    yield e
    e.stop()


def _client(emu: Emulator) -> Client:
    return Client(
        Credentials(emu.account, TOKEN, emu.base),
        replace(settings.AnalyticsEngineConfig(), timeout=timedelta(seconds=10)),
        sleep=lambda s: None,
    )


def _pull(emu, path, key_hash="double3", **ae) -> settings.Config:
    cfg = config.with_db(settings.Config(), str(path))
    cfg = replace(
        cfg,
        columns=replace(cfg.columns, key_hash=key_hash),
        analytics_engine=replace(cfg.analytics_engine, **ae),
    )
    ingest_load.pull(cfg, _client(emu), END, since=T0, until=END)
    return cfg


def _sampled_rows_query(sql: str) -> bool:
    """Whether `sql` is the budgeted pull's per-key rows query (not the sizes)."""
    return "AS key_hash, blob1 AS key" in sql and "AS edge" in sql


def _requests(df: pd.DataFrame) -> pd.DataFrame:
    r = df[df.kind == "request"].copy()
    r["minute"] = r.timestamp.dt.floor("min")
    r["hour"] = r.timestamp.dt.floor("h")
    w = r.sample_interval
    for tier in ("edge", "kv", "r2", "api"):
        r[tier] = np.where(r.tier == tier, w, 0.0)
    r["errors"] = np.where(r.status == "error", w, 0.0)
    return r


def _truth_per_key(df: pd.DataFrame) -> pd.DataFrame:
    """Per window (hour) and key: weighted counts, the key's hash, its rows
    (distinct minute × endpoint × experiment × cohort), and the window total."""
    r = _requests(df)
    per = r.groupby(["hour", "key"]).agg(
        **{c: (c, "sum") for c in COUNTS}, n=("sample_interval", "sum")
    )
    rows = r.groupby(["hour", "key", "minute", "endpoint", "experiment", "cohort"]).size()
    per["rows"] = rows.groupby(["hour", "key"]).size()
    per["total"] = r.groupby("hour").sample_interval.sum().reindex(per.index, level="hour")
    per["hash"] = [_hash(k) for k in per.index.get_level_values("key")]
    return per


def _stored_per_key(path) -> pd.DataFrame:
    with store_db.reader(path) as con:
        con.execute("SET TimeZone = 'UTC'")
        got = con.execute(
            """SELECT date_trunc('hour', m.minute) AS hour, k.key, sum(edge) AS edge, sum(kv) AS kv,
                      sum(r2) AS r2, sum(api) AS api, sum(errors) AS errors, count(*) AS rows
               FROM key_minute m JOIN cache_keys k USING (key_id)
               GROUP BY ALL ORDER BY ALL"""
        ).df()
    got["hour"] = pd.to_datetime(got["hour"], utc=True)
    return got.set_index(["hour", "key"])


def _estimates(path) -> pd.DataFrame:
    with store_db.reader(path) as con:
        est = con.execute("SELECT lo, hi, rate, threshold FROM key_estimates ORDER BY lo").df()
        heavy = con.execute(
            "SELECT h.lo, k.key FROM key_heavy h JOIN cache_keys k USING (key_id)"
        ).df()
    est["lo"] = pd.to_datetime(est["lo"], utc=True)
    heavy["lo"] = pd.to_datetime(heavy["lo"], utc=True)
    return est.set_index("lo"), heavy


def _expected(truth: pd.DataFrame, share: float, rates: dict) -> pd.DataFrame:
    """The estimator from the raw events: heavy keys (n ≥ share × the
    window's total) as they are; other keys with hash < R divided by R; the
    rest absent."""
    heavy = truth.n >= share * truth.total
    rate = pd.Series([rates[h] for h in truth.index.get_level_values("hour")], index=truth.index)
    keep = heavy | (truth.hash < rate)
    out = truth.loc[keep, COUNTS].copy()
    scale = np.where(heavy[keep], 1.0, 1.0 / rate[keep])
    for c in COUNTS:
        out[c] = out[c] * scale
    return out


def test_heavy_keys_exact_sampled_keys_weighted_and_the_rate_fits_the_budget(sim, emu, tmp_path):
    _, df = sim
    cfg = _pull(emu, tmp_path / "b.duckdb", **BUDGET)
    truth = _truth_per_key(df)
    est, heavy_stored = _estimates(cfg.store.path)
    assert len(est) == HOURS and (est.rate < 1).all()
    allowed = BUDGET["key_budget"] / 24
    rates = {}
    for hour, t in truth.groupby(level="hour"):
        rate, threshold = est.loc[hour, "rate"], est.loc[hour, "threshold"]
        assert threshold == pytest.approx(BUDGET["heavy_share"] * t.total.iloc[0], rel=1e-12)
        heavy = t.n >= threshold
        light = t[~heavy]
        # R is a bucket edge 2^(b/32): the largest at which the light rows fit.
        b = round(math.log2(rate) * ae_sql.BUCKETS_PER_OCTAVE)
        assert rate == pytest.approx(ae_sql.bucket_edge(b), rel=1e-12)
        room = allowed - t.rows[heavy].sum()
        assert light.rows[light.hash < rate].sum() <= room
        assert light.rows[light.hash < ae_sql.bucket_edge(b + 1)].sum() > room
        # The heavy keys recorded are exactly those of the raw events.
        stored = set(heavy_stored[heavy_stored.lo == hour].key)
        assert stored == set(t[heavy].index.get_level_values("key"))
        rates[hour] = rate
    want = _expected(truth, BUDGET["heavy_share"], rates)
    got = _stored_per_key(cfg.store.path)
    assert list(got.index) == list(want.sort_index().index)  # no key missing, none twice
    pd.testing.assert_frame_equal(
        got[COUNTS], want.sort_index()[COUNTS], check_dtype=False, rtol=1e-9
    )


def test_estimated_totals_per_class_are_unbiased_within_four_standard_errors(sim, emu, tmp_path):
    """Per endpoint and per tier, the stored total (heavy exact + sampled
    weighted) against the true total, within 4 standard errors of the
    hash-sample estimator, √((1 − R)/R · Σ n²) over the light keys."""
    _, df = sim
    cfg = _pull(emu, tmp_path / "u.duckdb", **BUDGET)
    truth = _truth_per_key(df)
    est, _ = _estimates(cfg.store.path)
    rate = pd.Series(
        [est.loc[h, "rate"] for h in truth.index.get_level_values("hour")], index=truth.index
    )
    light = truth.n < BUDGET["heavy_share"] * truth.total
    endpoint = (
        _requests(df).groupby(["hour", "key"]).endpoint.first().reindex(truth.index).to_numpy()
    )
    got = _stored_per_key(cfg.store.path)
    got_endpoint = got.index.get_level_values("key").str.split(":").str[1]
    for ep in ("title", "isbn", "author"):
        for tier in ("edge", "kv", "api"):
            mask = endpoint == ep
            true_total = truth.loc[mask, tier].sum()
            n = truth.loc[mask & light, tier]
            r = rate[mask & light]
            se = math.sqrt(((1 - r) / r * n**2).sum())
            stored = got.loc[got_endpoint == ep, tier].sum()
            assert abs(stored - true_total) <= 4 * se + 1e-9, (ep, tier, stored, true_total, se)


def test_under_the_budget_the_rate_is_one_and_the_store_equals_the_exact_pull(
    emu, tmp_path, caplog
):
    with caplog.at_level(logging.INFO, logger="cachemon.ingest"):
        exact = _pull(emu, tmp_path / "e.duckdb", key_hash="")
    assert "no [columns] key_hash, so per-key rows are pulled exactly" in caplog.text
    before = len(emu.requests)
    budgeted = _pull(emu, tmp_path / "k.duckdb")  # the default budget: the seed's volume fits
    assert not [sql for sql in emu.requests[before:] if _sampled_rows_query(sql)]
    pd.testing.assert_frame_equal(
        _stored_per_key(budgeted.store.path), _stored_per_key(exact.store.path)
    )
    est, heavy = _estimates(budgeted.store.path)
    assert est.empty and heavy.empty
    with store_db.reader(budgeted.store.path) as con:
        m = metrics_window.compute(con, Window(T0, END), "3h", top=10)
    assert m.top_keys and all(k.exact and k.sample_rate is None for k in m.top_keys)


def test_metrics_says_which_top_keys_are_exact_and_the_rate_of_the_others(sim, emu, tmp_path):
    _, df = sim
    cfg = _pull(emu, tmp_path / "m.duckdb", key_budget=24 * 900, heavy_share=0.01)
    truth = _truth_per_key(df)
    est, _ = _estimates(cfg.store.path)
    heavy_hours = (truth.n >= 0.01 * truth.total).groupby(level="key").sum()
    with store_db.reader(cfg.store.path) as con:
        m = metrics_window.compute(con, Window(T0, END), "3h", top=40)
    doc = metrics_window.to_json(m)
    assert {k.exact for k in m.top_keys} == {True, False}  # the test sees both kinds
    for k, j in zip(m.top_keys, doc["topKeys"], strict=True):
        exact = heavy_hours.get(k.key, 0) == HOURS  # heavy in every window of the span
        assert (j["exact"], k.exact) == (exact, exact), k.key
        if exact:
            assert j["sampleRate"] is None
            assert k.requests == truth.xs(k.key, level="key").n.sum()
        else:
            hours = truth.xs(k.key, level="key")
            light = hours.index[hours.n < 0.01 * hours.total]
            light = light.union(est.index.difference(hours.index))  # absent: not heavy there
            assert j["sampleRate"] == pytest.approx(est.loc[light, "rate"].min(), rel=1e-12)


def test_traffic_grows_tenfold_and_the_per_key_rows_stay_within_the_budget(tmp_path):
    """1× and 10× the test traffic (no Analytics Engine sampling, so the
    raw rows grow tenfold): the light keys' rows of every window stay
    within what the budget leaves, and the heavy keys within 1/heavy_share."""
    share, budget = 0.01, 24 * 1500
    rows = {}
    for scale in (1, 10):
        sim = small_sim(requests_per_hour=6000 * scale, sample_threshold_per_minute=1e9)
        parts, df = simulate(2, sim=sim)
        e = Emulator(TOKEN).start()
        try:
            for _, f in parts:
                e.add(f)
            cfg = _pull(e, tmp_path / f"{scale}.duckdb", key_budget=budget, heavy_share=share)
            answered = list(e.answered)
        finally:
            e.stop()
        truth = _truth_per_key(df[df.timestamp < T0 + 2 * HOUR])
        est, _ = _estimates(cfg.store.path)
        got = _stored_per_key(cfg.store.path)
        for hour, t in truth.groupby(level="hour"):
            heavy = t.n >= share * t.total
            assert heavy.sum() <= 1 / share
            stored = got.xs(hour, level="hour")
            light_rows = stored.rows[~stored.index.isin(t[heavy].index.get_level_values("key"))]
            assert light_rows.sum() <= max(budget / 24 - t.rows[heavy].sum(), 0)
        pulled = [n for sql, n, _ in answered if _sampled_rows_query(sql)]
        assert len(pulled) == 2 and all(n <= budget / 24 + 1 / share * 60 for n in pulled)
        rows[scale] = sum(pulled)
        assert (est.rate < 1).all()
    assert rows[10] <= 1.5 * rows[1]  # the pull follows the budget, not the traffic


def test_a_hash_column_that_is_not_the_hash_is_refused_for_key_rows(sim, tmp_path):
    e = Emulator(TOKEN).start()
    try:
        for _, f in sim[0]:
            e.add(f)
        # Values in [0, 1), but not cachemon's hash; no TTL sample rows to catch it first.
        e.db.execute("UPDATE CACHE_ANALYTICS SET double3 = double3 / 2")
        cfg = config.with_db(settings.Config(), str(tmp_path / "h.duckdb"))
        cfg = replace(
            cfg,
            columns=replace(cfg.columns, key_hash="double3"),
            analytics_engine=replace(cfg.analytics_engine, **BUDGET),
            ttl=replace(cfg.ttl, sample_rate=1e-9),
        )
        with pytest.raises(SourceError, match=r"does not hold cachemon's key hash: key"):
            ingest_load.pull(cfg, _client(e), END, since=T0, until=END)
        assert any(_sampled_rows_query(sql) for sql in e.requests)  # refused at the key rows
    finally:
        e.stop()
    with store_db.reader(tmp_path / "h.duckdb") as con:
        assert con.execute("SELECT count(*) FROM key_minute").fetchone()[0] == 0


@pytest.mark.parametrize(
    "text, message",
    [
        ("key_budget = 0", "key_budget = 0 must be a whole number of per-key rows a day"),
        ("key_budget = 1.5", "key_budget must be int"),
        ("heavy_share = 0", "heavy_share = 0.0 must be in"),
        ("heavy_share = 1.5", "heavy_share = 1.5 must be in"),
    ],
)
def test_a_bad_budget_is_a_config_error(tmp_path, text, message):
    error, _ = config_error(tmp_path, f"[analytics_engine]\n{text}\n")
    assert message in error and "[analytics_engine]" in error


@hsettings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    budget=st.integers(min_value=1, max_value=60_000),
    share=st.floats(min_value=0.0005, max_value=0.2),
    hour=st.integers(min_value=0, max_value=HOURS - 1),
)
def test_any_budget_and_threshold_keep_the_rows_and_count_each_key_once(
    sim, emu, budget, share, hour
):
    _, df = sim
    w = Window(T0 + hour * HOUR, T0 + (hour + 1) * HOUR)
    m = replace(settings.ColumnMapping(), key_hash="double3")
    kb = KeyBudget(budget, share)
    r = pull_rollups(_client(emu), emu.dataset, m, w, rollups.Sampling(0.1, 1e6), kb)
    truth = _truth_per_key(df[(df.timestamp >= w.start) & (df.timestamp < w.end)])
    keys = r.keys.to_pandas()
    assert not keys.duplicated(["key", "endpoint", "experiment", "cohort", "t"]).any()
    heavy = truth.n >= share * truth.total
    heavy_keys = set(truth[heavy].index.get_level_values("key"))
    assert len(heavy_keys) <= 1 / share
    light_rows = (~keys.key.isin(heavy_keys)).sum()
    assert light_rows <= max(kb.allowed(w) - truth.rows[heavy].sum(), 0)
    e = r.key_estimate
    if e is None:  # everything fits: every key exactly, as the raw events say
        assert keys.groupby("key")[COUNTS].sum().sum().sum() == pytest.approx(
            truth[COUNTS].sum().sum()
        )
        return
    assert set(e.heavy) == heavy_keys
    counted = keys.groupby("key")[COUNTS].sum()
    want = _expected(truth, share, {w.start: e.rate}).droplevel("hour")
    pd.testing.assert_frame_equal(
        counted.sort_index(), want.sort_index(), check_dtype=False, check_names=False, rtol=1e-9
    )


def test_the_metrics_command_marks_estimated_top_keys_in_json_and_on_stderr(emu, tmp_path):
    cfg = _pull(emu, tmp_path / "c.duckdb", key_budget=24 * 900, heavy_share=0.01)
    conf = tmp_path / "c.toml"
    conf.write_text("")
    env = dict(os.environ, CACHEMON_DB=cfg.store.path, CACHEMON_CONFIG=str(conf))
    args = ["metrics", "--period", "1h", "--at", "2026-11-19T11:00:00Z", "--top", "40"]
    p = subprocess.run(
        [sys.executable, "-m", "cachemon", *args], env=env, capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr
    top = json.loads(p.stdout)["topKeys"]
    est, _ = _estimates(cfg.store.path)
    rate = est.loc[pd.Timestamp(END - HOUR), "rate"]
    sampled = [k for k in top if not k["exact"]]
    assert sampled and all(k["sampleRate"] == pytest.approx(rate, rel=1e-12) for k in sampled)
    assert all(k["sampleRate"] is None for k in top if k["exact"])
    assert f"{len(sampled)} of {len(top)} top keys are estimated from a key sample" in p.stderr
