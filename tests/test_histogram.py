import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cachemon.histogram import ALPHA, ZERO_BUCKET, Histogram, bucket_of, bucket_value
from tests.helpers import weighted_quantile


@given(st.floats(min_value=1e-6, max_value=1e7, allow_nan=False))
def test_bucket_value_within_alpha(v):
    rep = bucket_value(bucket_of(np.array([v])))[0]
    assert abs(rep - v) / v <= ALPHA + 1e-12


def test_zero_latency_has_its_own_bucket():
    b = bucket_of(np.array([0.0, 0.5]))
    assert b[0] == ZERO_BUCKET and b[1] != ZERO_BUCKET
    assert bucket_value(b)[0] == 0.0


def _hist(values, weights):
    b = bucket_of(values)
    uniq, inv = np.unique(b, return_inverse=True)
    return Histogram.from_pairs(uniq, np.bincount(inv, weights=weights))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(min_value=0.01, max_value=5000), min_size=1, max_size=300),
    st.integers(min_value=0, max_value=2**31),
    st.sampled_from([0.5, 0.95, 0.99]),
)
def test_quantile_within_alpha_of_weighted_truth(values, seed, q):
    rng = np.random.default_rng(seed)
    values = np.array(values)
    weights = rng.integers(1, 9, len(values)).astype(float)
    truth = weighted_quantile(values, weights, q)
    got = _hist(values, weights).quantile(q)
    assert abs(got - truth) / truth <= ALPHA + 1e-9


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(min_value=0.01, max_value=5000), min_size=2, max_size=200), st.data())
def test_merged_histograms_equal_whole_set(values, data):
    """Merging is adding counts: any split of the data gives the same quantiles."""
    cut = data.draw(st.integers(min_value=1, max_value=len(values) - 1))
    a, b = np.array(values[:cut]), np.array(values[cut:])
    ha, hb = _hist(a, np.ones(len(a))), _hist(b, np.ones(len(b)))
    merged = Histogram.from_pairs(ha.buckets + hb.buckets, ha.counts + hb.counts)
    whole = _hist(np.array(values), np.ones(len(values)))
    for q in (0.5, 0.95, 0.99):
        assert merged.quantile(q) == whole.quantile(q)


def test_empty_histogram_has_no_quantile():
    assert Histogram((), ()).quantile(0.5) is None
