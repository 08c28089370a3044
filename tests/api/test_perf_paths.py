"""The API's uncached path (#22): the window figures are kept per published
snapshot (`api.app.Memos`), so a response computes only what depends on its
instant; new data (a new snapshot) is never answered from the old one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from starlette.testclient import TestClient

from cachemon import settings as cm_settings
from cachemon.api import app as api_app
from cachemon.clock import Period
from cachemon.store import db as store_db
from cachemon.usecases import metrics_report
from tests.helpers import T0, load, simulate
from tests.helpers.servers import serve_api

NOW = datetime(2026, 12, 1, tzinfo=UTC)  # after the data: every window slides back to its end


def _truth(df, start, end) -> float:
    r = df[(df.kind == "request") & (df.timestamp >= start) & (df.timestamp < end)]
    return float(r.sample_interval.sum())


def _store(tmp_path, hours):
    path = tmp_path / "cachemon.duckdb"
    parts, truth = simulate(hours)
    load(path, parts)
    return path, parts, truth


def test_uncached_responses_come_from_the_memo_and_equal_a_fresh_build(tmp_path):
    path, _, df = _store(tmp_path, 2)
    cfg = cm_settings.Config(store=cm_settings.StoreConfig(path=str(path)))
    settings = api_app.ApiSettings(cache_for=timedelta(0), rate_limit=1000)
    clock = [NOW]
    app = api_app.create_app(cfg, settings, lambda: clock[0])
    with TestClient(app) as client:
        bodies = []
        for i in range(3):
            clock[0] = NOW + timedelta(minutes=7 * i, seconds=3)
            r = client.get("/metrics", params={"period": "1h"})
            assert r.status_code == 200 and r.headers["Age"] == "0"
            bodies.append((clock[0], r.json()))
            p = client.get("/metrics", params={"period": "1h", "format": "prometheus"})
            with store_db.reader(path) as con:
                fresh = metrics_report.build(con, cfg, Period.H1, clock[0])
            assert r.json() == fresh.to_json() and p.text == fresh.to_prometheus()
    memo = app.state.memos.current
    assert memo is not None and memo.hits >= 4  # every request after the first kept its figures
    end = T0 + timedelta(hours=2)
    for at, body in bodies:
        assert body["timestamp"] == at.strftime("%Y-%m-%dT%H:%M:00Z")  # to the minute
        assert body["window"]["end"] == "2026-11-19T10:00:00Z" and body["stale"] is True
        assert body["volume"]["total_requests"] == pytest.approx(
            _truth(df, end - timedelta(hours=1), end), rel=1e-12
        )


def test_a_new_snapshot_gets_a_new_memo(tmp_path):
    path, _, df = _store(tmp_path, 2)
    cfg = cm_settings.Config(store=cm_settings.StoreConfig(path=str(path)))
    settings = api_app.ApiSettings(cache_for=timedelta(0), rate_limit=1000)
    app = api_app.create_app(cfg, settings, lambda: NOW)
    with TestClient(app) as client:
        before = client.get("/metrics", params={"period": "1h"}).json()
        first = app.state.memos.current
        more, extra = simulate(1, start=T0 + timedelta(hours=2))
        load(path, more)  # the writer publishes a new snapshot
        after = client.get("/metrics", params={"period": "1h"}).json()
    assert app.state.memos.current is not first
    assert app.state.memos.current.version != first.version
    end = T0 + timedelta(hours=3)
    assert before["window"]["end"] == "2026-11-19T10:00:00Z"
    assert after["window"]["end"] == "2026-11-19T11:00:00Z"
    assert after["volume"]["total_requests"] == pytest.approx(
        _truth(extra, end - timedelta(hours=1), end), rel=1e-12
    )


def test_a_served_store_that_gets_new_data_is_never_answered_stale(tmp_path):
    """A real `cachemon serve` with its response cache off, over a store a
    writer adds an hour to while it serves."""
    path, _, df = _store(tmp_path, 2)
    proc, base = serve_api(path, "--allow", "127.0.0.1", "--cache-seconds", "0")
    try:
        for _ in range(3):
            old = httpx.get(base + "/metrics", params={"period": "1h"}).json()
        more, extra = simulate(1, start=T0 + timedelta(hours=2))
        load(path, more)
        new = httpx.get(base + "/metrics", params={"period": "1h"})
        prom = httpx.get(base + "/metrics", params={"period": "1h", "format": "prometheus"})
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert old["dataUntil"] == "2026-11-19T10:00:00Z"
    assert new.headers["X-Data-Until"] == "2026-11-19T11:00:00Z"
    end = T0 + timedelta(hours=3)
    truth = _truth(extra, end - timedelta(hours=1), end)
    assert new.json()["volume"]["total_requests"] == pytest.approx(truth, rel=1e-12)
    line = next(
        ln
        for ln in prom.text.splitlines()
        if ln.startswith("cachemon_request_latency_seconds_count")
    )
    assert float(line.split()[-1]) == pytest.approx(truth, rel=1e-12)
