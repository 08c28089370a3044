"""The tier-mix cost rule in one place: every consumer (measured usage, the
experiment's per-key cost, the optimiser's churn query and TTL cost, the
TTL what-if) gives the figures an independent numpy computation gives on
the same tier counts.

The rule, written out here on purpose (not imported): a KV read for every
request the edge did not serve; a KV write for every fill after an R2
rehydration or an origin answer, unless it failed; an R2 get per
rehydration. Prices are the default list prices, per million:
Workers 0.30, KV reads 0.50, KV writes 5.00, R2 Class B 0.36.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from cachemon import pricing, settings
from cachemon.clock import DAY, Window
from cachemon.costs import optimize
from cachemon.costs import usage as costs_usage
from cachemon.costs.tiermix import TierMix, kv_writes_sql
from cachemon.events import validate
from cachemon.ingest import write as ingest_write
from cachemon.store import db as store_db
from cachemon.tuning import analysis, keyadvice, keyrates, whatif
from cachemon.tuning.experiments import Cohort, Experiment

DAY0 = datetime(2026, 11, 19, tzinfo=UTC)
WINDOW = Window(DAY0, DAY0 + DAY)
AT = WINDOW.end
PER_M = {"workers": 0.30e-6, "reads": 0.50e-6, "writes": 5.00e-6, "r2": 0.36e-6}
EXPERIMENT = Experiment(
    "mix",
    "title",
    (Cohort("control", timedelta(hours=24), 0.5), Cohort("treatment", timedelta(hours=48), 0.5)),
    DAY0,
)


def _counts(seed: int = 3, keys: int = 40) -> pd.DataFrame:
    """Per key: requests by tier and failed fills (errors on r2 and api
    answers only, as a Worker has them: a cached answer does not fail),
    each with a sampling weight. Half the keys are R2-backed."""
    rng = np.random.default_rng(seed)
    archived = np.arange(keys) % 2 == 0
    df = pd.DataFrame(
        {
            "key": [f"search:title:q=k{i}" for i in range(keys)],
            "cohort": np.where(np.arange(keys) % 4 < 2, "control", "treatment"),
            "weight": rng.choice([1.0, 2.0], keys),
            "edge": rng.integers(5, 30, keys),
            "kv": rng.integers(2, 12, keys),
            "r2": np.where(archived, rng.integers(1, 6, keys), 0),
            "api": np.where(archived, 0, rng.integers(1, 6, keys)),
        }
    )
    df["r2_err"] = np.minimum(rng.integers(0, 2, keys), df.r2)
    df["api_err"] = np.minimum(rng.integers(0, 3, keys), df.api)
    return df


def _events(df: pd.DataFrame) -> pa.Table:
    rows = []
    for k in df.itertuples():
        for tier in ("edge", "kv", "r2", "api"):
            n = int(getattr(k, tier))
            failed = int(getattr(k, f"{tier}_err", 0))
            rows += [
                (k.key, k.cohort, tier, "error" if i < failed else "ok", k.weight) for i in range(n)
            ]
    n = len(rows)
    # Spread over the day (first and last minute included), so the data covers it.
    seconds = np.linspace(0, DAY.total_seconds() - 1, n).astype(int)
    key, cohort, tier, status, weight = zip(*rows)
    order = np.random.default_rng(1).permutation(n)
    return pa.table(
        {
            "timestamp": [DAY0 + timedelta(seconds=int(s)) for s in seconds],
            "tier": [tier[i] for i in order],
            "key": [key[i] for i in order],
            "endpoint": ["title"] * n,
            "experiment": ["mix"] * n,
            "cohort": [cohort[i] for i in order],
            "status": [status[i] for i in order],
            "latency_ms": [10.0] * n,
            "sample_interval": [weight[i] for i in order],
        }
    )


def _truth(df: pd.DataFrame) -> pd.DataFrame:
    """Weighted per-key counts and the rule's figures, in numpy."""
    w = df.weight.to_numpy()
    t = pd.DataFrame({"key": df.key, "cohort": df.cohort})
    for c in ("edge", "kv", "r2", "api"):
        t[c] = df[c].to_numpy() * w
    t["failed"] = (df.r2_err + df.api_err).to_numpy() * w
    t["requests"] = t.edge + t.kv + t.r2 + t.api
    t["reads"] = t.requests - t.edge
    t["writes"] = t.r2 + t.api - t.failed
    t["cost"] = (
        t.requests * PER_M["workers"]
        + t.reads * PER_M["reads"]
        + t.writes * PER_M["writes"]
        + t.r2 * PER_M["r2"]
    )
    return t


