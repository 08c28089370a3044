"""The runner's logic outside the jobs shell: the run log (records, the
heartbeat jobs named by their specs, start-up), the publish back-off, and
the scheduled jobs honouring [ingest] clock_skew."""

from __future__ import annotations

import fcntl
import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from cachemon import config, settings
from cachemon.errors import StoreError
from cachemon.ingest import load as ingest_load
from cachemon.runner import publishing, runlog
from cachemon.runner import runs as runner_runs
from cachemon.store import db as store_db
from cachemon.store import lock as store_lock
from cachemon.usecases.scheduled import Jobs

T0 = datetime(2026, 3, 2, tzinfo=UTC)
M = timedelta(minutes=1)


def _cfg(tmp_path, skew: timedelta | None = None) -> settings.Config:
    cfg = config.with_db(settings.Config(), str(tmp_path / "r.duckdb"))
    cfg = replace(cfg, simulator=replace(cfg.simulator, requests_per_hour=600, catalog_keys=200))
    if skew is not None:
        cfg = replace(cfg, ingest=replace(cfg.ingest, clock_skew=skew))
    return cfg


class Pings:
    def __init__(self):
        self.count = 0

    def ping(self) -> None:
        self.count += 1


def _rec(job: str, outcome: str = "ok") -> runner_runs.RunRecord:
    return runner_runs.RunRecord(job, T0, T0, outcome, None, 1)


def test_the_heartbeat_jobs_are_those_whose_spec_says_so(tmp_path):
    specs = [
        runner_runs.JobSpec("watch", every=M, heartbeat=True),
        runner_runs.JobSpec("tidy", every=M),
    ]
    pings = Pings()
    log = runlog.RunLog(_cfg(tmp_path), specs, lambda: T0, pings)
    log(_rec("tidy"))
    log.published()
    log(_rec("watch", "error"))
    log.published()
    assert pings.count == 0  # neither a non-heartbeat job nor a failure pings
    log(_rec("watch"))
    log.published()
    assert pings.count == 1
    with store_db.writer(tmp_path / "r.duckdb", T0, publish=False) as con:
        assert sorted(r.job for r in runner_runs.recent_runs(con, T0 - M)) == [
            "tidy",
            "watch",
            "watch",
        ]


def test_records_the_store_refuses_are_kept_and_written_later(tmp_path, monkeypatch):
    monkeypatch.setenv("CACHEMON_WRITE_WAIT_SECONDS", "0")
    cfg = _cfg(tmp_path)
    log = runlog.RunLog(cfg, runner_runs.schedule(cfg), lambda: T0)
    log(_rec("ingest"))  # creates the store
    outsider = os.open(store_lock.lock_path(cfg.store.path), os.O_RDWR)
    fcntl.flock(outsider, fcntl.LOCK_EX)
    try:
        log(_rec("alerts"))
        assert not log.flush() and [r.job for r in log.pending] == ["alerts"]
    finally:
        os.close(outsider)
    assert log.flush() and log.pending == []
    with store_db.writer(cfg.store.path, T0, publish=False) as con:
        assert runner_runs.last_runs(con) == {"ingest": T0, "alerts": T0}


def test_start_up_waits_for_a_busy_store_on_the_sleep_it_is_given(tmp_path, monkeypatch):
    monkeypatch.setenv("CACHEMON_WRITE_WAIT_SECONDS", "0")
    cfg = _cfg(tmp_path)
    with store_db.writer(cfg.store.path, T0):
        pass
    outsider = os.open(store_lock.lock_path(cfg.store.path), os.O_RDWR)
    fcntl.flock(outsider, fcntl.LOCK_EX)
    slept = []
    try:
        got = runlog.last_runs_at_start(cfg, lambda: T0, lambda: len(slept) >= 3, slept.append)
    finally:
        os.close(outsider)
    assert got is None and slept == [1.0, 2.0, 4.0]  # doubling, and stopped
    assert runlog.last_runs_at_start(cfg, lambda: T0, lambda: False, slept.append) == {}


@pytest.mark.parametrize("skew, kept", [(timedelta(minutes=5), True), (timedelta(0), False)])
def test_past_runs_drop_runs_ahead_of_now_beyond_the_configured_skew(skew, kept):
    last = {"ingest": T0 + timedelta(seconds=30), "alerts": T0 - M}
    got = runlog.past_runs(last, T0, skew)
    assert ("ingest" in got) is kept and got["alerts"] == T0 - M


def test_a_failed_publish_backs_off_doubling_then_resets():
    now = [0.0]
    answers = [OSError("disk full"), OSError("disk full"), OSError("disk full"), None]
    calls, published = [], []

    def publish(path):
        calls.append(now[0])
        answer = answers.pop(0)
        if answer is not None:
            raise answer

    p = publishing.Publisher("s.duckdb", lambda: published.append(now[0]), lambda: now[0], publish)
    for t in (0.0, 1.0, 2.0, 5.0, 6.0, 14.0, 15.0):
        now[0] = t
        p.publish()
    assert calls == [0.0, 2.0, 6.0, 14.0] and published == [14.0]  # waits 2, 4, 8 s
    assert p.publish() and calls == [0.0, 2.0, 6.0, 14.0]  # nothing changed: no copy
    p.changed()
    now[0] = 15.0
    answers.append(OSError("again"))
    assert not p.publish() and p.retry_at == 15.0 + publishing.RETRY_MIN_S  # the wait reset


def test_the_retry_wait_stops_growing_at_its_maximum():
    p = publishing.Publisher("s", monotonic=lambda: 1e9, publish=lambda path: 1 / 0)
    for _ in range(20):
        p.retry_at = 0.0
        p.publish()
    assert p.retry_delay == publishing.RETRY_MAX_S


@pytest.mark.parametrize("skew, fails", [(timedelta(minutes=5), False), (timedelta(0), True)])
def test_an_empty_ingest_fails_only_when_the_data_is_ahead_beyond_the_skew(tmp_path, skew, fails):
    cfg = _cfg(tmp_path, skew)
    ingest_load.simulate_until(cfg, T0 + timedelta(hours=1), None)
    jobs = Jobs(cfg)
    earlier = T0 + timedelta(hours=1) - 2 * M  # a clock 2 minutes behind the data's end
    if fails:
        with pytest.raises(StoreError, match="written by a clock ahead of real time"):
            jobs.ingest(earlier)
    else:
        assert jobs.ingest(earlier) == 0


def test_the_report_job_logs_what_became_of_its_delivery(tmp_path, caplog):
    cfg = _cfg(tmp_path)
    day_after = T0 + timedelta(days=1, hours=3)
    ingest_load.simulate_until(cfg, T0 + timedelta(hours=2), None)
    env = {"DISCORD_WEBHOOK_URL": "http://127.0.0.1:9/never"}  # nothing listens: refused
    with caplog.at_level("INFO", logger="cachemon.jobs"):
        assert Jobs(cfg, env=env).report(day_after) == 1
    assert "report: delivery 1 via discord: failed" in caplog.text
