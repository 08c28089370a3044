"""Experiment analysis from the store against raw-event truth; SRM blocks."""

from __future__ import annotations

import json
from datetime import timedelta

import duckdb
import numpy as np
import pytest

from cachemon import config
from cachemon.clock import iso
from cachemon.ingest import load as ingest_load
from cachemon.store import db as store_db
from cachemon.tuning import analysis as tuning_analysis
from cachemon.tuning import results, stats
from cachemon.usecases import demo
from tests.helpers import EXPERIMENT_TOML as CONFIG
from tests.helpers import T0, cachemon_cli, load, simulate

AT = T0 + timedelta(hours=6)


@pytest.fixture(scope="module")
def sim_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("tuning")
    parts, truth = simulate(6)
    load(d / "t.duckdb", parts)
    (d / "e.toml").write_text(CONFIG.format(start=iso(T0)))
    cfg = config.with_db(config.load(d / "e.toml", env={}), str(d / "t.duckdb"))
    return cfg, truth, d


def test_cohort_metrics_equal_raw_event_truth(sim_store):
    cfg, truth, _ = sim_store
    e = cfg.experiments[0]
    with store_db.reader(cfg.store.path) as con:
        a = tuning_analysis.analyze(con, e, AT, cfg.pricing)
    req = truth[(truth.kind == "request") & (truth.experiment == e.name)]
    assert dict(a.units) == req.groupby("cohort").key.nunique().to_dict()
    assert a.srm_p is not None and a.srm_p > 0.001  # the simulator assigns with the seed's own hash
    hit = next(m for m in a.comparisons[0].metrics if m.metric == "hit_rate")
    for cohort, got in (("control", hit.control), ("treatment", hit.treatment)):
        g = req[req.cohort == cohort]
        assert got == pytest.approx(
            100 * g[g.tier.isin(["edge", "kv"])].sample_interval.sum() / g.sample_interval.sum()
        )
    # The interval is the delta method's, per key, computed independently here.
    per_key = {
        c: req[req.cohort == c]
        .assign(h=lambda x: np.where(x.tier.isin(["edge", "kv"]), x.sample_interval, 0))
        .groupby("key")
        .agg(h=("h", "sum"), d=("sample_interval", "sum"))
        for c in ("control", "treatment")
    }
    diff = stats.Difference.of(
        stats.RatioStats.of(per_key["control"].h, per_key["control"].d),
        stats.RatioStats.of(per_key["treatment"].h, per_key["treatment"].d),
    )
    lo, hi = diff.sequence_interval(0.05, a.units[0][1] + a.units[1][1])
    assert hit.estimate == pytest.approx(100 * diff.estimate)
    width = (hit.upper - hit.lower) / 2
    assert width > 100 * (hi - lo) / 2  # tuned for the planned end (more keys), hence wider now
    assert a.decision in ("inconclusive", "winner", "loser") and a.outlook is not None


def test_results_hidden_until_a_minimum_sample(sim_store):
    cfg, _, _ = sim_store
    with store_db.reader(cfg.store.path) as con:
        a = tuning_analysis.analyze(
            # Three minutes: per-key minutes count exactly since issue 20 (ten
            # minutes already hold MIN_UNITS keys; the old store had none of them).
            con,
            cfg.experiments[0],
            T0 + timedelta(minutes=3),
            cfg.pricing,
        )
    assert a.decision == "collecting" and a.comparisons == ()


