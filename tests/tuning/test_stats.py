"""Experiment statistics against independent computations on constructed data."""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from cachemon.tuning import stats
from cachemon.tuning.experiments import Cohort, Experiment


def _keys(rng, n, hit_rate):
    """Per-key requests (Zipf-ish) and hits with a per-key hit probability:
    requests of one key are correlated, as in a cache."""
    d = rng.zipf(1.6, n).clip(max=5000).astype(float)
    p = rng.beta(hit_rate * 8, (1 - hit_rate) * 8, n)
    return rng.binomial(d.astype(int), p).astype(float), d


def test_delta_method_agrees_with_a_bootstrap_over_keys():
    rng = np.random.default_rng(11)
    m, d = _keys(rng, 4000, 0.9)
    s = stats.RatioStats.of(m, d)
    assert s.ratio == pytest.approx(m.sum() / d.sum())
    idx = rng.integers(0, len(m), (2000, len(m)))
    boot = m[idx].sum(axis=1) / d[idx].sum(axis=1)
    assert s.variance == pytest.approx(boot.var(ddof=1), rel=0.10)
    # Pooling requests as if independent understates the variance badly.
    pooled = s.ratio * (1 - s.ratio) / d.sum()
    assert pooled < s.variance / 3


finite = st.floats(0, 1e4, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(finite, finite), min_size=2, max_size=40), st.integers(1, 39))
def test_merged_statistics_equal_whole_set_statistics(pairs, cut):
    cut = min(cut, len(pairs) - 1)
    m, d = zip(*pairs)
    whole = stats.RatioStats.of(m, d)
    merged = stats.RatioStats.of(m[:cut], d[:cut]) + stats.RatioStats.of(m[cut:], d[cut:])
    for field in ("n", "sum_m", "sum_d", "sum_m2", "sum_d2", "sum_md"):
        assert getattr(merged, field) == pytest.approx(getattr(whole, field), rel=1e-9, abs=1e-6)


def test_srm_against_the_schemes_real_allocation():
    """1 M keys under the seed's scheme: against a naive 50/50 the split looks
    broken; against its real 129/256 allocation it does not."""
    counts = [0, 0]
    for i in range(1_000_000):
        b = hashlib.sha256(f"search:title:q=k{i}extended-title-ttl".encode()).digest()[0] / 255
        counts[0 if b < 0.5 or b >= 1.0 else 1] += 1
    naive = stats.srm(counts, [0.5, 0.5])
    real = stats.srm(counts, [129 / 256, 127 / 256])
    assert naive.mismatch and naive.p_value < 1e-6
    assert not real.mismatch
    assert stats.srm([7, 100], [0.5, 0.5]) is None  # too few units to tell


def test_holm_by_hand():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5]) == [0.5]


def test_confidence_sequence_is_wider_than_fixed_and_holds_under_peeking():
    """A/A: 500 experiments looked at daily for 14 days. Stopping at the
    first daily fixed-horizon 'significant' result finds false winners far
    more often than 5 %; the confidence sequence stays under 5 %."""
    rng = np.random.default_rng(5)
    n_exp, days, per_day = 500, 14, 200
    fixed_hits = seq_hits = 0
    for _ in range(n_exp):
        m, d = _keys(rng, 2 * per_day * days, 0.9)
        arm = rng.integers(0, 2, len(m))
        fixed_fp = seq_fp = False
        for day in range(1, days + 1):
            upto = 2 * per_day * day
            c = stats.RatioStats.of(m[:upto][arm[:upto] == 0], d[:upto][arm[:upto] == 0])
            t = stats.RatioStats.of(m[:upto][arm[:upto] == 1], d[:upto][arm[:upto] == 1])
            diff = stats.Difference.of(c, t)
            lo, hi = diff.fixed_interval(0.05)
            fixed_fp |= lo > 0 or hi < 0
            lo, hi = diff.sequence_interval(0.05, tuning_n=2 * per_day * days)
            seq_fp |= lo > 0 or hi < 0
        fixed_hits += fixed_fp
        seq_hits += seq_fp
    assert seq_hits / n_exp <= 0.05
    assert fixed_hits / n_exp > 0.10  # the seed's daily fixed-horizon test: peeking inflates errors


def test_sequence_p_value_and_duration():
    d = stats.Difference(estimate=0.03, variance=0.0001, n=2000)
    p = d.sequence_p(2000)
    lo, _ = d.sequence_interval(p * 1.01, 2000)
    assert lo > 0 and d.sequence_interval(p * 0.99, 2000)[0] < 0
    assert (
        stats.days_needed(0.2, 1000, effect=0.03, margin=0.02, alpha=0.05, tuning_n=14_000)
        is not None
    )
    assert (
        stats.days_needed(0.2, 1000, effect=0.02, margin=0.02, alpha=0.05, tuning_n=14_000) is None
    )
    assert stats.cs_halfwidth(1.0, 1000, 1000, 0.05) > sps.norm.ppf(0.975) / math.sqrt(1000)


def test_experiment_defaults():
    e = Experiment(
        "x",
        "title",
        (Cohort("a", timedelta(hours=1), 0.5), Cohort("b", timedelta(hours=2), 0.5)),
        datetime(2026, 11, 1, tzinfo=UTC),
    )
    assert e.scheme == "sha256-u64" and e.margin == 2.0


def test_cuped_is_unbiased_and_cuts_variance():
    """Keys with stable, very different hit rates; the covariate is each
    key's pre-period rate. Over 200 replications of a +3-point effect the
    adjusted difference is centred near the truth (the pooled θ leaves a
    small-sample bias, here about 5 % of the effect with heavy-tailed keys),
    with a tenth of the spread."""
    rng = np.random.default_rng(9)
    n = 3000
    lam = rng.zipf(1.7, n).clip(max=3000).astype(float)
    base = rng.beta(2, 1, n)
    raw, adj = [], []
    for _ in range(200):
        arm = rng.integers(0, 2, n)
        p = np.where(
            arm == 1,
            1 - (1 - base) * (1 - 0.03 / float((lam * (1 - base)).sum() / lam.sum())),
            base,
        )
        pre_d = rng.poisson(lam * 3)
        pre_rate = np.where(
            pre_d > 0, rng.binomial(pre_d, base) / np.maximum(pre_d, 1), base.mean()
        )
        d = rng.poisson(lam).astype(float)
        m = rng.binomial(d.astype(int), p).astype(float)
        c, t = arm == 0, arm == 1
        theta, (mc, mt) = stats.cuped(
            [m[c], m[t]], [d[c], d[t]], [d[c] * pre_rate[c], d[t] * pre_rate[t]]
        )
        # θ is the least-squares slope of the linearised residuals, computed here with numpy.
        cov = d * pre_rate
        u, v = m - m.sum() / d.sum() * d, cov - cov.sum() / d.sum() * d
        assert theta == pytest.approx(np.linalg.lstsq(v[:, None], u, rcond=None)[0][0])
        raw.append(
            stats.Difference.of(
                stats.RatioStats.of(m[c], d[c]), stats.RatioStats.of(m[t], d[t])
            ).estimate
        )
        adj.append(
            stats.Difference.of(
                stats.RatioStats.of(mc, d[c]), stats.RatioStats.of(mt, d[t])
            ).estimate
        )
    raw, adj = np.array(raw), np.array(adj)
    assert abs(adj.mean() - 0.03) < 0.10 * 0.03
    assert abs(raw.mean() - 0.03) < 3 * raw.std() / math.sqrt(len(raw))
    assert adj.std() < raw.std() / 10
