"""Issue #20 §2: one usage rule for KV writes and R2 gets, the configured R2
flow, month-to-date storage priced for the days with data, and every cost
figure naming its basis.

The truth is computed here with pandas on the raw events (not with
cachemon): a KV read per request the edge did not serve, a KV write per
`ok` request of tier r2 or api, an R2 get per request of tier r2 (or r2 and
api when the Worker asks R2 on every KV miss), all weighted by the
sampling interval.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from cachemon import pricing, settings
from cachemon.clock import DAY, HOUR, Window
from cachemon.costs import basis as costs_basis
from cachemon.costs import optimize
from cachemon.costs import usage as costs_usage
from cachemon.costs.tiermix import TierMix
from cachemon.events import validate
from cachemon.ingest import write as ingest_write
from cachemon.store import db as store_db
from tests.helpers import config_error

DAY0 = datetime(2026, 11, 19, tzinfo=UTC)
R2_GET = 0.36e-6  # list price of one R2 Class B get
FLOWS = ("rehydration", "every_kv_miss")


def _cfg(flow: str = "rehydration") -> settings.Config:
    return replace(settings.Config(), costs=settings.CostsConfig(r2_lookup=flow))


def _ingest(path, df: pd.DataFrame, window: Window) -> None:
    n = len(df)
    table = pa.table(
        {
            "timestamp": list(df.timestamp),
            "tier": list(df.tier),
            "key": list(df.key),
            "endpoint": list(df.endpoint),
            "status": list(df.status),
            "kind": list(df.kind),
            "latency_ms": [float(v) for v in df.latency_ms],
            "sample_interval": [float(v) for v in df.sample_interval],
        }
    )
    assert table.num_rows == n
    with store_db.writer(path, window.end) as con:
        ingest_write.replace_window(con, validate(table, "rule"), "simulator", window, window.end)


def _day(seed: int, tiers: dict, error: dict, n: int = 6000) -> pd.DataFrame:
    """A day of weighted requests: tiers drawn with `tiers` probabilities,
    each failing with its tier's `error` probability."""
    rng = np.random.default_rng(seed)
    names = list(tiers)
    tier = rng.choice(names, n, p=[tiers[t] for t in names])
    failed = rng.random(n) < np.array([error[t] for t in tier])
    seconds = np.sort(rng.integers(0, 86400, n))
    return pd.DataFrame(
        {
            "timestamp": [DAY0 + timedelta(seconds=int(s)) for s in seconds],
            "tier": tier,
            "key": [f"search:title:q=k{i}" for i in rng.integers(0, 300, n)],
            "endpoint": "title",
            "status": np.where(failed, "error", "ok"),
            "kind": "request",
            "latency_ms": 12.0,
            "sample_interval": rng.choice([1.0, 2.0, 5.0], n),
        }
    )


# 3 % edge and KV errors (and 1 % failed fills); then a day where the errors
# (of every tier) outnumber the fills several times over.
DAYS = {
    "3pct_edge_kv_errors": _day(
        7,
        {"edge": 0.6, "kv": 0.25, "r2": 0.05, "api": 0.10},
        {"edge": 0.03, "kv": 0.03, "r2": 0.01, "api": 0.01},
    ),
    "errors_outnumber_fills": _day(
        8,
        {"edge": 0.5, "kv": 0.45, "r2": 0.01, "api": 0.04},
        {"edge": 0.25, "kv": 0.25, "r2": 0.2, "api": 0.3},
    ),
}


def _truth(df: pd.DataFrame, flow: str) -> dict:
    w = df.sample_interval
    fills = df.tier.isin(["r2", "api"])
    r2_tiers = ["r2", "api"] if flow == "every_kv_miss" else ["r2"]
    return {
        "workers_requests": w.sum(),
        "kv_reads": w[df.tier != "edge"].sum(),
        "kv_writes": w[fills & (df.status == "ok")].sum(),
        "r2_class_b": w[df.tier.isin(r2_tiers)].sum(),
    }


@pytest.fixture(scope="module")
def day_stores(tmp_path_factory):
    out = {}
    for name, df in DAYS.items():
        path = tmp_path_factory.mktemp(name) / "d.duckdb"
        _ingest(path, df, Window(DAY0, DAY0 + DAY))
        out[name] = path
    return out


