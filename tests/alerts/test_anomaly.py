"""Seasonal anomaly rules: the robust score, and a drift caught under the
static threshold on simulator traffic."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from scipy import stats

from cachemon import config
from cachemon.alerts import evaluate as alerts_evaluate
from cachemon.alerts.anomaly import WEEK, history_ends, robust_z
from cachemon.alerts.rules import effective_rules
from cachemon.notify.transports import Transports
from cachemon.store import db as store_db
from tests.helpers import T0, load, simulate, small_sim


def test_robust_z_matches_scipy_and_guards():
    rng = np.random.default_rng(3)
    h = list(rng.normal(95, 1, 27))
    mad = stats.median_abs_deviation(h, scale=1.0)
    assert robust_z(91.0, h) == pytest.approx(0.6745 * (91.0 - np.median(h)) / mad)
    # Over half the history identical: MAD is 0, the mean absolute deviation takes over.
    flat = [95.0] * 20 + [94.0, 96.0, 97.0]
    assert robust_z(93.0, flat) == pytest.approx(
        (93.0 - 95.0) / (1.253314 * np.mean(np.abs(np.array(flat) - 95.0)))
    )
    assert robust_z(93.0, [95.0] * 20) is None  # no spread at all: no score, not infinity
    assert robust_z(93.0, h[:5]) is None  # too little history
    assert robust_z(93.0, h[:10] + [None, float("nan")]) is not None


def test_history_is_the_same_minutes_of_earlier_weeks():
    ends = history_ends(T0, weeks=3)
    assert len(ends) == 27
    assert {w for w, _ in ends} == {1, 2, 3}
    assert min(e for w, e in ends if w == 1) == T0 - WEEK - timedelta(hours=1)
    assert max(e for w, e in ends if w == 3) == T0 - 3 * WEEK + timedelta(hours=1)


RULES = """
[alerts]
builtin_rules = false
[[alerts.rules]]
name = "hit_rate_drift"
kind = "anomaly"
metric = "combined_hit_rate"
direction = "below"
severity = "warning"
threshold = 3.5
weeks = 3
min_weeks = 2
[[alerts.rules]]
name = "miss_rate_warning"
metric = "miss_rate"
threshold = 10
severity = "warning"
"""


def test_drift_below_static_threshold_is_caught(tmp_path):
    """Three normal Thursdays, then one with 75 % more one-off searches: the
    hit rate sags a few points, still inside the static 10 % miss-rate
    threshold, but far outside its own history at that time of week."""
    at = T0 + timedelta(hours=2)  # Thursday 10:00
    db = tmp_path / "d.duckdb"
    for weeks_back in (3, 2, 1, 0):
        share = 0.04 if weeks_back else 0.07
        start = at - weeks_back * WEEK - timedelta(hours=2)
        parts, _ = simulate(3, start=start, sim=small_sim(long_tail_share=share))
        load(db, parts, now=start + timedelta(hours=3))
    p = tmp_path / "c.toml"
    p.write_text(RULES)
    cfg = config.with_db(config.load(p, env={}), str(db))
    with store_db.writer(db, at) as con:
        result = alerts_evaluate.run(con, cfg, at, Transports.from_env({}))
    by_rule = {s.rule: s for s in result.evaluation.states}
    drift, static = by_rule["hit_rate_drift"], by_rule["miss_rate_warning"]
    assert static.state == "ok" and static.value < 10
    assert drift.state == "firing" and "unusual for this time of week" in drift.message
    z = float(drift.message.split("robust z = ")[1].rstrip(")"))
    assert z <= -3.5
    # Three weeks earlier (no history yet): no data, never a silent ok.
    first = at - 3 * WEEK
    with store_db.reader(db) as con:
        states, _ = alerts_evaluate.evaluate(
            alerts_evaluate.Observer(con),
            effective_rules(cfg.alerts),
            first,
            {},
            cfg.metrics.stale_after,
            first,
        )
    assert states[0].state == "no_data" and "needs 2 weeks of history" in states[0].message