def test_sample_ratio_mismatch_blocks_the_decision(tmp_path):
    """Events whose cohort labels do not follow the allocation (the Worker
    dropped a third of the treatment's keys): no decision, and why."""
    rows = []
    for i in range(600):
        cohort = "control" if i < 400 else "treatment"
        for j in range(3):
            rows.append(
                {
                    "timestamp": iso(T0 + timedelta(minutes=i % 60, seconds=j)),
                    "tier": "edge" if j else "api",
                    "key": f"search:title:q=k{i}",
                    "endpoint": "title",
                    "latency_ms": 5.0,
                    "experiment": "extended-title-ttl",
                    "cohort": cohort,
                }
            )
    f = tmp_path / "skewed.ndjson"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "e.toml").write_text(CONFIG.format(start=iso(T0)))
    cfg = config.with_db(config.load(tmp_path / "e.toml", env={}), str(tmp_path / "s.duckdb"))
    ingest_load.import_files(cfg, [f], T0 + timedelta(hours=2))  # after the events
    with store_db.reader(cfg.store.path) as con:
        a = tuning_analysis.analyze(con, cfg.experiments[0], T0 + timedelta(hours=2), cfg.pricing)
    assert a.units == (("control", 400), ("treatment", 200))
    assert a.decision == "srm" and a.srm_p < 0.001 and a.comparisons == ()


def test_cli_analyze_stores_history(sim_store):
    cfg, _, d = sim_store
    for hours in (3, 6):
        out = cachemon_cli(
            cfg.store.path,
            d / "e.toml",
            *("experiments", "analyze", "--at", iso(T0 + timedelta(hours=hours))),
        )
        assert json.loads(out)[0]["experiment"] == "extended-title-ttl"
    with store_db.reader(cfg.store.path) as con:
        h = results.history(con, "extended-title-ttl")
    assert [r["result"]["at"] for r in h] == [
        iso(T0 + timedelta(hours=3)),
        iso(T0 + timedelta(hours=6)),
    ]


def test_plan_days_needed_from_recent_traffic(sim_store):
    cfg, truth, _ = sim_store
    e = cfg.experiments[0]
    with store_db.reader(cfg.store.path) as con:
        days = tuning_analysis.plan(con, e, AT)
    req = truth[(truth.kind == "request") & (truth.endpoint == "title")]
    per_key = (
        req.assign(h=np.where(req.tier.isin(["edge", "kv"]), req.sample_interval, 0.0))
        .groupby("key")
        .agg(h=("h", "sum"), d=("sample_interval", "sum"))
    )
    s = stats.RatioStats.of(per_key.h, per_key.d)
    unit_var = s.variance * s.n * (256 / 129 + 256 / 127) * 1e4
    per_day = s.n / 7
    assert days == stats.days_needed(unit_var, per_day, 3.0, 2.0, 0.05, per_day * 14)


def test_only_configured_metrics_are_guardrails(sim_store):
    from dataclasses import replace as dc_replace

    cfg, _, _ = sim_store
    e = dc_replace(cfg.experiments[0], metrics=("hit_rate", "error_rate"))
    with store_db.reader(cfg.store.path) as con:
        a = tuning_analysis.analyze(con, e, AT, cfg.pricing)
    assert [m.metric for m in a.comparisons[0].metrics] == ["hit_rate", "error_rate"]


def test_p95_variance_with_keys_as_units_matches_a_key_bootstrap(sim_store):
    """The tier-mix delta method for a cohort's p95 against a bootstrap over
    the cohort's keys on the raw events."""
    from cachemon.clock import Window
    from cachemon.tuning import quantile_var
    from tests.helpers import weighted_quantile

    cfg, truth, _ = sim_store
    e = cfg.experiments[0]
    window = Window(T0, AT)
    with store_db.reader(cfg.store.path) as con:
        data = tuning_analysis.per_key(con, e, window, cfg.pricing)["control"]
        lat = tuning_analysis._latency(con, e, window)["control"]
    var = quantile_var.quantile_variance(
        lat.p95, {t: data[t] for t in quantile_var.TIERS}, lat.tiers, lat.cdf, lat.weight_squares
    )
    req = truth[
        (truth.kind == "request") & (truth.experiment == e.name) & (truth.cohort == "control")
    ]
    assert lat.p95 == pytest.approx(
        weighted_quantile(req.latency_ms, req.sample_interval, 0.95), rel=0.01
    )
    groups = [
        (g.latency_ms.to_numpy(), g.sample_interval.to_numpy()) for _, g in req.groupby("key")
    ]
    rng = np.random.default_rng(4)
    boot = []
    for _ in range(400):
        pick = rng.integers(0, len(groups), len(groups))
        v = np.concatenate([groups[i][0] for i in pick])
        w = np.concatenate([groups[i][1] for i in pick])
        boot.append(weighted_quantile(v, w, 0.95))
    assert var == pytest.approx(np.var(boot, ddof=1), rel=0.25)


