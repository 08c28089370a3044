"""The one TTL recommendation per endpoint (`costs.optimize.ttl_choices`),
the what-if's default candidates up to the staleness limit, its check of
the recommended TTL and the running-experiment guard, against truth
recomputed from raw events and plain arithmetic."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachemon import settings
from cachemon.clock import DAY, HOUR, MINUTE, Window
from cachemon.costs import optimize
from cachemon.errors import InputError
from cachemon.store import db as store_db
from cachemon.tuning import whatif as tuning_whatif
from cachemon.tuning.experiments import Cohort, Experiment
from tests.helpers import T0, load, simulate, small_sim

START = T0 - timedelta(days=10)
AT = T0 + timedelta(hours=2)
DAYS = (AT - START) / DAY
CURRENT = dict(settings.KV_TTL)

durations = st.integers(60, 365 * 86400).map(lambda s: timedelta(seconds=s))


@given(current=durations, limit=durations)
def test_default_candidates_reach_the_staleness_limit(current, limit):
    """Candidates go up to the staleness limit by default (the limit itself
    included), never past it, and include every option the recommendation
    weighs, so the what-if always predicts what the Costs rule may pick."""
    got = tuning_whatif.default_candidates(current, limit)
    assert got == sorted(set(got))
    assert max(got) == limit and all(t <= limit for t in got)
    weighed = {min(current * f, limit) for f in (1, 2, 4, 7, 14, 30)}
    assert weighed <= set(got)
    assert {timedelta(hours=h) for h in (6, 12, 24, 48, 168) if timedelta(hours=h) <= limit} <= set(
        got
    )


def test_default_candidates_of_the_seed_endpoints():
    """The case of the issue: author runs 1w; its candidates reach 30d."""
    got = tuning_whatif.default_candidates(CURRENT["author"], timedelta(days=30))
    assert [t / DAY for t in got] == [0.25, 0.5, 1, 2, 7, 14, 28, 30]


def _truth(df: pd.DataFrame) -> pd.DataFrame:
    """Per key, from raw events: tier counts, failed fills, class."""
    req = df[df.kind == "request"].copy()
    w = req.sample_interval
    for tier in ("edge", "kv", "r2", "api"):
        req[tier] = np.where(req.tier == tier, w, 0.0)
    failed = (req.status == "error") & req.tier.isin(["r2", "api"])
    req["fill_errors"] = np.where(failed, w, 0.0)
    g = req.groupby(["key", "endpoint"])[["edge", "kv", "r2", "api", "fill_errors"]].sum()
    g = g.reset_index()
    g["requests"] = g[["edge", "kv", "r2", "api"]].sum(axis=1)
    per_day = g.requests / DAYS
    g["cls"] = np.where(per_day > 100, "hot", np.where(per_day < 10 / 30, "cold", "warm"))
    return g


def _best(g: pd.DataFrame, current: timedelta, limit: timedelta) -> tuple[timedelta, float]:
    """The rule recomputed: warm keys whose fills cost more than their KV
    hits (list prices), each option's cost by λT/(1+λT), the cheapest."""
    fills = g.r2 + g.api - g.fill_errors
    churn = g[(g.cls == "warm") & (fills * 5.0 > g.kv * 0.50)]
    lam = ((churn.kv + churn.r2 + churn.api) / DAYS).to_numpy()
    missed = (churn.r2 + churn.api).to_numpy()
    r2_share = churn.r2.to_numpy() / missed
    written = (fills[churn.index] / missed).to_numpy()

    def cost(t: timedelta) -> float:
        d = t / DAY
        misses = lam / (1 + lam * d)
        return float(
            (
                lam * 0.50 / 1e6
                + misses * written * 5.0 / 1e6
                + misses * r2_share * 0.36 / 1e6
                + lam * d / (1 + lam * d) * 600 / 1e9 * 0.50 / 30
            ).sum()
        )

    if churn.empty:
        return current, 0.0
    options = sorted({min(current * f, limit) for f in (1, 2, 4, 7, 14, 30)})
    best = min(options, key=cost)
    saving = cost(current) - cost(best)
    return (best, saving) if best != current and saving > 0 else (current, 0.0)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("rule") / "r.duckdb"
    over = {"requests_per_hour": 40_000, "sample_threshold_per_minute": 1e6, "colos": 30}
    early, df1 = simulate(2, start=START, sim=small_sim(**over))
    late, df2 = simulate(2, start=T0, sim=small_sim(**over))
    load(path, early + late, now=AT)
    return path, _truth(pd.concat([df1, df2]))