@pytest.mark.parametrize("flow", FLOWS)
@pytest.mark.parametrize("name", list(DAYS))
def test_window_usage_is_the_rule_on_raw_events(day_stores, name, flow):
    df = DAYS[name]
    if name == "errors_outnumber_fills":
        errors = df.sample_interval[df.status == "error"].sum()
        assert errors > 2 * df.sample_interval[df.tier.isin(["r2", "api"])].sum()
    with store_db.reader(day_stores[name]) as con:
        u = costs_usage.measure(con, Window(DAY0, DAY0 + DAY), _cfg(flow))
    for component, want in _truth(df, flow).items():
        assert u.units(component) == pytest.approx(want, rel=1e-12), component
    assert u.kv_writes > 0  # an edge or KV error never takes a write away


def test_tiermix_r2_gets_follow_the_flow():
    r2, api = np.array([3.0, 0.0]), np.array([2.0, 5.0])
    assert list(TierMix(r2=r2, api=api).r2_reads) == [3.0, 0.0]
    every = TierMix(r2=r2, api=api, r2_lookup="every_kv_miss")
    assert list(every.r2_reads) == [5.0, 5.0]
    assert list(every.units("r2_class_b")) == [5.0, 5.0]
    assert every.cost(pricing.default()) == pytest.approx(
        (r2 + api) * 0.50e-6 + (r2 + api) * 5.00e-6 + (r2 + api) * R2_GET
    )
    modelled = TierMix.from_misses(100.0, 40.0, 0.25, 0.0, r2_lookup="every_kv_miss")
    assert modelled.r2_reads == 40.0 and modelled.kv_writes == 40.0


counts = st.floats(0, 1e9, allow_nan=False)


@hsettings(max_examples=200, deadline=None)
@given(counts, counts, counts, counts, st.floats(0, 1))
def test_the_flow_changes_only_the_r2_gets(edge, kv, r2, api, failed_share):
    """Whatever the counts: the two flows differ by exactly the origin's
    answers in R2 gets, and in nothing else; writes stay within the fills."""
    failed = (r2 + api) * failed_share
    a = TierMix(edge, kv, r2, api, failed)
    b = TierMix(edge, kv, r2, api, failed, "every_kv_miss")
    assert b.r2_reads == pytest.approx(a.r2_reads + api) and a.r2_reads == r2
    assert (a.kv_reads, a.kv_writes, a.requests) == (b.kv_reads, b.kv_writes, b.requests)
    assert 0 <= a.kv_writes <= r2 + api


def test_optimiser_ttl_cost_takes_the_flow():
    lam, t, r2s = np.array([0.5, 3.0]), 2.0, np.array([1.0, 0.0])
    got = {f: optimize.ttl_cost(lam, t, pricing.default(), 600.0, 30, r2s, 0.0, f) for f in FLOWS}
    misses = lam / (1 + lam * t)
    # Every KV miss is an R2 get, whoever answers it.
    assert got["every_kv_miss"] - got["rehydration"] == pytest.approx(misses * (1 - r2s) * R2_GET)


def test_the_flow_is_configured_and_a_bad_one_named(tmp_path):
    assert settings.Config().costs.r2_lookup == "rehydration"
    error, f = config_error(tmp_path, '[costs]\nr2_lookup = "always"\n')
    assert "[costs] r2_lookup = 'always'" in error and str(f) in error
    assert "'rehydration'" in error and "'every_kv_miss'" in error


# -- month to date from the 20th, and the rate of a partly covered window ------

NOV20 = datetime(2026, 11, 20, tzinfo=UTC)
AT = NOV20 + timedelta(days=5, hours=12)
KV_BYTES = np.array([1.5e9, 2.5e9])  # readings alternate: mean 2 GB


@pytest.fixture(scope="module")
def late_store(tmp_path_factory):
    """Data from the 20th only: a request of each tier and a KV storage
    reading every hour until the 25th 12:00."""
    hours = int((AT - NOV20) / HOUR)
    rows = []
    for h in range(hours):
        t = NOV20 + h * HOUR
        # The first and last minute of every hour, so the data covers all of it.
        for m, tier in zip((0, 20, 40, 59), ("edge", "kv", "r2", "api")):
            rows.append((t + timedelta(minutes=m), tier, "title", "request", 10.0))
        rows.append((t + timedelta(minutes=30), "", "", "kv_storage_bytes", KV_BYTES[h % 2]))
    df = pd.DataFrame(rows, columns=["timestamp", "tier", "endpoint", "kind", "latency_ms"])
    df["key"] = np.where(df.kind == "request", "search:title:q=x", "")
    df["status"], df["sample_interval"] = "ok", 1.0
    path = tmp_path_factory.mktemp("late") / "l.duckdb"
    _ingest(path, df, Window(NOV20, AT))
    return path


