"""Key classes and recommendations, recomputed independently from raw events."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import duckdb
import numpy as np
import pandas as pd
import pytest

from cachemon import settings
from cachemon.clock import Window
from cachemon.costs import optimize
from cachemon.store import db as store_db
from cachemon.store.queries import CLASSES, KeyClass, key_class_sql
from tests.helpers import T0, load, simulate, small_sim

START = T0 - timedelta(days=10)
AT = T0 + timedelta(hours=2)
DAYS = (AT - START) / timedelta(days=1)  # two 2-hour bursts ten days apart: every class occurs


def test_class_boundaries():
    """The one class rule (SQL): hot above 100/day, cold under 10 a month, bounds warm."""
    rates = [100.0, 100.0001, 10 / 30, 10 / 30 - 1e-9, 0.0]
    got = duckdb.execute(
        f"SELECT {key_class_sql('r')} FROM unnest($rates) WITH ORDINALITY t(r, i) ORDER BY i",
        {"rates": rates},
    ).fetchall()
    assert [KeyClass(c) for (c,) in got] == ["warm", "hot", "warm", "cold", "cold"]
    assert CLASSES == (KeyClass.HOT, KeyClass.WARM, KeyClass.COLD)


def _truth(df: pd.DataFrame) -> pd.DataFrame:
    req = df[df.kind == "request"].copy()
    for tier in ("edge", "kv", "r2", "api"):
        req[tier] = np.where(req.tier == tier, req.sample_interval, 0.0)
    req["errors"] = np.where(req.status == "error", req.sample_interval, 0.0)
    g = (
        req.groupby(["key", "endpoint"])
        .agg(
            edge=("edge", "sum"),
            kv=("kv", "sum"),
            r2=("r2", "sum"),
            api=("api", "sum"),
            errors=("errors", "sum"),
            first=("timestamp", "min"),
        )
        .reset_index()
    )
    g["requests"] = g[["edge", "kv", "r2", "api"]].sum(axis=1)
    g["per_day"] = g["requests"] / DAYS
    g["cls"] = np.where(g.per_day > 100, "hot", np.where(g.per_day < 10 / 30, "cold", "warm"))
    return g


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    path = tmp_path_factory.mktemp("opt") / "o.duckdb"
    early, df1 = simulate(
        2,
        start=START,
        sim=small_sim(requests_per_hour=40_000, sample_threshold_per_minute=1e6, colos=30),
    )
    late, df2 = simulate(
        2,
        start=T0,
        sim=small_sim(requests_per_hour=40_000, sample_threshold_per_minute=1e6, colos=30),
    )
    load(path, early + late, now=AT)
    df = pd.concat([df1, df2])
    cfg = settings.Config()
    cfg = replace(cfg, costs=replace(cfg.costs, archive_after=timedelta(days=5), edge_target=99.0))
    with store_db.reader(path) as con:
        counts, days, recs = optimize.recommend(con, cfg, AT, Window(AT - timedelta(days=30), AT))
        # The per-key table the recommendations read, with each key's name.
        optimize.load_keys(con, Window(AT - timedelta(days=30), AT), AT)
        table = con.execute(
            "SELECT c.key, o.* FROM opt_keys o JOIN cache_keys c USING (key_id)"
        ).df()
    truth = _truth(df)
    assert counts == truth.cls.value_counts().to_dict()
    return cfg, table, days, {r.type: r for r in recs}, truth


def test_key_table_and_classes_match_raw_events(analysed):
    _, table, days, _, truth = analysed
    assert days == pytest.approx(DAYS)
    merged = table.merge(truth, on=["key", "endpoint"], suffixes=("", "_t"))
    assert len(merged) == len(truth) == len(table)
    for col in ("edge", "kv", "r2", "api", "errors"):
        assert np.allclose(merged[col], merged[col + "_t"])
    assert (merged["class"] == merged["cls"]).all()
    assert {"hot", "warm", "cold"} <= set(table["class"])


def test_edge_optimization_saving(analysed):
    cfg, _, _, recs, t = analysed
    hot = t[t.cls == "hot"]
    low = hot[100 * hot.edge / hot.requests < 99]
    avoidable = ((low.requests - low.edge) / DAYS - low.requests / DAYS * 0.01).sum()
    rec = recs["edge_optimization"]
    assert rec.saving_per_day == pytest.approx(avoidable * 0.50 / 1e6)
    assert rec.title.startswith(f"{len(low):,} hot keys")
    worst = (
        low.assign(a=(low.requests - low.edge) / DAYS - low.requests / DAYS * 0.01)
        .sort_values("a")
        .key.iloc[-1]
    )
    assert rec.evidence[0].startswith(worst)


def test_r2_archival_saving(analysed):
    cfg, _, _, recs, t = analysed
    cold = t[(t.cls == "cold") & ((AT - t["first"]) > timedelta(days=5))]
    ttl = {"title": 1.0, "isbn": 30.0, "author": 7.0}
    lam = (cold.requests - cold.edge) / DAYS
    T = cold.endpoint.map(ttl)
    gb = (lam * T / (1 + lam * T) * 600).sum() / 1e9
    rec = recs["r2_archival"]
    assert rec.saving_per_day == pytest.approx(gb * (0.50 - 0.015) / 30)
    assert rec.title == f"Archive {len(cold):,} cold entries to R2"


def test_ttl_tuning_saving(analysed):
    cfg, _, _, recs, t = analysed
    warm = t[t.cls == "warm"]
    fills = warm.r2 + warm.api - warm.errors
    churn = warm[fills * 5.0 > warm.kv * 0.50]
    total = 0.0
    for endpoint, base in {"title": 1.0, "isbn": 30.0, "author": 7.0}.items():
        g = churn[churn.endpoint == endpoint]
        lam = ((g.requests - g.edge) / DAYS).to_numpy()
        missed = (g.r2 + g.api).to_numpy()
        r2_share, written = g.r2.to_numpy() / missed, (fills[g.index] / missed).to_numpy()

        def cost(T, lam=lam, written=written, r2_share=r2_share):
            # Per key: reads, the misses' writes (a failed fill writes
            # nothing) and R2 gets in the key's own shares, and storage.
            misses = lam / (1 + lam * T)
            return (
                lam * 0.50 / 1e6
                + misses * written * 5.0 / 1e6
                + misses * r2_share * 0.36 / 1e6
                + lam * T / (1 + lam * T) * 600 / 1e9 * 0.50 / 30
            ).sum()

        options = sorted({min(base * f, 30.0) for f in (1, 2, 4, 7, 14, 30)})
        best = min(options, key=cost)
        total += max(0.0, cost(base) - cost(best))
    assert total > 0
    assert recs["ttl_tuning"].saving_per_day == pytest.approx(total)
    # The model, not the sampled replay, made it: the evidence says so.
    assert "fixed-TTL model" in recs["ttl_tuning"].evidence[-1]


def _window_truth(df: pd.DataFrame, days: float) -> pd.DataFrame:
    g = _truth(df)
    g["per_day"] = g["requests"] / days
    g["cls"] = np.where(g.per_day > 100, "hot", np.where(g.per_day < 10 / 30, "cold", "warm"))
    return g


@pytest.mark.parametrize(
    "f",
    [
        optimize.KeyFilter(limit=50),
        optimize.KeyFilter(endpoint="title", klass="warm", limit=30),
        optimize.KeyFilter(contains="Q=A", limit=1000),  # case-insensitive plain text
        optimize.KeyFilter(
            contains="%' OR 1=1 --", limit=10
        ),  # SQL text is just text: nothing matches
    ],
    ids=["top", "title-warm", "contains", "injection"],
)
def test_key_page_filters_and_orders_like_pandas(loaded_store, f):
    path, df = loaded_store
    window = Window(T0, T0 + timedelta(hours=3))
    truth = _window_truth(df[(df.timestamp >= window.start) & (df.timestamp < window.end)], 3 / 24)
    if f.endpoint:
        truth = truth[truth.endpoint == f.endpoint]
    if f.klass:
        truth = truth[truth.cls == f.klass]
    if f.contains:
        truth = truth[truth.key.str.lower().str.contains(f.contains.lower(), regex=False)]
    truth = truth.sort_values(["requests", "key"], ascending=[False, True])
    with store_db.reader(path) as con:
        kp = optimize.key_page(con, window, window.end, f)
    page, matching, days = kp.rows, kp.matching, kp.days
    assert matching == len(truth) and days == pytest.approx(3 / 24)
    assert (matching == 0) == ("OR 1=1" in (f.contains or ""))  # each case is non-trivial
    top = truth.head(f.limit)
    assert list(page.key) == list(top.key)
    if len(top):
        row, t = page.iloc[0], top.iloc[0]
        assert row.hit_rate == pytest.approx(100 * (1 - t.api / t.requests))
        assert row.edge_share == pytest.approx(100 * t.edge / t.requests)
        assert row.tier == max(("edge", "kv", "r2", "api"), key=lambda tier: t[tier])
        assert row["class"] == t.cls
