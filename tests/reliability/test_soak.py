"""Concurrency soak: the job runner (writing every second on a fast clock),
the dashboard (real Streamlit, a real browser reloading it), an analyst
reading the snapshot and the metrics API under load, all at once. No lock
error, no 5xx, no exception on a page, and memory that stays bounded.

CI runs 90 s; CACHEMON_RELIABILITY=long runs the documented 10 minutes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import duckdb
import httpx

from cachemon.store import db as store_db
from cachemon.store import queries, snapshots
from tests.helpers import ROOT
from tests.helpers.servers import chromium, free_port, streamlit_server
from tests.helpers.suite import LONG

SECONDS = 600 if LONG else 90
CONFIG = "[simulator]\nseed = 3\nrequests_per_hour = 20000\ncatalog_keys = 8000\n"


def _rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _has_data(db) -> bool:
    if not snapshots.snapshot_path(db).exists():
        return False
    with store_db.reader(db) as con:
        return queries.data_span(con) is not None


def _open_as_documented(snap, counts: Counter) -> duckdb.DuckDBPyConnection:
    """What docs/analysts.md tells an analyst: open the snapshot read-only,
    and open again if that fails while the runner publishes a new one."""
    for attempt in range(3):
        try:
            return duckdb.connect(str(snap), read_only=True)
        except duckdb.Error:
            if attempt == 2:
                raise
            counts["analyst opens tried again"] += 1
            time.sleep(0.1)


def test_runner_dashboard_analyst_and_api_at_once(tmp_path, results):
    db, cfg_file = tmp_path / "soak.duckdb", tmp_path / "soak.toml"
    cfg_file.write_text(CONFIG)
    env = dict(os.environ, CACHEMON_DB=str(db), CACHEMON_CONFIG=str(cfg_file), PYTHONPATH=str(ROOT))
    stop = threading.Event()
    errors: list[str] = []
    counts: Counter = Counter()
    runner = subprocess.Popen(
        [sys.executable, "-m", "jobs", "--clock-speed", "60"],
        cwd=ROOT,
        env=env,
        stdout=(tmp_path / "runner.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    port = free_port()
    api = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cachemon",
            "serve",
            "--port",
            str(port),
            "--allow",
            "127.0.0.1",
            "--cache-seconds",
            "0",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while not _has_data(db) and time.time() < deadline:  # before it, 503 "no data yet" is right
            time.sleep(0.2)
        assert _has_data(db), (tmp_path / "runner.log").read_text()[-2000:]

        def analyst():
            while not stop.is_set():
                try:
                    con = _open_as_documented(snapshots.snapshot_path(db), counts)
                    for _ in range(5):
                        con.execute(
                            "SELECT tier, sum(requests) FROM v1.requests_minute GROUP BY tier"
                        ).fetchall()
                        counts["analyst queries"] += 1
                    con.close()
                except duckdb.Error as exc:
                    errors.append(f"analyst: {exc}")
                time.sleep(0.1)

        def load():
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    for params in ({"period": "15m"}, {"period": "1h", "format": "prometheus"}):
                        r = client.get(f"http://127.0.0.1:{port}/metrics", params=params)
                        counts[f"api {r.status_code}"] += 1
                        if r.status_code >= 500:
                            errors.append(f"api {r.status_code}: {r.text[:200]}")

        threads = [threading.Thread(target=f, daemon=True) for f in (analyst, load, load)]
        for t in threads:
            t.start()
        rss = {"runner": [], "api": [], "dashboard": []}
        with streamlit_server(
            {"CACHEMON_DB": str(db), "CACHEMON_CONFIG": str(cfg_file)}, with_pid=True
        ) as (url, dash_pid):
            from playwright.sync_api import sync_playwright

            with sync_playwright() as p:
                browser = chromium(p)
                page = browser.new_page()
                end, next_sample = time.time() + SECONDS, 0.0
                while time.time() < end:
                    page.goto(url)
                    page.get_by_text("Combined hit rate %").first.wait_for(timeout=60_000)
                    counts["dashboard loads"] += 1
                    if (
                        page.locator('[data-testid="stException"]').count()
                        or "Traceback" in page.content()
                    ):
                        errors.append("dashboard: exception on the page")
                    if time.time() >= next_sample:
                        for name, pid in (
                            ("runner", runner.pid),
                            ("api", api.pid),
                            ("dashboard", dash_pid),
                        ):
                            if pid:
                                rss[name].append(_rss_mib(pid))
                        next_sample = time.time() + 5
                browser.close()
        stop.set()
        for t in threads:
            t.join(timeout=60)
    finally:
        stop.set()
        for proc in (runner, api):
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    log = (tmp_path / "runner.log").read_text()
    with store_db.reader(db) as con:
        failed = con.execute("SELECT job, error FROM job_runs WHERE outcome = 'error'").fetchall()
        ticks = con.execute(
            "SELECT count(*) FROM job_runs WHERE job = 'ingest' AND outcome = 'ok'"
        ).fetchall()[0][0]
    assert not errors, errors[:5]
    assert not failed and "lock" not in log.lower().replace("runner.lock", ""), (
        failed or log[-2000:]
    )
    assert (
        runner.returncode == 0
        and counts["dashboard loads"] >= 10
        and counts["analyst queries"] >= 50
    )
    assert counts["api 200"] >= 50 and not [k for k in counts if k.startswith("api 5")]
    # Memory: after warm-up (the first third), no process grows by more than a quarter.
    growth = {}
    for name, series in rss.items():
        if len(series) >= 3:
            warm = series[len(series) // 3]
            growth[name] = (warm, max(series[len(series) // 3 :]))
            assert growth[name][1] <= warm * 1.25 + 20, (name, series)
    memory = ", ".join(f"{n} {a:.0f}→{b:.0f} MiB" for n, (a, b) in growth.items())
    results(
        "concurrency soak",
        f"runner ingesting on a 60× clock, a browser reloading the dashboard, an analyst "
        f"reading, 2 clients loading the API, for {SECONDS} s",
        f"{ticks} ingest ticks, "
        f"{counts['dashboard loads']} page loads, {counts['analyst queries']} analyst queries, "
        f"{counts['api 200']} API answers",
        f"0 lock errors, 0 5xx, 0 page exceptions; RSS after warm-up: {memory}",
    )
