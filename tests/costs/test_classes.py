"""Key classes by keys, requests and cost (the Costs page's class shares),
recomputed independently from raw events with pandas."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachemon import settings as cm_settings
from cachemon.clock import DAY, HOUR, Window
from cachemon.costs import classes, optimize, usage
from cachemon.costs.basis import Kind
from cachemon.costs.tiermix import TierMix
from cachemon.pricing import default as default_pricing
from cachemon.store import db as store_db
from cachemon.store.queries import CLASSES, KeyClass
from tests.helpers import T0, two_span_store

START = T0 - timedelta(days=10)
AT = T0 + timedelta(hours=2)
DATA_DAYS = (AT - START) / DAY  # two 2-hour bursts ten days apart: every class occurs
# Published list prices, USD per million (the default price list).
PRICE = {"workers": 0.30, "kv_reads": 0.50, "kv_writes": 5.00, "r2_gets": 0.36}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    # Sampled (weights above 1) in the busy minutes, as Analytics Engine does.
    return two_span_store(tmp_path_factory.mktemp("classes") / "c.duckdb", START, T0, AT)


def _truth(df: pd.DataFrame, window: Window, r2_lookup: str) -> pd.DataFrame:
    """Per class: keys, requests and cost per day of `window`, classes from
    each key's rate over all the data (the class window covers it)."""
    req = df[df.kind == "request"].copy()
    w = req.sample_interval.astype(float)
    rate = req.groupby("key").sample_interval.sum() / DATA_DAYS
    cls = pd.Series(
        np.where(rate > 100, "hot", np.where(rate < 10 / 30, "cold", "warm")), index=rate.index
    )
    ts = pd.to_datetime(req.timestamp, utc=True)
    inside = req[(ts >= window.start) & (ts < window.end)].copy()
    w = inside.sample_interval.astype(float)
    for tier in ("edge", "kv", "r2", "api"):
        inside[tier] = np.where(inside.tier == tier, w, 0.0)
    inside["fill_errors"] = np.where(
        (inside.status == "error") & inside.tier.isin(["r2", "api"]), w, 0.0
    )
    k = inside.groupby("key")[["edge", "kv", "r2", "api", "fill_errors"]].sum()
    k["requests"] = k[["edge", "kv", "r2", "api"]].sum(axis=1)
    writes = np.maximum(k.r2 + k.api - k.fill_errors, 0.0)
    gets = k.r2 if r2_lookup == "rehydration" else k.r2 + k.api
    k["cost"] = (
        k.requests * PRICE["workers"]
        + (k.kv + k.r2 + k.api) * PRICE["kv_reads"]
        + writes * PRICE["kv_writes"]
        + gets * PRICE["r2_gets"]
    ) / 1e6
    k["cls"] = cls.reindex(k.index).values
    data_end = ts.max().floor("min") + pd.Timedelta(minutes=1)
    data_start = ts.min().floor("min").to_pydatetime()
    # The rate is from the part of the window with data (no data: nothing to scale).
    covered = min(window.end, data_end.to_pydatetime()) - max(window.start, data_start)
    g = k.groupby("cls").agg(
        keys=("cost", "size"), requests=("requests", "sum"), cost=("cost", "sum")
    )
    g["cost"] *= DAY / covered
    return g.reindex([str(c) for c in CLASSES]).fillna(0.0)


@pytest.mark.parametrize("r2_lookup", ["rehydration", "every_kv_miss"])
@pytest.mark.parametrize(
    "window",
    [
        Window(T0 + HOUR, AT),  # the last hour
        Window(T0 + HOUR, AT + 2 * HOUR),  # reaching past the data: a rate from the hour of it
        Window(AT - 30 * DAY, AT),  # both bursts
    ],
    ids=["1h", "past-the-data", "30d"],
)
def test_class_shares_match_raw_events(store, window, r2_lookup):
    path, df = store
    cfg = cm_settings.Config()
    cfg = replace(cfg, costs=replace(cfg.costs, r2_lookup=r2_lookup))
    with store_db.reader(path) as con:
        got = classes.class_shares(con, cfg, window)
    truth = _truth(df, window, r2_lookup)
    assert [r.klass for r in got.rows] == list(CLASSES)
    for r in got.rows:
        t = truth.loc[str(r.klass)]
        assert r.keys == int(t["keys"]), r.klass
        assert r.requests == pytest.approx(t["requests"]), r.klass
        assert r.cost_per_day == pytest.approx(t["cost"], rel=1e-9, abs=1e-12), r.klass
    # The classes are over the class window, not the selected hour: an hour
    # of any key's requests is far below the cold bound, yet most keys are warm.
    assert got.rows[0].keys > 0 and got.rows[1].keys > 0
    assert got.class_days == pytest.approx(DATA_DAYS)
    for measure in ("keys", "requests", "cost_per_day"):
        shares = [got.share(c, measure) for c in CLASSES]
        assert sum(shares) == pytest.approx(100.0)
        column = {"cost_per_day": "cost"}.get(measure, measure)
        expect = 100 * truth[column] / truth[column].sum()
        assert shares == pytest.approx(list(expect))
    assert got.basis.kind is Kind.RATE and got.basis.window == window
    assert got.basis.partial == (window.start < START or window.end > AT)