@pytest.fixture(scope="module")
def mix_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiermix") / "m.duckdb"
    df = _counts()
    frame = validate(_events(df), "tiermix")
    with store_db.writer(path, AT) as con:
        ingest_write.replace_window(con, frame, "simulator", WINDOW, AT)
    return path, _truth(df)


def test_tiermix_is_the_rule_elementwise():
    edge, kv, r2, api, failed = (
        np.array(v, float) for v in ([5, 0], [3, 1], [2, 0], [4, 1], [1, 1])
    )
    mix = TierMix(edge, kv, r2, api, failed)
    assert list(mix.kv_reads) == [9, 2] and list(mix.kv_writes) == [5, 0]
    assert list(mix.r2_reads) == [2, 0] and list(mix.requests) == [14, 2]
    assert mix.cost(pricing.default()) == pytest.approx(
        np.array([9, 2]) * PER_M["reads"]
        + np.array([5, 0]) * PER_M["writes"]
        + np.array([2, 0]) * PER_M["r2"]
    )
    modelled = TierMix.from_misses(100.0, 40.0, 0.25, 0.05)
    assert (modelled.kv, modelled.r2, modelled.api) == (60.0, 10.0, 30.0)
    assert modelled.kv_writes == pytest.approx(40 * 0.95) and modelled.kv_reads == 100.0


def test_measured_usage_follows_the_rule(mix_store):
    path, t = mix_store
    with store_db.reader(path) as con:
        u = costs_usage.measure(con, WINDOW, settings.Config())
    assert u.workers_requests == pytest.approx(t.requests.sum())
    assert u.kv_reads == pytest.approx(t.reads.sum())
    assert u.kv_writes == pytest.approx(t.writes.sum())
    assert u.r2_class_b == pytest.approx(t.r2.sum())


def test_experiment_cost_per_key_follows_the_rule(mix_store):
    path, t = mix_store
    with store_db.reader(path) as con:
        data = analysis.per_key(con, EXPERIMENT, WINDOW, pricing.default())
    for cohort, g in t.groupby("cohort"):
        got = sorted(zip(data[cohort]["requests"], data[cohort]["cost"]))
        want = sorted(zip(g.requests, g.cost))
        assert np.allclose(got, want)


def test_experiment_cost_takes_the_r2_flow(mix_store):
    """The guardrail's per-key cost with `[costs] r2_lookup = "every_kv_miss"`:
    an origin answer was an R2 get too."""
    path, t = mix_store
    with store_db.reader(path) as con:
        data = analysis.per_key(con, EXPERIMENT, WINDOW, pricing.default(), "every_kv_miss")
    for cohort, g in t.groupby("cohort"):
        got = sorted(zip(data[cohort]["requests"], data[cohort]["cost"]))
        want = sorted(zip(g.requests, g.cost + g.api * PER_M["r2"]))
        assert np.allclose(got, want, rtol=1e-12, atol=0)


def test_optimiser_churn_fills_follow_the_rule(mix_store):
    path, t = mix_store
    with store_db.reader(path) as con:
        optimize.load_keys(con, WINDOW, AT)
        # Every warm key with a fill churns when a read is free.
        classes = optimize.class_counts(con)
        churn = con.execute(optimize.WARM_CHURN, {"write": 1.0, "read": 0.0}).df()
    assert classes == {"warm": len(t)}
    want = t[t.writes > 0]
    assert len(churn) == len(want)
    assert np.allclose(
        sorted(zip(churn.r2, churn.api, churn.fills)), sorted(zip(want.r2, want.api, want.writes))
    )


def test_recommendations_take_the_configured_r2_flow(mix_store):
    path, _ = mix_store
    savings = {}
    for flow in ("rehydration", "every_kv_miss"):
        cfg = replace(settings.Config(), costs=settings.CostsConfig(r2_lookup=flow))
        with store_db.reader(path) as con:
            (rec,) = optimize.recommend(con, cfg, AT, WINDOW)[2]
            days = optimize.load_keys(con, WINDOW, AT)
            c = cfg.costs
            direct = optimize.ttl_tuning(
                con, days, cfg.pricing, dict(c.kv_ttl), c.max_kv_ttl, c.value_bytes, AT, flow
            )
        assert rec.type == optimize.Kind.TTL_TUNING and rec == direct
        savings[flow] = rec.saving_per_day
    # Origin answers are R2 gets too, so a longer TTL saves more.
    assert savings["every_kv_miss"] > savings["rehydration"]


