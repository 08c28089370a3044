import decimal
import math

import duckdb
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachemon.histogram import (
    ALPHA,
    GAMMA,
    ZERO_BUCKET,
    Histogram,
    bucket_of,
    bucket_value,
    grouped_quantiles,
    one_bucket_value,
    sorted_quantiles,
)
from cachemon.store.views import VIEWS
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


# -- one window's quantiles in plain Python are numpy's, to the last bit --------------

# Quantiles a draw may ask for: the edges, the reported ones, and any in between.
QS = st.lists(
    st.sampled_from([0.0, 1.0, 0.5, 0.95, 0.99]) | st.floats(min_value=0, max_value=1),
    min_size=1,
    max_size=5,
)
# Weighted buckets as a window's rows: ties (a small bucket range, so buckets
# repeat and running sums meet), zero weights, one bucket; weights whole
# (sampled events) or fractional (1/rate weights).
WEIGHT = st.integers(min_value=0, max_value=20) | st.floats(min_value=0, max_value=50)
PAIRS = st.lists(
    st.tuples(st.integers(min_value=-5, max_value=5) | st.integers(-400, 900), WEIGHT),
    min_size=1,
    max_size=300,
)


def test_a_buckets_representative_is_one_rule_in_numpy_python_and_the_views():
    """bucket_value (arrays, any order) is one_bucket_value of each bucket;
    both equal the analyst views' v1.bucket_ms (DuckDB) bit for bit, and lie
    within a few units in the last place of 2γ^k/(1+γ) computed in 50 digits."""
    k = np.random.default_rng(7).permutation(np.arange(-36_000, 36_001))
    k = np.append(k, [ZERO_BUCKET, 40_000, -40_000])
    python = np.array([one_bucket_value(int(x)) for x in k])
    assert bucket_value(k).tobytes() == python.tobytes()
    con = duckdb.connect()
    con.execute(next(v for v in VIEWS if v.startswith("CREATE SCHEMA")))
    con.execute(next(v for v in VIEWS if "v1.bucket_ms" in v))
    views = con.execute("SELECT v1.bucket_ms(k) FROM unnest($k) t(k)", {"k": k.tolist()})
    assert np.array(views.fetchall())[:, 0].tobytes() == python.tobytes()
    with decimal.localcontext() as ctx:
        ctx.prec = 50
        g = decimal.Decimal(GAMMA)
        exact = {x: float(2 * g**x / (1 + g)) for x in range(-3000, 3001, 7)}
    for x, value in exact.items():  # power, division and 1 + γ: three roundings
        assert abs(one_bucket_value(x) - value) <= 3 * math.ulp(value)
    assert one_bucket_value(ZERO_BUCKET) == 0.0 and one_bucket_value(40_000) == math.inf


@settings(max_examples=300, deadline=None)
@given(PAIRS, QS)
def test_plain_python_quantiles_equal_the_vectorised_ones(pairs, qs):
    hist = Histogram.from_pairs([b for b, _ in pairs], [w for _, w in pairs])
    vectorised = sorted_quantiles(np.array(hist.buckets), np.array(hist.counts), qs)
    assert hist.quantiles(qs) == vectorised
    assert [hist.quantile(q) for q in qs] == vectorised


@settings(max_examples=100, deadline=None)
@given(st.lists(PAIRS, min_size=1, max_size=6), QS)
def test_a_series_of_windows_has_each_windows_quantiles(windows, qs):
    """grouped_quantiles (the series, numpy) equals each window read alone."""
    hists = [Histogram.from_pairs([b for b, _ in p], [w for _, w in p]) for p in windows]
    groups = np.repeat(np.arange(len(hists)), [len(h.buckets) for h in hists])
    buckets = np.concatenate([np.array(h.buckets, dtype=np.int64) for h in hists])
    counts = np.concatenate([np.array(h.counts) for h in hists])
    got = grouped_quantiles(groups, buckets, counts, qs)
    assert got == {i: tuple(h.quantiles(qs)) for i, h in enumerate(hists)}


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.floats(min_value=0, max_value=1e5), min_size=1, max_size=200),
    st.lists(st.integers(min_value=0, max_value=6), min_size=1, max_size=200),
    st.lists(st.integers(min_value=-400, max_value=900), max_size=5),
    QS,
)
def test_quantiles_are_the_bucket_of_the_raw_values_quantile(values, repeats, empty, qs):
    """Raw latencies (repeated: ties and integer weights; zero latencies too)
    bucketed into a histogram with some zero-weight buckets: each quantile is
    the bucket of np.quantile(raw, q, method="inverted_cdf"), exactly (the
    bucket map is monotone), and within ALPHA of the raw quantile."""
    raw = np.repeat(np.array(values), np.resize(repeats, len(values)))
    buckets, counts = np.unique(bucket_of(raw), return_counts=True)
    hist = Histogram.from_pairs(
        [*buckets.tolist(), *empty], [*counts.tolist(), *(0.0 for _ in empty)]
    )
    got = hist.quantiles(qs)
    if not len(raw):
        assert got == [None] * len(qs)
        return
    for q, value in zip(qs, got):
        truth = float(np.quantile(raw, q, method="inverted_cdf"))
        assert value == bucket_value(bucket_of(np.array([truth])))[0], q
        assert abs(value - truth) <= ALPHA * truth


def test_counts_that_are_not_weights_give_unknown_quantiles_not_a_guess():
    """An older store can hold a negative, NaN or infinite weight: its
    histogram's quantiles are None (null in JSON), in one window and in a
    series, where the other windows keep theirs."""
    for bad in (-1.0, math.nan, math.inf):
        assert Histogram.from_pairs([1, 2], [1.0, bad]).quantiles((0.0, 0.5, 1.0)) == [None] * 3
        assert sorted_quantiles(np.array([1, 2]), np.array([1.0, bad]), (0.5,)) == [None]
        got = grouped_quantiles(
            np.array([0, 0, 1]), np.array([1, 2, 3]), np.array([1.0, bad, 2.0]), (0.5,)
        )
        assert got == {0: (None,), 1: (one_bucket_value(3),)}
    with pytest.raises(ValueError, match="2 buckets, 1 counts"):
        Histogram.from_pairs([1, 2], [1.0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Histogram.from_pairs([1], [1.0]).quantiles((0.5, 1.5))