def test_demo_stores_the_daily_analyses_and_yesterdays_report(tmp_path):
    from dataclasses import replace

    from cachemon.costs import report
    from tests.helpers import SMALL

    end = T0 + timedelta(hours=30)  # 2026-11-20 14:00: slots 2026-11-19 and -20 04:00
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(CONFIG.format(start=iso(T0 - timedelta(hours=8))))
    cfg = replace(
        config.with_db(config.load(cfg_file, env={}), str(tmp_path / "d.duckdb")), simulator=SMALL
    )
    demo.demo(cfg, 38 / 24, end)
    with store_db.reader(cfg.store.path) as con:
        stored = results.history(con, "extended-title-ttl")
        expected = [
            tuning_analysis.analyze(con, cfg.experiments[0], at, cfg.pricing).to_json()
            for at in (T0 - timedelta(hours=4), T0 + timedelta(hours=20))
        ]
        reports = report.recent(con)
    got = [h["result"] for h in stored]
    want = json.loads(json.dumps(expected))
    for g, w in zip(got, want):  # aggregation order may change the last float digits
        for k in w:
            if k != "comparisons":
                assert g[k] == w[k], k
        metrics = lambda a: [m for c in a["comparisons"] for m in c["metrics"]]  # noqa: E731
        assert [c["decision"] for c in g["comparisons"]] == [
            c["decision"] for c in w["comparisons"]
        ]
        for gm, wm in zip(metrics(g), metrics(w), strict=True):
            assert gm == {
                k: pytest.approx(v, rel=1e-9) if isinstance(v, float) else v for k, v in wm.items()
            }
    assert len(got) == 2
    assert [r.day for r in reports] == [(end - timedelta(days=1)).date()] and not reports[0].sent


def test_decisions_are_typed_and_stored_analyses_read_back_typed(sim_store):
    """Decisions and statuses are enums whose values are the stored strings;
    a stored analysis reads back into the same dataclasses (no JSON keys)."""
    cfg, _, _ = sim_store
    e = cfg.experiments[0]
    with store_db.reader(cfg.store.path) as con:
        early = tuning_analysis.analyze(con, e, T0 + timedelta(minutes=3), cfg.pricing)
        a = tuning_analysis.analyze(con, e, AT, cfg.pricing)
    assert early.decision is tuning_analysis.Decision.COLLECTING and early.decision == "collecting"
    assert isinstance(a.decision, tuning_analysis.Decision) and a.comparisons
    assert all(isinstance(c.decision, tuning_analysis.Decision) for c in a.comparisons)
    assert a.srm_mismatch is False and a.srm_p >= stats.SRM_P
    assert tuning_analysis.status(e, T0 - timedelta(hours=1)) is tuning_analysis.Status.SCHEDULED
    assert (
        tuning_analysis.status(e, AT) == "running"
        and tuning_analysis.status(e, T0 + e.duration) == "ended"
    )
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE experiment_results (experiment VARCHAR, analyzed_at TIMESTAMPTZ,"
        " decision VARCHAR, payload VARCHAR)"
    )
    for x in (early, a):
        results.save(con, x)
    raw = con.execute("SELECT decision, payload FROM experiment_results").fetchall()
    assert [d for d, _ in raw] == [early.decision.value, a.decision.value]  # plain strings
    assert [json.loads(p)["decision"] for _, p in raw] == [str(early.decision), str(a.decision)]
    back = results.stored(con, e.name)
    assert [s.analysis for s in back] == [early, a]
    assert [s.decision for s in back] == [early.decision, a.decision]
    assert back[-1].analyzed_at == a.at and back[-1].analysis.srm_p == a.srm_p
