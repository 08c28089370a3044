"""One figure, every surface: for a set of windows (15m, 1h, 24h; all
endpoints and one; `--at` on an hour and mid-minute) on one store, the hit
rate by tier, p50/p95/p99, requests and error rate are the same in the
metrics JSON (`cachemon metrics` and GET /metrics of a real server), the
Prometheus exposition, the dashboard Overview's KPI tiles, the alert's
current value, the alert email and the health banner, each up to its own
display rounding, and all of them agree with pandas/numpy on the raw events.

The `isbn` endpoint answers in microseconds (its latencies are scaled by
1e-3), so a surface that rounds latencies to decimals fails here.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import timedelta

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from streamlit.testing.v1 import AppTest

from cachemon import config, jsontext
from cachemon.alerts import evaluate as alerts_evaluate
from cachemon.alerts import readings
from cachemon.alerts.rules import BUILTIN, METRICS, format_value
from cachemon.cli.main import main
from cachemon.clock import MINUTE, Period, floor_to, format_duration, iso, utcnow
from cachemon.events import TIERS, EventFrame
from cachemon.notify.transports import Smtp, Transports
from cachemon.store import db as store_db
from cachemon.store.queries import data_span
from cachemon.timerange import TimeRange
from pages.shared import common
from tests.helpers import ROOT, T0, load, simulate, small_sim, to_pandas, weighted_quantile
from tests.helpers.servers import chromium, serve_api, streamlit_server

HOURS = 26
END = T0 + timedelta(hours=HOURS)  # the data ends here
FAST = "isbn"  # the endpoint scaled to microseconds
ATS = {
    "on an hour": T0 + timedelta(hours=25),
    "mid-minute": T0 + timedelta(hours=25, minutes=37, seconds=30),
}
PERIODS = (Period.M15, Period.H1, Period.H24)
ENDPOINTS = (None, FAST)
# Alertable metric → (JSON path, the dashboard tile, the Prometheus sample).
FIGURES = {
    "combined_hit_rate": (("hitRates", "combined"), "combined"),
    "edge_hit_rate": (("hitRates", "edge"), "edge"),
    "kv_hit_rate": (("hitRates", "kv"), "kv"),
    "r2_hit_rate": (("hitRates", "r2_cold"), "r2"),
    "p50_latency": (("latency", "p50"), "p50"),
    "p95_latency": (("latency", "p95"), "p95"),
    "p99_latency": (("latency", "p99"), "p99"),
    "error_rate": (("errorRate",), "error_rate"),
    "requests": (("volume", "total_requests"), "requests"),
}


def _rules_toml() -> str:
    """A rule per figure, period and scope that always breaches (op >= a
    value below any reading), so each one fires and reports its value."""
    out = ["[alerts]", "builtin_rules = false", "min_requests = 0"]
    for p in PERIODS:
        for metric in FIGURES:
            for endpoint in ENDPOINTS:
                if endpoint and not METRICS[metric].per_request:
                    continue  # a store-wide metric (requests) has no endpoint filter
                out += [
                    "[[alerts.rules]]",
                    f'name = "{_rule(metric, p, endpoint)}"',
                    f'metric = "{metric}"',
                    'op = ">="',
                    "threshold = -1",
                    'severity = "warning"',
                    f'window = "{format_duration(p.length)}"',
                ]
                if endpoint:
                    out.append(f'endpoints = ["{endpoint}"]')
    return "\n".join(out) + "\n"


def _rule(metric: str, period: Period, endpoint: str | None) -> str:
    return f"{metric}_{period.name.lower()}" + (f"_{endpoint}" if endpoint else "")


def _microseconds(frame: EventFrame) -> EventFrame:
    t = frame.table
    fast = pc.equal(t["endpoint"].cast(pa.string()), FAST)
    scaled = pc.if_else(fast, pc.multiply(t["latency_ms"], 1e-3), t["latency_ms"])
    return EventFrame(t.set_column(t.schema.get_field_index("latency_ms"), "latency_ms", scaled))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """26 hours of small traffic (isbn in microseconds), its raw events, and a config."""
    tmp = tmp_path_factory.mktemp("consistency")
    path, cfg_file = tmp / "cachemon.duckdb", tmp / "cachemon.toml"
    parts, _ = simulate(HOURS, sim=small_sim(requests_per_hour=2500))
    parts = [(w, _microseconds(f)) for w, f in parts]
    load(path, parts, now=END)
    cfg_file.write_text(_rules_toml())
    cfg = config.with_db(config.load(cfg_file, env={}), str(path))
    return path, cfg_file, cfg, to_pandas(*[f for _, f in parts])


def _truth(events, at, period: Period, endpoint: str | None) -> dict:
    """The figures computed independently from the raw events (pandas/numpy)."""
    end = floor_to(at, MINUTE)
    e = events[
        (events.kind == "request")
        & (events.timestamp >= end - period.length)
        & (events.timestamp < end)
    ]
    if endpoint:
        e = e[e.endpoint == endpoint]
    w = e.sample_interval
    total = float(w.sum())
    share = {t: 100 * float(w[e.tier == t].sum()) / total for t in TIERS}
    return {
        "combined_hit_rate": 100 - share["api"],
        "edge_hit_rate": share["edge"],
        "kv_hit_rate": share["kv"],
        "r2_hit_rate": share["r2"],
        "p50_latency": weighted_quantile(e.latency_ms, w, 0.50),
        "p95_latency": weighted_quantile(e.latency_ms, w, 0.95),
        "p99_latency": weighted_quantile(e.latency_ms, w, 0.99),
        "error_rate": 100 * float(w[e.status == "error"].sum()) / total,
        "requests": total,
    }


def _cli(capsys, cfg_file, db, *args) -> str:
    capsys.readouterr()
    code = main(["--db", str(db), "--config", str(cfg_file), "metrics", *args])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def _get(doc: dict, path: tuple[str, ...]):
    for k in path:
        doc = doc[k]
    return doc


def _prometheus(text: str, period: str) -> dict:
    """The exposition's figures, in the JSON's units (percent, ms)."""
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }

    def get(name, **labels):
        return samples[(name, tuple(sorted((labels | {"period": period}).items())))]

    total = sum(get("cachemon_period_requests", tier=t) for t in TIERS)
    return {
        "combined_hit_rate": 100 * get("cachemon_hit_ratio", tier="combined"),
        "edge_hit_rate": 100 * get("cachemon_hit_ratio", tier="edge"),
        "kv_hit_rate": 100 * get("cachemon_hit_ratio", tier="kv"),
        "r2_hit_rate": 100 * get("cachemon_hit_ratio", tier="r2"),
        "p50_latency": 1000 * get("cachemon_request_latency_seconds", quantile="0.5"),
        "p95_latency": 1000 * get("cachemon_request_latency_seconds", quantile="0.95"),
        "p99_latency": 1000 * get("cachemon_request_latency_seconds", quantile="0.99"),
        "error_rate": 100 * get("cachemon_error_ratio"),
        "requests": total,
    }


def _close(a: float, b: float) -> bool:
    """Equal up to float noise (sums added in another order, a unit scaled)."""
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _tile_kind(metric: str) -> str:
    return "count" if metric == "requests" else "num"


@pytest.mark.parametrize("where", list(ATS))
def test_every_surface_shows_the_same_figures(store, capsys, where):
    db, cfg_file, cfg, events = store
    at = ATS[where]
    transports = Transports(Smtp("mail.invalid", 25, "none"), alert_email=("a@example.org",))
    with store_db.writer(db, END) as con:
        # One evaluation of the rules, from a clean slate: each fires now
        # (`for` 0) and queues an email.
        alerts_evaluate.reset(con)
        checked = alerts_evaluate.run(con, cfg, at, transports, dry_run=True)
        alerts_evaluate.record(con, checked.evaluation, list(checked.outbox))
    states = {s.rule: s for s in checked.evaluation.states}
    (email,) = [json.loads(r.payload) for r in checked.outbox if r.channel == "email"]
    text = email["text"]
    with store_db.reader(db) as con:
        data_until = data_span(con, at)[1]
        for period in PERIODS:
            for endpoint in ENDPOINTS:
                scope = ["--endpoint", endpoint] if endpoint else []
                args = ["--period", period.value, "--at", iso(at), *scope]
                doc = json.loads(_cli(capsys, cfg_file, db, *args))
                prom = _prometheus(
                    _cli(capsys, cfg_file, db, *args, "--format", "prometheus"), period.value
                )
                report = common.overview_report(con, cfg, TimeRange.of(period.value), endpoint, at)
                tiles = {t.key: t for row in common.kpi_tiles(report) for t in row}
                exact = {m: _metric(report.metrics, m) for m in FIGURES}
                truth = _truth(events, at, period, endpoint)
                end = floor_to(at, MINUTE)
                assert doc["window"] == {
                    "start": iso(end - period.length),
                    "end": iso(end),
                }, "the window ends at --at floored to the minute"
                assert report.metrics.window.end == end
                for metric, (path, tile) in FIGURES.items():
                    what = (where, period.value, endpoint, metric)
                    value = exact[metric]
                    # Independent truth: counts and shares exact, quantiles within 1 %.
                    rel = 0.01 if metric.endswith("latency") else 1e-9
                    assert math.isclose(value, truth[metric], rel_tol=rel, abs_tol=1e-9), what
                    # JSON: 6 significant digits of the same number.
                    assert _get(doc, path) == pytest.approx(value, rel=5e-6, abs=1e-12), what
                    digits = 15 if metric == "requests" else jsontext.SIGNIFICANT
                    assert _get(doc, path) == jsontext.significant(value, digits), what
                    # Prometheus: the same number (15 significant digits).
                    assert _close(prom[metric], value), what
                    # Dashboard: the tile the page draws is the value, display-rounded.
                    assert tiles[tile].value == common.fmt(value, _tile_kind(metric)), what
                    # The alert's current value over the same window and scope.
                    name = _rule(metric, period, endpoint)
                    if name in states:
                        s = states[name]
                        assert s.state == "firing" and _close(s.value, value), what
                        unit = METRICS[metric].unit
                        shown = format_value(value, unit)
                        window = f"over {format_duration(period.length)} to {iso(end)}"
                        # The email says the same value, labelled with the rule's window.
                        assert _alert_says(text, s.message, f"Now: {shown} {window}"), what
                        assert format_value(s.value, unit) == shown, what
                assert end <= data_until
        # The alert health of the same instant: each firing alert's value now, labelled.
        report = common.overview_report(con, cfg, TimeRange.of("1h"), None, at)
        banner = common.health_text(report.health)
        for period in PERIODS:
            end = floor_to(at, MINUTE)
            name = _rule("combined_hit_rate", period, None)
            value = _metric(
                common.overview_report(con, cfg, TimeRange.of(period.value), None, at).metrics,
                "combined_hit_rate",
            )
            line = (
                f"{format_value(value, '%')} over {format_duration(period.length)} "
                f"to {iso(end)} now"
            )
            assert line in banner, (name, banner)
    # The email's recent metrics (the last 15 minutes, all endpoints) are the 15m JSON's.
    doc = json.loads(_cli(capsys, cfg_file, db, "--period", "15m", "--at", iso(at)))
    w = doc["window"]
    assert f"RECENT METRICS, ALL ENDPOINTS ({w['start']} to {w['end']})" in text
    h, lat = doc["hitRates"], doc["latency"]
    assert (
        f"- Hit rate: {h['combined']:,.1f}% (edge {h['edge']:,.1f}%, KV {h['kv']:,.1f}%, "
        f"R2 {h['r2_cold']:,.1f}%)" in text
    )
    ms = {q: format_value(lat[q], "ms") for q in ("p50", "p95", "p99")}
    assert f"- Latency: p50 {ms['p50']}, p95 {ms['p95']}, p99 {ms['p99']}" in text


def _alert_says(text: str, message: str, line: str) -> bool:
    """Whether an alert of the email's details with this message has this
    line (the details of one alert: its message and the lines below it)."""
    lines = text.splitlines()
    return any(
        line in lines[i + 1 : i + 4] or f"  {line}" in lines[i + 1 : i + 4]
        for i, x in enumerate(lines)
        if x.endswith(message)
    )


def _metric(m, metric: str) -> float:
    if metric == "requests":
        return m.volume.total
    if metric == "error_rate":
        return m.error_rate
    if metric == "combined_hit_rate":
        return m.combined_hit_rate
    if metric.endswith("_hit_rate"):
        return m.volume.share(metric.removesuffix("_hit_rate"))
    return getattr(m.latency, metric.removesuffix("_latency"))


def test_the_api_serves_the_figures_of_the_cli(store, capsys):
    """GET /metrics of a real server (wall clock: its window slides back to
    where the data ends) and `cachemon metrics --at` that instant agree."""
    db, cfg_file, _, events = store
    proc, base = serve_api(db, "--allow", "127.0.0.1")
    try:
        for period in PERIODS:
            served = httpx.get(base + "/metrics", params={"period": period.value}).json()
            prom = httpx.get(
                base + "/metrics", params={"period": period.value, "format": "prometheus"}
            ).text
            doc = json.loads(_cli(capsys, cfg_file, db, "--period", period.value, "--at", iso(END)))
            for k in ("window", "hitRates", "latency", "volume", "errorRate"):
                assert served[k] == doc[k], (period, k)
            got = _prometheus(prom, period.value)
            truth = _truth(events, END, period, None)
            for metric, (path, _) in FIGURES.items():
                assert _get(doc, path) == pytest.approx(got[metric], rel=5e-6), (period, metric)
                rel = 0.01 if metric.endswith("latency") else 1e-9
                assert math.isclose(got[metric], truth[metric], rel_tol=rel), (period, metric)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_the_overview_page_draws_the_tiles_and_banner_of_the_composition(
    store, monkeypatch, endpoint
):
    """The rendered page (Streamlit's AppTest runs app.py): its KPI tiles and
    health banner are exactly the composition's texts. The data ended in the
    past, so the page's window slides back to END, as the composition's does."""
    db, cfg_file, cfg, _ = store
    transports = Transports(Smtp("mail.invalid", 25, "none"), alert_email=("a@example.org",))
    with store_db.writer(db, END) as con:
        alerts_evaluate.reset(con)
        checked = alerts_evaluate.run(con, cfg, END, transports, dry_run=True)
        alerts_evaluate.record(con, checked.evaluation, list(checked.outbox))
    monkeypatch.setenv("CACHEMON_DB", str(db))
    monkeypatch.setenv("CACHEMON_CONFIG", str(cfg_file))
    page = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    page.session_state["time_range"] = TimeRange.of("1h")
    page.session_state["endpoint"] = endpoint or "all"
    page.run()
    assert not page.exception, [e.value for e in page.exception]
    with store_db.reader(db) as con:
        report = common.overview_report(con, cfg, TimeRange.of("1h"), endpoint, utcnow())
    assert report.metrics.window.end == END
    tiles = [t for row in common.kpi_tiles(report) for t in row]
    assert [(m.label, m.value) for m in page.metric] == [(t.label, t.value) for t in tiles]
    banners = [b.value for b in (*page.success, *page.warning, *page.error)]
    assert common.health_text(report.health) in banners
    assert "when it fired" in common.health_text(report.health)


def test_chromium_shows_the_composition_tiles(store):
    """In a real browser (Debian's Chromium), the Overview's KPI tiles read
    the composition's texts (range 1h from the URL, all endpoints)."""
    from playwright.sync_api import sync_playwright  # only this test needs the browser driver

    db, cfg_file, cfg, _ = store
    with store_db.reader(db) as con:
        report = common.overview_report(con, cfg, TimeRange.of("1h"), None, utcnow())
    want = [(t.label, t.value) for row in common.kpi_tiles(report) for t in row]
    with streamlit_server({"CACHEMON_DB": str(db), "CACHEMON_CONFIG": str(cfg_file)}) as url:
        with sync_playwright() as p:
            browser = chromium(p)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(url + "/?range=1h")
            tiles = page.locator('[data-testid="stMetric"]')
            tiles.nth(len(want) - 1).wait_for(timeout=60_000)
            shown = [
                (
                    tiles.nth(i).locator('[data-testid="stMetricLabel"]').inner_text().strip(),
                    tiles.nth(i).locator('[data-testid="stMetricValue"]').inner_text().strip(),
                )
                for i in range(tiles.count())
            ]
            browser.close()
    assert shown == want


def test_readings_are_labelled_with_their_windows():
    """The pure rendering: each value with its window and when it was read."""
    rule = replace(BUILTIN[0], window=timedelta(minutes=15))
    fired = readings.reading(rule, 36.7, T0, None)
    data_until = T0 + timedelta(minutes=26)
    now = readings.reading(rule, 58.1, T0 + timedelta(minutes=25, seconds=30), data_until)
    values = readings.AlertValues(readings.describe(rule, "title"), fired, now)
    assert values.text() == (
        f"{rule.describe()} (title): 36.7% over 15m to 2026-11-19T08:00:00Z when it fired; "
        "58.1% over 15m to 2026-11-19T08:25:00Z now"
    )
    assert values.to_json()["now"] == {
        "value": 58.1,
        "unit": "%",
        "window": "15m",
        "windowEnd": "2026-11-19T08:25:00Z",
    }
