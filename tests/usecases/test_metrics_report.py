"""One metrics composition: `metrics_report.build` gives the CLI, the API
and the dashboard the same compute → health → costs → render."""

from __future__ import annotations

import json

from cachemon import settings
from cachemon.alerts import health
from cachemon.clock import Period, Window
from cachemon.costs import usage
from cachemon.metrics import exposition
from cachemon.metrics import window as metrics_window
from cachemon.store import db as store_db
from cachemon.store import queries
from cachemon.usecases import metrics_report


def _end(path):
    with store_db.reader(path) as con:
        return queries.data_span(con)[1]


def test_report_is_compute_then_health_then_costs(loaded_store):
    path, _ = loaded_store
    cfg = settings.Config()
    at = _end(path)
    with store_db.reader(path) as con:
        report = metrics_report.build(con, cfg, Period.H1, at)
        # The composition written out by hand, as the CLI and the API did.
        m = metrics_window.compute(con, Window.ending(at, Period.H1.length), "1h", latest=True)
        state = health.health(con, m.at, cfg.alerts.evaluate_every)
        daily = usage.price(usage.per_day(usage.measure(con, m.window, cfg)), cfg.pricing)
        block = usage.to_json(daily, usage.forecast(con, m.at, cfg, cfg.pricing), m.at)
    assert report.metrics == m and report.health == state
    assert report.costs is not None and report.costs.to_json() == block
    assert report.to_json() == metrics_window.to_json(m, cfg.metrics.stale_after, state, block)
    assert report.to_prometheus() == exposition.render(m, cfg.metrics.stale_after, state, block)
    assert json.loads(json.dumps(report.to_json()))["costs"]["pricingVersion"]


def test_an_endpoints_report_leaves_the_store_wide_costs_out(loaded_store):
    path, _ = loaded_store
    cfg = settings.Config()
    at = _end(path)
    with store_db.reader(path) as con:
        title = metrics_report.build(con, cfg, Period.M15, at, endpoint="title", top=3)
        forced = metrics_report.build(con, cfg, Period.M15, at, endpoint="title", costs=True)
        none = metrics_report.build(con, cfg, Period.M15, at, costs=False)
    assert title.costs is None and "costs" not in title.to_json()
    assert title.to_json()["endpoint"] == "title" and len(title.to_json()["topKeys"]) <= 3
    assert forced.costs is not None and "costs" in forced.to_json()
    assert none.costs is None and "cachemon_estimated_cost" not in none.to_prometheus()
    assert "cachemon_estimated_cost" in forced.to_prometheus()


def test_latest_false_keeps_the_requested_window(loaded_store):
    """`--at` is reproducible: the window is not slid back to the data."""
    path, _ = loaded_store
    cfg = settings.Config()
    at = _end(path)
    later = at + Period.M15.length / 3
    with store_db.reader(path) as con:
        fixed = metrics_report.build(con, cfg, Period.M15, later, latest=False)
        slid = metrics_report.build(con, cfg, Period.M15, later)
    assert fixed.metrics.window.end == later and slid.metrics.window.end == at


def test_compare_holds_the_previous_period_and_the_kpi_changes(loaded_store):
    """The overview's comparison is part of the composition: the previous
    window's metrics and list cost per day, and each KPI's change."""
    path, _ = loaded_store
    cfg = settings.Config()
    at = _end(path)
    with store_db.reader(path) as con:
        report = metrics_report.build(con, cfg, Period.H1, at, compare=True)
        plain = metrics_report.build(con, cfg, Period.H1, at)
        before = report.metrics.window.previous()
        prev = metrics_window.compute(con, before, "1h", top=0)
        prev_cost = usage.price(usage.per_day(usage.measure(con, before, cfg)), cfg.pricing)
        first = queries.data_span(con)[0]
        lone = metrics_report.build(con, cfg, Period.H1, first + Period.H1.length, compare=True)
    assert plain.previous is None and report.to_json() == plain.to_json()
    assert report.previous.metrics == prev
    assert report.previous.list_per_day == prev_cost.list_total > 0
    cost = metrics_report.COST_KPI
    assert report.kpis() == metrics_window.kpis(report.metrics) | {
        cost: report.costs.daily.list_total
    }
    deltas = report.kpi_deltas()
    assert deltas[cost] == report.costs.daily.list_total - prev_cost.list_total
    assert deltas["requests"] == report.metrics.volume.total - prev.volume.total
    assert plain.kpi_deltas()[cost] is None and plain.kpi_deltas()["requests"] is None
    # The store's first hour has nothing before it: no previous metrics, no changes.
    assert lone.previous.metrics is None and lone.previous.list_per_day is None
    assert set(lone.kpi_deltas().values()) == {None}
