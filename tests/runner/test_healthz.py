"""cachemon watching itself: /healthz (and `selfcheck`, which the sidebar
shares) report the job runner's last successful ingest and failing jobs,
so a stalled runner or a failing job is never reported healthy."""

from __future__ import annotations

import shutil
from datetime import timedelta

import httpx
import pytest

from cachemon import config
from cachemon.api.app import health_body
from cachemon.clock import floor_to, iso, utcnow
from cachemon.runner import runs as runner_runs
from cachemon.runner import selfcheck
from cachemon.store import db as store_db
from tests.helpers import T0
from tests.helpers.servers import serve_api as _serve

CFG = config.load(env={})  # ingest every minute
M = timedelta(minutes=1)


def _runs(db, now, *runs) -> None:
    """Record runs (job, outcome, started_at) in the run log and publish."""
    with store_db.writer(db, now) as con:
        for job, outcome, started in runs:
            err = "SourceError: canary-secret-77 refused" if outcome == "error" else None
            runner_runs.record_run(
                con,
                runner_runs.RunRecord(
                    job, started, started + timedelta(seconds=1), outcome, err, 1
                ),
            )


def _check(db, now) -> selfcheck.RunnerCheck:
    with store_db.reader(db) as con:
        return selfcheck.check(con, CFG, now)


@pytest.fixture
def copy(loaded_store, tmp_path):
    """The loaded store's data in a store of this test's own."""
    db = tmp_path / "c.duckdb"
    shutil.copy(loaded_store[0], db)
    with store_db.writer(db, T0):
        pass  # publishes its snapshot
    return db


def test_ingest_is_stalled_after_three_missed_intervals(copy):
    assert _check(copy, T0).problems() == [
        "the job runner has never ingested successfully into this store (is `python -m jobs` running?)"
    ]
    _runs(
        copy,
        T0,
        ("ingest", "ok", T0),
        ("ingest", "error", T0 + M),
        ("ingest", "skipped", T0 + 2 * M),
    )
    on_time = _check(copy, T0 + 3 * M)
    assert on_time.last_ingest_ok == T0 and not on_time.ingest_stalled
    late = _check(copy, T0 + 3 * M + timedelta(seconds=1))
    assert late.ingest_stalled and not late.healthy
    assert late.problems()[0] == (
        f"no successful ingest for 3 min (last at {iso(T0)}, expected every 60 s; "
        "is `python -m jobs` running?)"
    )
    # The failed ingest is a failing job too, named with when it failed.
    assert [(f.job, f.failed_at, f.last_ok) for f in late.failing] == [("ingest", T0 + M, T0)]


def test_a_job_is_failing_until_its_next_run_succeeds(copy):
    _runs(
        copy,
        T0,
        ("ingest", "ok", T0),
        ("alerts", "ok", T0),
        ("report", "error", T0 - 6 * 60 * M),
        ("alerts", "error", T0 + 15 * M),
        ("ingest", "ok", T0 + 15 * M),
    )
    c = _check(copy, T0 + 16 * M)
    assert not c.ingest_stalled
    assert [(f.job, f.failed_at, f.last_ok) for f in c.failing] == [
        ("alerts", T0 + 15 * M, T0),
        ("report", T0 - 6 * 60 * M, None),
    ]
    assert c.problems() == [
        f"job alerts failed at {iso(T0 + 15 * M)} (60 s ago)",
        f"job report failed at {iso(T0 - 6 * 60 * M)} (6 h ago)",
    ]
    _runs(copy, T0, ("alerts", "ok", T0 + 30 * M), ("report", "skipped", T0 + 30 * M))
    c = _check(copy, T0 + 30 * M)
    assert [f.job for f in c.failing] == ["report"]  # a skipped slot is no success


def test_health_body_is_degraded_even_while_the_data_is_fresh():
    now = T0 + 10 * M
    fresh = (T0, now - timedelta(seconds=30))
    ok = selfcheck.RunnerCheck(now, M, now - timedelta(seconds=20), (), 5 * M)
    failing = selfcheck.RunnerCheck(
        now,
        M,
        now - timedelta(seconds=20),
        (selfcheck.FailingJob("alerts", now - 2 * M, T0),),
        5 * M,
    )
    assert health_body(fresh, ok, now, 10 * M) | {"runner": None} == {
        "status": "ok",
        "store": "readable",
        "dataUntil": iso(fresh[1]),
        "dataAgeSeconds": 30,
        "runner": None,
        "problems": [],
    }
    body = health_body(fresh, failing, now, 10 * M)
    assert body["status"] == "degraded" and body["problems"] == [
        f"job alerts failed at {iso(now - 2 * M)} (2 min ago)"
    ]
    assert body["runner"]["failingJobs"] == [
        {"job": "alerts", "failedAt": iso(now - 2 * M), "lastOk": iso(T0)}
    ]
    assert health_body((T0, T0 + M), ok, now, 5 * M)["status"] == "stale"


def _healthz(db) -> httpx.Response:
    proc, base = _serve(db)
    try:
        return httpx.get(base + "/healthz")
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_healthz_reports_the_runner(copy, results):
    """A real server over the store's run log: a working runner with old
    data is `stale`; a job whose last run failed makes it `degraded`, with
    the job and when, and without the error's text. (A server per state:
    seeing each new publish in one server is the store's part.)"""
    now = floor_to(utcnow(), timedelta(seconds=1))
    _runs(copy, now, ("ingest", "ok", now - timedelta(seconds=30)), ("alerts", "ok", now - 10 * M))
    healthy = _healthz(copy).json()
    _runs(copy, now, ("alerts", "error", now - timedelta(seconds=10)))
    r = _healthz(copy)
    # The runner is fine; the loaded store's data is old: stale, not degraded.
    assert healthy["status"] == "stale" and not healthy["runner"]["ingestStalled"], healthy
    assert (
        healthy["runner"]["lastIngestOk"] == iso(now - timedelta(seconds=30))
        and healthy["runner"]["failingJobs"] == []
    )
    body = r.json()
    assert r.status_code == 200 and body["status"] == "degraded"
    assert body["runner"]["failingJobs"] == [
        {"job": "alerts", "failedAt": iso(now - timedelta(seconds=10)), "lastOk": iso(now - 10 * M)}
    ]
    assert body["problems"][0].startswith(
        f"job alerts failed at {iso(now - timedelta(seconds=10))}"
    )
    assert "canary-secret-77" not in r.text  # /healthz is unauthenticated: no error text
    results(
        "runner failing while data looks fine",
        "a job's last run failed; ingest overdue (unit: 3 intervals + 1 s)",
        "2 servers, 6 run-log states",
        "/healthz `degraded` naming the job and when (no error text); the "
        "dashboard sidebar names it (headless and in Chromium)",
    )
