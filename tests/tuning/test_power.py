"""Days still needed (issue #20 §5): from the observed gain and variance, the
width of the confidence sequence the decision uses, and plain words when the
margin is out of reach; checked against an independent computation on raw
events (the delta method and the confidence-sequence width written out here)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachemon import config
from cachemon.clock import iso
from cachemon.store import db as store_db
from cachemon.tuning import analysis as tuning_analysis
from cachemon.tuning import power, results, stats
from tests.helpers import EXPERIMENT_TOML as CONFIG
from tests.helpers import T0, cachemon_cli, load, simulate

AT = T0 + timedelta(hours=6)
ALPHA = 0.05


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Six hours of the small simulator from the experiment's start (so no
    pre-period: CUPED's θ is 0 and the raw delta method is the truth)."""
    d = tmp_path_factory.mktemp("power")
    parts, truth = simulate(6)
    load(d / "t.duckdb", parts)
    (d / "e.toml").write_text(CONFIG.format(start=iso(T0)))
    cfg = config.with_db(config.load(d / "e.toml", env={}), str(d / "t.duckdb"))
    return cfg, truth, d


def _truth(truth, e):
    """Independently from raw events: the hit-rate gain (points), its per-key
    variance (points², delta method, keys as units) and the key counts."""
    req = truth[(truth.kind == "request") & (truth.experiment == e.name)]
    req = req.assign(h=np.where(req.tier.isin(["edge", "kv"]), req.sample_interval, 0.0))
    ratio, var, n = {}, {}, {}
    for c in ("control", "treatment"):
        g = req[req.cohort == c].groupby("key").agg(h=("h", "sum"), d=("sample_interval", "sum"))
        r = g.h.sum() / g.d.sum()
        resid = g.h.to_numpy() - r * g.d.to_numpy()  # linearised ratio, per key
        ratio[c], n[c] = r, len(g)
        var[c] = np.var(resid, ddof=1) / (len(g) * g.d.mean() ** 2)
    units = n["control"] + n["treatment"]
    gain = 100 * (ratio["treatment"] - ratio["control"])
    return gain, 1e4 * (var["control"] + var["treatment"]) * units, units


def _halfwidth(sigma2, n, tuning_n, alpha=ALPHA):
    """Waudby-Smith et al.'s asymptotic confidence sequence (GrowthBook's
    parametrisation), written out independently of `stats`."""
    rho2 = (-2 * np.log(alpha) + np.log(-2 * np.log(alpha) + 1)) / tuning_n
    return np.sqrt(sigma2) * np.sqrt(
        2 * (n * rho2 + 1) / (n**2 * rho2) * np.log(np.sqrt(n * rho2 + 1) / alpha)
    )


def _lower(gain, sigma2, units, days_so_far, planned, days):
    """The lower bound after `days` of data in all, keys growing at the rate so far."""
    grow = days / days_so_far
    return gain - _halfwidth(sigma2, units * grow, units * max(days, planned) / days_so_far)


def _analyse(cfg, e):
    with store_db.reader(cfg.store.path) as con:
        return tuning_analysis.analyze(con, e, AT, cfg.pricing)


def test_days_still_needed_clear_the_margin_and_one_day_fewer_do_not(store):
    cfg, truth, _ = store
    e = cfg.experiments[0]
    gain, sigma2, units = _truth(truth, e)
    d, planned = 0.25, 14.0
    h_now = _halfwidth(sigma2, units, units * planned / d)
    # A margin between the lower bound and the gain: reachable in a few days.
    e = replace(e, margin=gain - 0.4 * h_now)
    a = _analyse(cfg, e)
    o = a.comparisons[0].outlook
    hit = a.comparisons[0].metrics[0]
    assert hit.lower == pytest.approx(gain - h_now, rel=1e-9)
    assert o.lower == pytest.approx(hit.lower, rel=1e-12)  # the decision's own bound
    assert o.reach == power.Reach.WITHIN_PLAN and a.outlook == o
    k = o.days_more
    assert _lower(gain, sigma2, units, d, planned, d + k) > e.margin
    assert _lower(gain, sigma2, units, d, planned, d + k - 1) <= e.margin
    assert f"needs {k} more day" in o.text and o.headline == str(k)


def test_the_margin_above_the_gain_is_out_of_reach_in_plain_words(store):
    """The issue's case: an interval like [0.38, 1.16] that has to clear 2
    gets no number of days, and says why."""
    cfg, truth, _ = store
    gain, _, _ = _truth(truth, cfg.experiments[0])
    a = _analyse(cfg, replace(cfg.experiments[0], margin=gain + 0.1))
    o = a.outlook
    assert o.days_more is None and o.reach == power.Reach.GAIN_BELOW_MARGIN
    assert o.headline == "out of reach"
    assert o.text.startswith("out of reach") and "not above the" in o.text
    assert o.line == o.text and o.line.count("out of reach") == 1  # the headline once
    assert a.decision == "inconclusive"