def test_sql_rule_equals_the_python_rule():
    r2, api, failed = (
        np.array([3.0, 0.0, 2.0]),
        np.array([1.0, 4.0, 0.0]),
        np.array([1.0, 5.0, 2.0]),
    )
    con = duckdb.connect()
    df = pd.DataFrame({"r2": r2, "api": api, "fill_errors": failed})  # noqa: F841 (read by DuckDB)
    got = [r[0] for r in con.execute(f"SELECT {kv_writes_sql()} FROM df").fetchall()]
    assert got == list(TierMix(r2=r2, api=api, failed_fills=failed).kv_writes) == [3.0, 0.0, 0.0]


def test_optimiser_ttl_cost_follows_the_rule():
    lam = np.array([0.5, 3.0, 20.0])
    r2s, es, t = np.array([1.0, 0.0, 0.4]), np.array([0.0, 0.1, 0.02]), 2.0
    got = optimize.ttl_cost(lam, t, pricing.default(), 600.0, 30, r2s, es)
    misses = lam / (1 + lam * t)
    want = (
        lam * PER_M["reads"]
        + misses * (1 - es) * PER_M["writes"]
        + misses * r2s * PER_M["r2"]
        + lam * t / (1 + lam * t) * 600 / 1e9 * 0.50 / 30
    )
    assert got == pytest.approx(want)


def test_ttl_whatif_follows_the_rule(mix_store):
    path, t = mix_store
    cfg = settings.Config()
    with store_db.reader(path) as con:
        days = keyrates.load_window(con, WINDOW)
        r = keyrates.rates(con, "title", WINDOW, days)
    missed = t.r2.sum() + t.api.sum()
    assert r.r2_share == pytest.approx(t.r2.sum() / missed)
    assert r.error_share == pytest.approx(t.failed.sum() / missed)
    for ttl in (timedelta(hours=6), timedelta(days=2)):
        p = whatif.predict(r, ttl, cfg.pricing, 600.0, 30)
        hits = p.kv_hit_rate / 100 * r.requests
        misses = p.kv_reads - hits
        assert p.kv_reads == pytest.approx(t.reads.sum() / days)
        assert p.kv_writes == pytest.approx(misses * (1 - r.error_share))
        assert p.r2_reads == pytest.approx(misses * r.r2_share)
        assert p.cost == pytest.approx(
            p.kv_reads * PER_M["reads"]
            + p.kv_writes * PER_M["writes"]
            + p.r2_reads * PER_M["r2"]
            + p.stored_gb * 0.50 / 30
        )


def test_ttl_key_cost_follows_the_rule():
    mu, days, ttl = 12.0, 3.0, timedelta(hours=12)
    got = keyadvice.key_cost(mu, days, ttl, 0.3, 0.05, pricing.default(), 600.0, 30)
    n, d = mu * days, 0.5
    hits = n * (n - 1) / days**2 * d / (1 + mu * d)  # the model's unbiased μ² estimate
    misses = mu - hits
    want = (
        mu * PER_M["reads"]
        + misses * 0.95 * PER_M["writes"]
        + misses * 0.3 * PER_M["r2"]
        + mu * d / (1 + mu * d) * 600 / 1e9 * 0.50 / 30
    )
    assert got == pytest.approx(want)


def test_an_edge_error_writes_nothing_and_is_not_a_failed_fill(tmp_path):
    """Usage subtracts only the failed fills: before the rule had one home,
    `costs` subtracted every error (an edge error took a write away)."""
    path = tmp_path / "e.duckdb"
    rows = [
        ("edge", "error"),
        ("edge", "ok"),
        ("kv", "error"),
        ("r2", "ok"),
        ("api", "ok"),
        ("api", "error"),
    ]
    n = len(rows)
    table = pa.table(
        {
            "timestamp": [DAY0 + timedelta(minutes=i) for i in range(n)],
            "tier": [r[0] for r in rows],
            "key": ["search:title:q=x"] * n,
            "endpoint": ["title"] * n,
            "status": [r[1] for r in rows],
            "latency_ms": [5.0] * n,
        }
    )
    with store_db.writer(path, AT) as con:
        ingest_write.replace_window(con, validate(table, "t"), "simulator", WINDOW, AT)
    with store_db.reader(path) as con:
        u = costs_usage.measure(con, WINDOW, settings.Config())
    assert (u.kv_reads, u.kv_writes, u.r2_class_b) == (4.0, 2.0, 1.0)
