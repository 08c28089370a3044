"""Readers always see the newest data: a `cachemon serve --cache-seconds 0`
and a dashboard in a browser, both started before an import moved the data
hours forward, answer with the import's data (DuckDB hands back the
already-open database for a path, so each publish is a new version file)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from datetime import timedelta

import httpx
import pytest

from cachemon import config, settings
from cachemon.clock import MINUTE, floor_to, iso, parse_instant, utcnow
from cachemon.timerange import stamp
from cachemon.usecases import demo
from tests.helpers import ROOT, SMALL, simulate
from tests.helpers.servers import chromium, free_port, streamlit_server


@pytest.fixture
def old_store(tmp_path):
    """Two hours of small traffic that ended three hours ago; and the end of
    its data (the minute after its last event)."""
    db = tmp_path / "r.duckdb"
    end = floor_to(utcnow(), MINUTE) - timedelta(hours=3)
    demo.demo(replace(config.with_db(settings.Config(), str(db)), simulator=SMALL), 2 / 24, end)
    return db, end


def _import_until(tmp_path, db, start, name) -> str:
    """Import the 30 minutes of events after `start` through the CLI; the
    expected dataUntil, from the file itself (its last event's minute, plus one)."""
    _, df = simulate(0.5, start=start, step=timedelta(minutes=30))
    path = tmp_path / f"{name}.parquet"
    df.to_parquet(path, index=False)
    p = subprocess.run(
        [sys.executable, "-m", "cachemon", "--db", str(db), "import", str(path)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    return iso(floor_to(df.timestamp.max().to_pydatetime(), MINUTE) + MINUTE)


def _serve(db):
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cachemon",
            "--db",
            str(db),
            "serve",
            "--port",
            str(port),
            "--allow",
            "127.0.0.1",
            "--cache-seconds",
            "0",
        ],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        assert proc.poll() is None, "the server exited"
        try:
            httpx.get(base + "/healthz", timeout=1)
            return proc, base
        except httpx.HTTPError:
            time.sleep(0.2)
    pytest.fail("the server did not start")


def test_a_running_server_answers_with_each_imports_data(old_store, tmp_path, results):
    db, end = old_store
    proc, base = _serve(db)
    seen = []
    try:
        first = httpx.get(base + "/healthz").json()
        # No runner writes this store, so /healthz is degraded (never "ok").
        assert first["dataUntil"] == iso(end) and first["status"] == "degraded"
        now = utcnow()
        for i, start in enumerate(
            (now - timedelta(minutes=100), floor_to(now, MINUTE) - timedelta(minutes=31))
        ):
            expected = _import_until(tmp_path, db, start, f"import{i}")
            h = httpx.get(base + "/healthz").json()
            m = httpx.get(base + "/metrics", params={"period": "15m"})
            seen.append((expected, h["dataUntil"], m.headers["X-Data-Until"]))
            assert h["dataUntil"] == expected, seen
            assert m.status_code == 200 and m.headers["X-Data-Until"] == expected, seen
        # The last import is minutes old: the data is no longer named stale
        # (the status stays degraded only because no runner writes this store).
        assert h["status"] == "degraded" and not any("newest data" in x for x in h["problems"]), h
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    results(
        "API reader started before imports",
        "2 CLI imports moving data 3 h forward, `serve --cache-seconds 0`",
        len(seen),
        "/healthz and /metrics answered each import's dataUntil at once",
    )


def test_a_dashboard_in_a_browser_shows_data_imported_after_it_started(
    old_store, tmp_path, results
):
    from playwright.sync_api import sync_playwright

    db, end = old_store
    # A long refresh tick: before the fix the page kept its cached read for the whole tick.
    with streamlit_server({"CACHEMON_DB": str(db), "CACHEMON_REFRESH_SECONDS": "3600"}) as url:
        with sync_playwright() as p:
            browser = chromium(p)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(url)
                # The page shows instants one way (timerange.stamp), the sidebar's data span too.
                page.get_by_text(stamp(end), exact=False).first.wait_for(timeout=60_000)
                expected = _import_until(
                    tmp_path, db, floor_to(utcnow(), MINUTE) - timedelta(minutes=31), "late"
                )
                page.reload()
                shown = stamp(parse_instant(expected))
                page.get_by_text(shown, exact=False).first.wait_for(timeout=30_000)
            finally:
                browser.close()
    results(
        "dashboard started before an import",
        "1 CLI import moving data 3 h forward, refresh tick 1 h",
        1,
        f"the page showed data until {expected} on the next load",
    )
