"""The A/A and power bench through the product (`bench/bench_experiments_product.py`)
on a tiny case: its traffic reaches the daily job's analysis intact (against
the counts it generated), and that analysis promotes a large true gain and
not an A/A."""

from __future__ import annotations

import numpy as np
import pytest

from bench import bench_experiments_product as bench
from cachemon.clock import DAY
from cachemon.tuning.analysis import Decision

TINY = bench.Traffic(400, 6_000)
DAYS = 3


@pytest.mark.parametrize("effect", [0.01, 0.03, 0.1])
def test_the_treatment_gains_the_requested_points(effect):
    """Expected request-weighted hit rates, computed here from the keys'
    rates: the treatment's is `effect` higher."""
    lam, hit = bench.population(bench.Traffic(3_000, 8_000))
    g = bench.shrink(lam, hit, effect)
    treated = 1 - (1 - hit) * (1 - g)
    gain = np.average(treated, weights=lam) - np.average(hit, weights=lam)
    assert gain == pytest.approx(effect, rel=1e-12)


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    return {
        effect: bench.run_batch(d, TINY, effect, range(7, 9), days=DAYS) for effect in (0.0, 0.25)
    }


def test_the_daily_analysis_sees_the_generated_traffic(batches):
    for looks, truth in batches.values():
        for m in bench.MARGINS:
            assert set(looks[m]) == set(truth) == {f"{bench.NAME}-7", f"{bench.NAME}-8"}
            for name, tr in truth.items():
                runs = looks[m][name]
                assert [a.at for a in runs] == [bench.START + k * DAY for k in range(1, DAYS + 1)]
                last = runs[-1]
                assert dict(last.units) == {c: int(tr[c][2]) for c in ("control", "treatment")}
                hit = next(x for x in last.comparisons[0].metrics if x.metric == "hit_rate")
                assert hit.control == pytest.approx(100 * tr["control"][0] / tr["control"][1])
                assert hit.treatment == pytest.approx(100 * tr["treatment"][0] / tr["treatment"][1])
                assert last.comparisons[0].outlook is not None


def test_a_large_gain_is_promoted_and_an_a_a_is_not(batches):
    aa, gain = batches[0.0][0], batches[0.25][0]
    for m in bench.MARGINS:
        assert not any(bench.promoted(v) for v in aa[m].values())
        assert all(bench.promoted(v) for v in gain[m].values())
        assert all(v[-1].decision == Decision.WINNER for v in gain[m].values())
