"""The dashboard: headless (AppTest) and in a real browser (Chromium)."""

import os
import socket
import subprocess
import sys
import time
from dataclasses import replace

import httpx
import pytest
from streamlit.testing.v1 import AppTest

from cachemon import config, pipeline
from cachemon.clock import utcnow

from conftest import ROOT, SMALL


@pytest.fixture(scope="module")
def live_store(tmp_path_factory):
    """Six hours of small traffic ending now, as the run command produces."""
    db = tmp_path_factory.mktemp("dash") / "cachemon.duckdb"
    cfg = replace(config.with_db(config.Config(), str(db)), simulator=SMALL)
    pipeline.demo(cfg, 0.25, utcnow())
    return db


def test_overview_renders_kpis_from_the_store(live_store, monkeypatch):
    monkeypatch.setenv("CACHEMON_DB", str(live_store))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception and not at.error
    labels = {m.label: m.value for m in at.metric}
    assert set(labels) >= {"Combined hit rate %", "Edge hit rate %", "p99 latency ms", "Requests"}
    assert 50 < float(labels["Combined hit rate %"]) <= 100
    assert float(labels["Requests"].replace(",", "")) > 1000


def test_overview_says_what_is_wrong_without_a_store(tmp_path, monkeypatch):
    monkeypatch.setenv("CACHEMON_DB", str(tmp_path / "none.duckdb"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception
    assert "no store at" in at.error[0].value


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(live_store):
    port = _free_port()
    env = dict(os.environ, CACHEMON_DB=str(live_store), PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            if httpx.get(url + "/_stcore/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("streamlit did not start")
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def test_real_browser_shows_real_numbers(server, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(server)
        page.get_by_text("Combined hit rate %").wait_for(timeout=60_000)
        metric = page.locator('[data-testid="stMetric"]').first
        value = metric.locator('[data-testid="stMetricValue"]').inner_text()
        page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)
        assert 50 < float(value) <= 100
        assert page.locator('[data-testid="stException"]').count() == 0
        browser.close()


def test_overview_shows_health_from_alert_states(live_store, monkeypatch):
    monkeypatch.setenv("CACHEMON_DB", str(live_store))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    banners = [b.value for b in (*at.success, *at.warning, *at.error)]
    # The demo evaluated the alert rules over its span, so health is known, not "never evaluated".
    assert any(b.startswith("Health: **") for b in banners)
    assert not any("have not been evaluated" in b for b in banners)


def test_alerts_page_lists_states_and_creates_a_silence(live_store, monkeypatch):
    from cachemon import alerts, store

    monkeypatch.setenv("CACHEMON_DB", str(live_store))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("pages/alerts.py").run()
    assert not at.exception and not at.error
    assert [h.value for h in at.header] == ["Alerts"]
    states = at.dataframe[1].value  # "All rule instances"
    assert {"p99_latency", "miss_rate_critical", "edge_hit_rate"} <= set(states["rule"])
    at.selectbox[-1].select("p99_latency")
    at.text_input[-1].input("deploy in progress")
    at.button[0].click().run()
    assert any("muted until" in s.value for s in at.success), [e.value for e in at.error]
    with store.reader(live_store) as con:
        assert [s.reason for s in alerts.active_silences(con, utcnow())] == ["deploy in progress"]