def test_a_margin_just_under_the_gain_is_out_of_reach_at_this_traffic(store):
    cfg, truth, _ = store
    e = cfg.experiments[0]
    gain, sigma2, units = _truth(truth, e)
    margin = gain - 1e-3 * _halfwidth(sigma2, units, units * 14 / 0.25)
    o = _analyse(cfg, replace(e, margin=margin)).outlook
    assert o.reach == power.Reach.TOO_SLOW and o.days_more is None
    assert _lower(gain, sigma2, units, 0.25, 14.0, 0.25 + power.MAX_DAYS) <= margin
    assert f"more than {power.MAX_DAYS} more days" in o.text


def test_days_past_the_planned_end_say_the_duration_to_set(store):
    cfg, truth, _ = store
    e = cfg.experiments[0]
    gain, sigma2, units = _truth(truth, e)
    # A 7-hour experiment analysed at 6 h: N* is tuned for 7 h of keys.
    d, planned = 0.25, 7 / 24
    h_now = _halfwidth(sigma2, units, units * planned / d)
    e = replace(e, duration=timedelta(hours=7), margin=gain - 0.4 * h_now)
    o = _analyse(cfg, e).outlook
    assert o.reach == power.Reach.PAST_END
    k = o.days_more
    assert _lower(gain, sigma2, units, d, planned, d + k) > e.margin
    assert _lower(gain, sigma2, units, d, planned, d + k - 1) <= e.margin
    assert f"the duration must be at least {math.ceil(d + k)}d" in o.text
    assert o.headline == f"{k} (past the planned end)"


def test_a_cleared_margin_needs_no_more_days(store):
    cfg, truth, _ = store
    gain, sigma2, units = _truth(truth, cfg.experiments[0])
    lower = gain - _halfwidth(sigma2, units, units * 14 / 0.25)
    o = _analyse(cfg, replace(cfg.experiments[0], margin=lower - 0.5)).outlook
    assert (o.reach, o.days_more, o.headline) == (power.Reach.CLEARED, 0, "0 (cleared)")


@settings(max_examples=200, deadline=None)
@given(
    gain=st.floats(0.1, 10),
    sigma2=st.floats(1, 5e4),
    units=st.integers(150, 200_000),
    days_so_far=st.floats(0.05, 30),
    planned=st.floats(1, 60),
    share=st.floats(0.0, 0.999),
)
def test_outlook_is_the_first_day_the_projected_bound_clears(
    gain, sigma2, units, days_so_far, planned, share
):
    """For any gain, variance, traffic and margin below the gain: the
    outlook's day clears the margin by the independent formula, the day
    before does not (or none within MAX_DAYS does)."""
    margin = share * gain
    diff = stats.Difference(gain / 100, sigma2 / units / 1e4, units)
    o = power.outlook("t", diff, ALPHA, margin, days_so_far, planned, units)
    plan = max(planned, days_so_far)
    now = _lower(gain, sigma2, units, days_so_far, plan, days_so_far)
    assert o.lower == pytest.approx(now, rel=1e-9, abs=1e-9)
    if o.reach == power.Reach.CLEARED:
        assert now > margin
    elif o.days_more is None:
        assert o.reach == power.Reach.TOO_SLOW
        assert _lower(gain, sigma2, units, days_so_far, plan, days_so_far + power.MAX_DAYS) <= (
            margin * (1 + 1e-9)
        )
    else:
        k = o.days_more
        assert _lower(gain, sigma2, units, days_so_far, plan, days_so_far + k) > margin * (1 - 1e-9)
        assert _lower(gain, sigma2, units, days_so_far, plan, days_so_far + k - 1) <= margin * (
            1 + 1e-9
        )
        assert (o.reach == power.Reach.PAST_END) == (days_so_far + k > plan + 1e-9)


def test_outlook_refuses_no_days():
    diff = stats.Difference(0.03, 1e-5, 1000)
    with pytest.raises(ValueError, match="days so far"):
        power.outlook("t", diff, ALPHA, 2.0, 0.0, 14.0, 1000)


def test_the_stored_result_keeps_the_outlook_and_reads_old_rows(store, tmp_path):
    cfg, _, _ = store
    a = _analyse(cfg, cfg.experiments[0])
    db = tmp_path / "copy.duckdb"
    db.write_bytes(open(cfg.store.path, "rb").read())
    with store_db.writer(db, AT) as con:
        results.save(con, a)
        raw = results.history(con, a.experiment)[-1]["result"]
        back = results.stored(con, a.experiment)[-1].analysis
    assert back.outlook == a.outlook and back.comparisons == a.comparisons
    assert raw["comparisons"][0]["outlook"]["text"] == a.outlook.text
    # An analysis stored before the outlook existed (with the old `days_needed`).
    old = json.loads(json.dumps(raw))
    old["days_needed"] = 2
    del old["comparisons"][0]["outlook"]
    assert tuning_analysis.Analysis.from_json(old).outlook is None


def test_cli_shows_the_days_still_needed(store):
    cfg, _, d = store

    def cli(*args):
        return cachemon_cli(cfg.store.path, d / "e.toml", *args)

    out = json.loads(cli("experiments", "analyze", "--at", iso(AT)))
    want = _analyse(cfg, cfg.experiments[0]).outlook
    assert out[0]["comparisons"][0]["outlook"]["text"] == want.text
    listed = cli("experiments", "list")  # now is after the start
    assert f"days still needed: (analysis of {iso(AT)}) treatment: {want.headline}" in listed
    assert want.text in listed