def test_class_costs_add_up_to_the_headline_request_components(store):
    """The classes split the per-request part of the Costs headline: Worker
    runs, KV reads, KV writes and R2 gets of the same window, priced from
    the rollups (another path through the store)."""
    path, _ = store
    cfg = cm_settings.Config()
    window = Window(T0, AT)
    with store_db.reader(path) as con:
        got = classes.class_shares(con, cfg, window)
        daily = usage.daily_rate(con, window, cfg)
    parts = ("workers_requests", "kv_reads", "kv_writes", "r2_class_b")
    assert got.total("cost_per_day") == pytest.approx(
        sum(daily.line(c).list_cost for c in parts), rel=1e-9
    )
    assert got.total("requests") * DAY / (AT - T0) == pytest.approx(daily.usage.workers_requests)


@pytest.mark.parametrize(
    "window", [Window(T0 + HOUR, AT), Window(AT - 30 * DAY, AT)], ids=["1h", "30d"]
)
def test_classes_agree_with_the_top_keys_page(store, window):
    """The Costs page's class counts are the Top keys page's (its key table
    with the class over the class window ending with the range)."""
    path, _ = store
    cfg = cm_settings.Config()
    with store_db.reader(path) as con:
        got = classes.class_shares(con, cfg, window)
        keys = {
            c: optimize.key_page(
                con,
                window,
                AT,
                optimize.KeyFilter(klass=c, limit=1),
                classes=Window(window.end - cfg.costs.class_window, window.end),
            ).matching
            for c in CLASSES
        }
    assert {r.klass: r.keys for r in got.rows} == keys


def test_the_one_class_window_query_matches_raw_events(store):
    """`classes.class_of_sql`, the one query the Costs page's class shares
    and the Top keys page's class column come from: every key of a relation
    gets the rule on its rate over the class window (here the late burst
    only), and a key without requests there (the early burst's) is cold."""
    path, df = store
    req = df[df.kind == "request"]
    ts = pd.to_datetime(req.timestamp, utc=True)
    late = req[(ts >= T0) & (ts < AT)]
    rate = late.groupby("key").sample_interval.sum() / ((AT - T0) / DAY)
    rate = rate.reindex(req.key.unique(), fill_value=0.0)
    truth = pd.Series(
        np.where(rate > 100, "hot", np.where(rate < 10 / 30, "cold", "warm")), index=rate.index
    )
    with store_db.reader(path) as con:
        span = classes.class_span(con, Window(T0, AT))
        con.execute("CREATE TEMP TABLE some_keys AS SELECT key_id, key FROM cache_keys")
        sql = "SELECT key, class FROM (" + classes.class_of_sql("some_keys") + ")"
        got = con.execute(sql, span.params()).df().set_index("key")["class"]
    assert span.days == pytest.approx((AT - T0) / DAY)
    assert len(got) == len(truth) and (truth == "cold").sum() > 0
    assert got.reindex(truth.index).astype(str).to_dict() == truth.to_dict()


def test_a_window_without_data_has_no_shares(store):
    path, _ = store
    empty = Window(START - 3 * DAY, START - 2 * DAY)
    with store_db.reader(path) as con:
        got = classes.class_shares(con, cm_settings.Config(), empty)
    assert [(r.keys, r.requests, r.cost_per_day) for r in got.rows] == [(0, 0.0, 0.0)] * 3
    assert got.share(KeyClass.HOT, "requests") is None


counts = st.floats(0, 1e6, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(counts, counts, counts, counts, st.floats(0, 1.5)), min_size=1, max_size=30),
    st.sampled_from(["rehydration", "every_kv_miss"]),
)
def test_the_per_key_rule_on_summed_counts_is_the_sum_of_key_costs(keys, flow):
    """What class_shares relies on: the request cost of a class's summed
    counts, with the per-key clipped writes' complement as its failed fills,
    is the sum of its keys' own request costs."""
    pricing = default_pricing()
    edge, kv, r2, api, err = (np.array(c, dtype=float) for c in zip(*keys, strict=True))
    fill_errors = err * (r2 + api)
    each = TierMix(edge, kv, r2, api, fill_errors, r2_lookup=flow).request_cost(pricing)
    failed = r2 + api - np.maximum(r2 + api - fill_errors, 0.0)
    summed = TierMix(edge.sum(), kv.sum(), r2.sum(), api.sum(), failed.sum(), r2_lookup=flow)
    assert float(summed.request_cost(pricing)) == pytest.approx(float(each.sum()), rel=1e-9)