def test_month_to_date_storage_priced_for_the_days_with_data(late_store):
    cfg = settings.Config()
    with store_db.reader(late_store) as con:
        fc = costs_usage.forecast(con, AT, cfg, cfg.pricing)
    # By hand: 2 GB held for the 5.5 days since the 20th, of a 30-day month;
    # nothing for the 19 days before the data starts.
    gb_months = 2.0 * 5.5 / 30
    mtd = fc.month_to_date
    assert mtd.usage.kv_storage == pytest.approx(gb_months, rel=1e-9)
    assert mtd.line("kv_storage").list_cost == pytest.approx(0.50 * gb_months, rel=1e-9)
    b = mtd.basis
    assert b.kind is costs_basis.Kind.MONTH_TO_DATE and b.partial
    assert b.window == Window(datetime(2026, 11, 1, tzinfo=UTC), AT)
    assert b.covered == Window(NOV20, AT)
    assert "5.5 days of it with data" in b.short()
    assert "the data covers only 2026-11-20 00:00Z" in b.text()


def test_a_rate_comes_from_the_part_of_the_window_with_data(late_store):
    cfg = settings.Config()
    # 12 h of data in a 24 h window: the daily rate is those 12 h × 2.
    w = Window(NOV20 - timedelta(hours=12), NOV20 + timedelta(hours=12))
    with store_db.reader(late_store) as con:
        daily = costs_usage.daily_rate(con, w, cfg)
    assert daily.usage.workers_requests == pytest.approx(4 * 12 * 2)
    assert daily.usage.r2_class_b == pytest.approx(12 * 2)
    assert daily.usage.kv_storage == pytest.approx(2.0 / 30, rel=1e-9)
    assert daily.basis.kind is costs_basis.Kind.RATE and daily.basis.covered == Window(NOV20, w.end)
    assert daily.basis.short() == "list, rate from 12h of data"


def test_every_figure_of_the_json_names_its_basis(late_store):
    cfg = settings.Config()
    w = Window(AT - HOUR, AT)
    with store_db.reader(late_store) as con:
        js = costs_usage.window_costs(con, w, AT, cfg).to_json()
    per_day = js["perDay"]["basis"]
    assert per_day["kind"] == "rate" and not per_day["partial"]
    assert per_day["window"] == {"start": "2026-11-25T11:00:00Z", "end": "2026-11-25T12:00:00Z"}
    assert per_day["text"]["list"].startswith(
        "List USD/day: a rate, the usage of 2026-11-25 11:00Z – 2026-11-25 12:00Z (1h)"
    )
    assert "included amounts" in per_day["text"]["billed"]
    assert "/month figures are that rate × 30 days" in js["basis"]
    fc, mtd = js["forecast"]["basis"], js["forecast"]["monthToDateBasis"]
    assert fc["kind"] == "forecast" and fc["daysLeft"] == pytest.approx(5.5)
    assert fc["rate"] == {"start": "2026-11-18T12:00:00Z", "end": "2026-11-25T12:00:00Z"}
    assert "from the 5.5 days of it with data" in fc["text"]["list"]
    assert "whole month" in fc["text"]["billed"]
    assert mtd["kind"] == "month_to_date" and mtd["partial"]
    assert mtd["covered"]["start"] == "2026-11-20T00:00:00Z"


def test_basis_reads_back_from_json():
    b = costs_basis.Basis(
        costs_basis.Kind.FORECAST,
        Window(datetime(2026, 11, 1, tzinfo=UTC), AT),
        Window(NOV20, AT),
        Window(AT - 7 * DAY, AT),
        4.5,
        Window(NOV20, AT),
    )
    assert costs_basis.Basis.from_json(b.to_json()) == b
    assert costs_basis.label(b, costs_basis.Price.BILLED).endswith(f"({costs_basis.PRICES}).")


def test_a_window_without_a_storage_reading_holds_the_last_one(late_store):
    """Storage is read hourly (at :30): a 15-minute window between readings
    is priced with the reading before it, not at $0."""
    cfg = settings.Config()
    for h in (3, 4):
        t = NOV20 + h * HOUR
        w = Window(t + timedelta(minutes=35), t + timedelta(minutes=50))
        with store_db.reader(late_store) as con:
            u = costs_usage.measure(con, w, cfg)
        held = KV_BYTES[h % 2]  # the reading at :30 of the same hour
        assert u.kv_bytes == pytest.approx(held)
        assert u.kv_storage == pytest.approx(held / 1e9 * (15 / (30 * 24 * 60)), rel=1e-9)
        assert u.ae_writes == pytest.approx(1.0)  # the request at :40; no reading counted