@pytest.mark.parametrize("limit", [timedelta(days=30), timedelta(days=7), timedelta(hours=12)])
def test_the_one_rule_per_endpoint_matches_raw_events(store, limit):
    """Each endpoint's recommended TTL and saving equal the rule recomputed
    from raw events, and the Costs recommendation says exactly those TTLs.
    A limit below an endpoint's current TTL (isbn runs 30d) is no error."""
    path, truth = store
    cfg = settings.Config()
    cfg = replace(cfg, costs=replace(cfg.costs, max_kv_ttl=limit))
    window = Window(AT - timedelta(days=30), AT)
    with store_db.reader(path) as con:
        choices = optimize.recommended_ttls(con, cfg, window, AT)
        _, _, recs = optimize.recommend(con, cfg, AT, window)
    assert set(choices) == set(CURRENT)
    action = next((r.action for r in recs if r.type == optimize.Kind.TTL_TUNING), "")
    for endpoint, current in CURRENT.items():
        best, saving = _best(truth[truth.endpoint == endpoint], current, limit)
        c = choices[endpoint]
        assert (c.current, c.recommended) == (current, best)
        assert c.saving == pytest.approx(saving, rel=1e-9, abs=1e-15)
        assert (f"{endpoint} KV TTL" in action) == (best != current)
    if limit == timedelta(days=30):
        # The case of the issue: author (1w) is recommended past a week.
        assert choices["author"].recommended > timedelta(days=7)
    if limit == timedelta(hours=12):
        # Every option is shorter than title's and isbn's TTLs, and dearer: kept.
        assert not any(c.changes for c in choices.values())


def _pred(ttl: timedelta, cost: float, warm: bool = True) -> tuning_whatif.Prediction:
    return tuning_whatif.Prediction("title", ttl, 10.0 + cost, 50.0, 1, 1, 1, 0.1, cost, 0.1, warm)


def test_check_says_whether_the_what_if_confirms_a_ttl():
    """Cheaper than the current TTL: agrees; dearer: disagrees; longer than
    the warm-up or not asked: unchecked (never a silent verdict)."""
    cur = _pred(DAY, 5.0)
    w = tuning_whatif.WhatIf(
        "title",
        Window(T0, T0 + DAY),
        1.0,
        DAY,
        13.0,
        cur,
        (_pred(2 * DAY, 4.0), _pred(7 * DAY, 6.0), _pred(30 * DAY, 1.0, warm=False)),
    )
    cases = {
        DAY: (tuning_whatif.KEEP, 0.0),
        2 * DAY: (tuning_whatif.AGREES, -1.0),
        7 * DAY: (tuning_whatif.DISAGREES, 1.0),
        30 * DAY: (tuning_whatif.UNCHECKED, -4.0),
    }
    for ttl, (verdict, change) in cases.items():
        ck = tuning_whatif.check(w, ttl)
        assert (ck.verdict, ck.cost_change) == (verdict, change)
        assert ck.prediction is not None and ck.prediction.ttl == ttl
    missing = tuning_whatif.check(w, 14 * DAY)
    assert missing.verdict == tuning_whatif.UNCHECKED and missing.prediction is None


def test_running_experiments_are_those_covering_now():
    """An experiment on the endpoint that started and has not ended runs;
    one that ended, one not started and one on another endpoint do not."""
    cohorts = (Cohort("control", DAY, 0.5), Cohort("treatment", 2 * DAY, 0.5))

    def x(name, endpoint, start, duration=14 * DAY):
        return Experiment(name, endpoint, cohorts, start, duration)

    now = T0
    exps = (
        x("running", "title", now - 3 * DAY),
        x("starts-now", "title", now),
        x("ended", "title", now - 15 * DAY),
        x("ends-now", "title", now - 14 * DAY),
        x("future", "title", now + MINUTE),
        x("other", "author", now - HOUR),
    )
    cfg = replace(settings.Config(), experiments=exps)
    got = [e.name for e in tuning_whatif.running_experiments(cfg, "title", now)]
    assert got == [
        e.name for e in exps if e.endpoint == "title" and e.start <= now < e.start + e.duration
    ]
    assert got == ["running", "starts-now"]
    assert tuning_whatif.running_experiments(cfg, "isbn", now) == []


@pytest.mark.parametrize(
    "text,error",
    [
        ("400d", "Max staleness 400d: a TTL must be between 60s and 365d"),
        ("30s", "Max staleness 30s: a TTL must be between 60s and 365d"),
        ("7d,30d", "Max staleness takes one duration"),
        ("soon", "Max staleness: 'soon' is not a duration"),
    ],
)
def test_a_staleness_limit_is_one_ttl_kv_accepts(text, error):
    with pytest.raises(InputError, match=re.escape(error)):
        tuning_whatif.parse_staleness(text, "Max staleness")
    assert tuning_whatif.parse_staleness(" 30d ", "Max staleness") == timedelta(days=30)
