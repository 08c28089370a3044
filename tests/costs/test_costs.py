"""The cost model: hand-computed prices, usage against raw events, and the
properties costs must have."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachemon import config, pricing
from cachemon import settings as cachemon_settings
from cachemon.clock import DAY, Window
from cachemon.costs import usage as costs_usage
from cachemon.pricing import COMPONENTS
from cachemon.store import db as store_db
from tests.helpers import T0, config_error

NOV = datetime(2026, 11, 19, tzinfo=UTC)  # 30-day month
FEB = datetime(2027, 2, 10, tzinfo=UTC)  # 28-day month


def _usage(start, length=DAY, **units):
    return costs_usage.Usage(Window(start, start + length), **units)


def test_prices_by_hand_with_included_amounts_and_month_lengths():
    p = pricing.default()
    # 20 M KV reads in a November day: list 20 × $0.50; billed after 10 M / 30 included that day.
    b = costs_usage.price(_usage(NOV, kv_reads=20e6), p)
    assert b.line("kv_reads").list_cost == pytest.approx(10.0)
    assert b.line("kv_reads").billed == pytest.approx((20e6 - 10e6 / 30) * 0.50 / 1e6)
    # Exactly the included amount of a February day: billed 0; one million more: $5 of writes.
    feb = costs_usage.price(_usage(FEB, kv_writes=1e6 / 28), p).line("kv_writes")
    assert feb.billed == 0.0 and feb.list_cost == pytest.approx(5.0 / 28)
    assert costs_usage.price(_usage(FEB, kv_writes=1e6 / 28 + 1e6), p).line(
        "kv_writes"
    ).billed == pytest.approx(5.0)
    # Storage: 2 GB held for a November day is 2/30 GB-month; 1 GB-month included.
    kv = costs_usage.price(_usage(NOV, kv_storage=2 / 30), p).line("kv_storage")
    assert kv.list_cost == pytest.approx(0.50 * 2 / 30) and kv.billed == pytest.approx(
        0.50 * 1 / 30
    )
    assert pricing.days_in_month(FEB) == 28 and pricing.month_share(FEB, DAY) == pytest.approx(
        1 / 28
    )


def test_seed_shaped_block():
    p = pricing.default()
    b = costs_usage.price(
        _usage(NOV, kv_reads=4.3e6, kv_writes=90e3, kv_storage=0.35 / 30, kv_bytes=350e6), p
    )
    block = costs_usage.to_json(b, None, NOV)
    assert block["kv_reads_estimate"] == "$2.15/day"
    assert block["kv_writes_estimate"] == "$0.450/day"
    assert block["kv_storage"] == "350MB ($0.175/month)"
    total = 2.15 + 0.45 + 0.50 * 0.35 / 30
    assert block["total_estimate"] == f"${total:.2f}/day (${total * 30:.2f}/month)"
    assert block["perDay"]["list"] == pytest.approx(total, abs=1e-6)


@pytest.mark.parametrize(
    "toml, message",
    [
        (
            "[pricing.kv_reads]\nprice = -0.5\n",
            "[pricing.kv_reads] price must be zero or more, got -0.5",
        ),
        ('[pricing.kv_reads]\nprice = "cheap"\n', "[pricing.kv_reads] price must be a number"),
        ("[pricing.kv_reads]\nper = 0\n", "per must be positive"),
        ("[pricing.kv_lists]\nprice = 5\n", "unknown component 'kv_lists'"),
        ("[pricing.kv_reads]\ncost = 5\n", "unknown field 'cost'"),
        ("[pricing]\nkv_reads = 0.5\n", "[pricing.kv_reads] must be a table"),
    ],
)
def test_bad_prices_are_named(tmp_path, toml, message):
    error, f = config_error(tmp_path, toml)
    assert message in error and str(f) in error


def test_overrides_change_the_version(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text("[pricing.kv_reads]\nprice = 0.45\n")
    cfg = config.load(f, env={})
    assert (
        cfg.pricing["kv_reads"].price == 0.45
        and cfg.pricing.version == "workers-paid-2026+overrides"
    )


def test_usage_equals_raw_event_truth(loaded_store):
    path, truth = loaded_store
    cfg = cachemon_settings.Config()
    w = Window(T0 + timedelta(minutes=10), T0 + timedelta(hours=2, minutes=50))
    with store_db.reader(path) as con:
        u = costs_usage.measure(con, w, cfg)
    t = truth[(truth.timestamp >= w.start) & (truth.timestamp < w.end)]
    req = t[t.kind == "request"]
    weight = lambda mask: float(req[mask].sample_interval.sum())  # noqa: E731
    assert u.workers_requests == pytest.approx(req.sample_interval.sum())
    assert u.kv_reads == pytest.approx(weight(req.tier != "edge"))
    # A fill after an R2 rehydration or an origin answer; a failed one writes nothing.
    assert u.kv_writes == pytest.approx(weight(req.tier.isin(["r2", "api"]) & (req.status == "ok")))
    assert u.r2_class_b == pytest.approx(weight(req.tier == "r2"))
    assert u.ae_writes == pytest.approx(req.sample_interval.sum() + (t.kind != "request").sum())
    kv = t[t.kind == "kv_storage_bytes"].latency_ms
    assert u.kv_storage == pytest.approx(kv.mean() / 1e9 * (w.end - w.start) / (30 * DAY))
    r2 = t[t.kind == "r2_storage_bytes"].sort_values("timestamp").latency_ms
    assert u.r2_class_a == pytest.approx(max(0.0, r2.iloc[-1] - r2.iloc[0]) / cfg.costs.value_bytes)
    assert u.ae_queries == 0  # the simulator is not Analytics Engine


def test_usage_adds_up_across_windows(loaded_store):
    path, _ = loaded_store
    cfg = cachemon_settings.Config()
    a, b = (
        Window(T0, T0 + timedelta(hours=1)),
        Window(T0 + timedelta(hours=1), T0 + timedelta(hours=3)),
    )
    with store_db.reader(path) as con:
        ua, ub, whole = (
            costs_usage.measure(con, w, cfg) for w in (a, b, Window(T0, T0 + timedelta(hours=3)))
        )
    for c in ("workers_requests", "kv_reads", "kv_writes", "r2_class_b", "ae_writes"):
        assert ua.units(c) + ub.units(c) == pytest.approx(whole.units(c))


amounts = st.floats(0, 1e9, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(amounts, min_size=len(COMPONENTS), max_size=len(COMPONENTS)),
    st.lists(amounts, min_size=len(COMPONENTS), max_size=len(COMPONENTS)),
    st.integers(0, 400),
)
def test_costs_are_non_negative_and_additive_across_days(day1, day2, offset):
    p = pricing.default()
    d1 = NOV + timedelta(days=offset)
    b1 = costs_usage.price(_usage(d1, **dict(zip(COMPONENTS, day1))), p)
    b2 = costs_usage.price(_usage(d1 + DAY, **dict(zip(COMPONENTS, day2))), p)
    for b in (b1, b2):
        assert all(ln.list_cost >= 0 and 0 <= ln.billed <= ln.list_cost + 1e-9 for ln in b.lines)
    both = costs_usage.price(
        _usage(d1, 2 * DAY, **{c: x + y for c, x, y in zip(COMPONENTS, day1, day2)}), p
    )
    assert both.list_total == pytest.approx(b1.list_total + b2.list_total, rel=1e-9, abs=1e-9)
    if (
        d1.month == (d1 + DAY).month
    ):  # included amounts pro-rate per day: two days' bills cover the two-day bill
        assert both.billed_total <= (b1.billed_total + b2.billed_total) * (1 + 1e-9) + 1e-9


def test_readme_costs_example_loads(tmp_path):
    import re

    from tests.helpers import ROOT

    block = next(
        b
        for b in re.findall(r"```toml\n(.*?)```", (ROOT / "docs" / "costs.md").read_text(), re.S)
        if b.startswith("[costs]")
    )
    f = tmp_path / "c.toml"
    f.write_text(block)
    cfg = config.load(f, env={})
    assert dict(cfg.costs.kv_ttl)["isbn"] == timedelta(days=30)
    assert cfg.pricing["kv_reads"].price == 0.45 and cfg.pricing.version == "my-contract-2027"
