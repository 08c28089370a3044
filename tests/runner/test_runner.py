"""The runner's logic with an injected clock, and the real runner process
with a fast clock."""

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from pathlib import Path

import pytest

from cachemon.errors import CachemonError, StoreError
from cachemon.ingest import write as ingest_write
from cachemon.runner import runs as runner_runs
from cachemon.store import db as store_db
from cachemon.store import queries, snapshots
from tests.helpers import ROOT

UTC = UTC
D = datetime(2026, 11, 19, tzinfo=UTC)


def test_slots():
    every = runner_runs.JobSpec("ingest", every=timedelta(minutes=15))
    assert every.latest_slot(D + timedelta(minutes=44)) == D + timedelta(minutes=30)
    assert every.next_slot(D + timedelta(minutes=44)) == D + timedelta(minutes=45)
    assert every.slots_between(D, D + timedelta(minutes=61)) == 4
    daily = runner_runs.JobSpec("costs", at=dtime(3, 0))
    assert daily.latest_slot(D + timedelta(hours=2)) == D - timedelta(hours=21)
    assert daily.latest_slot(D + timedelta(hours=3)) == D + timedelta(hours=3)
    assert daily.next_slot(D + timedelta(hours=4)) == D + timedelta(days=1, hours=3)
    with pytest.raises(CachemonError, match="exactly one"):
        runner_runs.JobSpec("x")


def _runner(jobs, last=None):
    log = []
    return runner_runs.Runner(jobs, log.append, last), log


def test_a_day_of_schedule_in_a_moment():
    calls = []
    r, log = _runner(
        [
            (runner_runs.JobSpec("ingest", every=timedelta(minutes=1)), calls.append),
            (runner_runs.JobSpec("costs", at=dtime(3, 0)), calls.append),
        ]
    )
    t = D
    while t < D + timedelta(days=1):
        r.tick(t)
        t += timedelta(seconds=20)
    ingest_runs = [c for c in calls if c.hour or c.minute or True]
    assert len([x for x in log if x.job == "ingest" and x.outcome == "ok"]) == 1440
    # A daily job never run waits for its first slot rather than running at start.
    assert [(x.outcome, x.started_at) for x in log if x.job == "costs"] == [
        ("scheduled", D),
        ("ok", D + timedelta(hours=3)),
    ]
    assert len(ingest_runs) == 1441


def test_exceptions_are_recorded_and_other_jobs_go_on(caplog):
    def boom(now):
        raise RuntimeError("disk on fire")

    seen = []
    r, log = _runner(
        [
            (runner_runs.JobSpec("bad", every=timedelta(minutes=1)), boom),
            (runner_runs.JobSpec("good", every=timedelta(minutes=1)), seen.append),
        ]
    )
    r.tick(D)
    r.tick(D + timedelta(seconds=30))  # failed job not retried within its slot
    assert [(x.job, x.outcome) for x in log] == [("bad", "error"), ("good", "ok")]
    assert "RuntimeError: disk on fire" in log[0].error and "Traceback" in caplog.text
    assert seen == [D]


def test_missed_slots_run_once_and_are_recorded_as_skipped():
    calls = []
    spec = runner_runs.JobSpec("ingest", every=timedelta(minutes=1))
    r, log = _runner([(spec, calls.append)], last={"ingest": D})
    r.tick(D + timedelta(minutes=10, seconds=5))  # an overrun or downtime of 10 minutes
    assert calls == [D + timedelta(minutes=10, seconds=5)]
    assert [(x.outcome, x.slots) for x in log] == [("skipped", 9), ("ok", 1)]


def test_daily_job_catches_up_once_after_downtime():
    calls = []
    spec = runner_runs.JobSpec("costs", at=dtime(3, 0))
    # Last ran yesterday 03:00; the runner was down over today's 03:00 slot.
    r, log = _runner(
        [(spec, calls.append)], last={"costs": D + timedelta(hours=3) - timedelta(days=1)}
    )
    r.tick(D + timedelta(hours=9))
    r.tick(D + timedelta(hours=10))
    assert calls == [D + timedelta(hours=9)]


def test_instance_lock(tmp_path):
    a = runner_runs.InstanceLock(tmp_path / "s.duckdb").acquire(D)
    with pytest.raises(StoreError, match=f"already running on this store \\(pid {os.getpid()}"):
        runner_runs.InstanceLock(tmp_path / "s.duckdb").acquire(D)
    a.release()
    runner_runs.InstanceLock(tmp_path / "s.duckdb").acquire(D).release()


def _env(tmp_path):
    cfg = tmp_path / "small.toml"
    cfg.write_text(
        "[simulator]\nseed = 5\nrequests_per_hour = 6000\ncatalog_keys = 3000\n"
        '[jobs]\ncompact_at = "00:50"\n'
    )
    return dict(
        os.environ,
        CACHEMON_DB=str(tmp_path / "r.duckdb"),
        CACHEMON_CONFIG=str(cfg),
        PYTHONPATH=str(ROOT),
    ), tmp_path / "r.duckdb"


def _start(env, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "jobs", *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _runs(db):
    with store_db.reader(db) as con:
        return con.execute(
            "SELECT job, outcome, started_at, rows FROM job_runs ORDER BY started_at"
        ).fetchall()


def test_runner_process_fast_clock_second_instance_catch_up_and_sigterm(tmp_path):
    env, db = _env(tmp_path)
    start = "2026-11-19T00:20:00Z"
    a = _start(
        env, "--clock-start", start, "--clock-speed", "120"
    )  # 2 simulated minutes per second
    try:
        deadline = time.time() + 90
        while time.time() < deadline and not snapshots.snapshot_path(db).exists():
            time.sleep(0.2)
        b = subprocess.run(
            [sys.executable, "-m", "jobs"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert b.returncode == 2 and "another job runner is already running" in b.stderr
        assert f"pid {a.pid}" in b.stderr
        time.sleep(5)  # ~10 simulated minutes, before the 00:50 compaction slot
    finally:
        a.send_signal(signal.SIGTERM)
        out, _ = a.communicate(timeout=60)
    assert a.returncode == 0, out
    assert "runner stopped" in out
    runs = _runs(db)
    assert {j for j, o, _, _ in runs if o == "ok"} == {"ingest", "alerts", "deliver"}
    assert [o for j, o, _, _ in runs if j == "compact"] == ["scheduled"]
    assert all(
        n > 0 for j, o, _, n in runs if j == "ingest" and o == "ok"
    )  # rows written are logged
    assert not [r for r in runs if r[1] == "error"]
    # No lost window: minutes are contiguous up to the watermark.
    with store_db.reader(db) as con:
        span = queries.data_span(con)
        minutes = con.execute("SELECT count(DISTINCT minute) FROM rollup_minute").fetchall()[0][0]
        mark = ingest_write.watermark(con, "simulator")
        evaluated = [
            r[0] for r in con.execute("SELECT evaluated_at FROM alert_evaluations").fetchall()
        ]
    # The alert monitor ran at once (never run before), then on the 15-minute slots.
    assert evaluated[0] == datetime(2026, 11, 19, 0, 20, tzinfo=UTC)
    # A tick is one second, two simulated minutes, and a loaded machine stretches a tick further, so an
    # evaluation may land late in its slot: what must hold is at most one evaluation per slot, none
    # in the first one's slot.
    slots = [t.replace(minute=t.minute // 15 * 15, second=0, microsecond=0) for t in evaluated]
    assert slots == sorted(set(slots)), evaluated
    assert span[1] == mark and minutes == (span[1] - span[0]) // timedelta(minutes=1)
    # Restart after the slot: the missed 00:50 compaction runs once, at once.
    c = _start(env, "--clock-start", "2026-11-19T02:00:00Z")
    try:
        deadline = time.time() + 90
        while (
            time.time() < deadline
            and sum(1 for r in _runs(db) if r[0] == "compact" and r[1] == "ok") < 1
        ):
            time.sleep(0.3)
        time.sleep(0.5)
    finally:
        c.send_signal(signal.SIGTERM)
        out, _ = c.communicate(timeout=60)
    assert c.returncode == 0, out
    compacts = [r[2] for r in _runs(db) if r[0] == "compact" and r[1] == "ok"]
    assert len(compacts) == 1 and compacts[0] >= datetime(2026, 11, 19, 2, tzinfo=UTC)


def _list_jobs(env):
    return subprocess.run(
        [sys.executable, "-m", "jobs", "--list", "--clock-start", "2026-11-19T10:00:30Z"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_list_and_once(tmp_path):
    env, db = _env(tmp_path)
    p = _list_jobs(env)
    assert p.returncode == 0, p.stderr
    assert "ingest     every 1m" in p.stdout and "compact    daily at 00:50 UTC" in p.stdout
    assert "next 2026-11-19T10:00:30Z" in p.stdout  # never run: due now
    bad = subprocess.run(
        [sys.executable, "-m", "jobs", "--once", "nope"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "unknown job 'nope'" in bad.stderr


def _rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_memory_stays_flat_over_two_days_of_schedule(tmp_path):
    """Two simulated days (48 simulated minutes a second) of ingest and
    compaction: the runner's RSS must not creep."""
    env, db = _env(tmp_path)
    p = _start(env, "--clock-start", "2026-11-19T00:00:00Z", "--clock-speed", "2880")
    samples = []
    try:
        deadline = time.time() + 300  # ~60 s alone: every tick also evaluates alerts
        while time.time() < deadline:
            time.sleep(1)
            samples.append(_rss_mib(p.pid))
            if snapshots.snapshot_path(db).exists():
                with store_db.reader(db) as con:
                    mark = ingest_write.watermark(con, "simulator")
                if mark and mark >= datetime(2026, 11, 21, tzinfo=UTC):
                    break
    finally:
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=60)
    assert p.returncode == 0, out
    assert mark >= datetime(2026, 11, 21, tzinfo=UTC), "two simulated days did not pass"
    third = max(1, len(samples) // 3)
    early, late = max(samples[third : 2 * third]), max(samples[-third:])
    assert late <= early * 1.15 + 15, samples
    days = [r[2].date() for r in _runs(db) if r[0] == "compact" and r[1] == "ok"]
    assert len(days) >= 2 and len(set(days)) == len(days)  # once a day, never stacked


def test_runner_process_survives_a_failing_job(tmp_path):
    """With source = analytics_engine and no credentials, every ingest fails:
    each failure is recorded, the runner lives on and runs its other jobs."""
    env, db = _env(tmp_path)
    (tmp_path / "small.toml").write_text(
        'source = "analytics_engine"\n[jobs]\ncompact_at = "00:05"\n'
    )
    for var in ("CF_ACCOUNT_ID", "CF_API_TOKEN"):
        env.pop(var, None)
    p = _start(env, "--clock-start", "2026-11-19T00:00:00Z", "--clock-speed", "120")
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            time.sleep(0.5)
            if snapshots.snapshot_path(db).exists() and any(
                r[0] == "compact" and r[1] == "ok" for r in _runs(db)
            ):
                break
        assert p.poll() is None, "the runner died"
    finally:
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=60)
    assert p.returncode == 0, out
    with store_db.reader(db) as con:
        errors = con.execute(
            "SELECT error FROM job_runs WHERE job = 'ingest' AND outcome = 'error'"
        ).fetchall()
    assert len(errors) >= 2 and all("CF_ACCOUNT_ID" in e[0] for e in errors)
    assert "ingest failed" in out


def test_schedule_follows_the_config():
    from dataclasses import replace

    from cachemon import settings

    cfg = settings.Config()
    cfg = replace(
        cfg, jobs=replace(cfg.jobs, ingest_every=timedelta(minutes=5), compact_at="01:15")
    )
    specs = runner_runs.schedule(cfg)
    got = {s.name: s.describe() for s in specs}
    assert got == {
        "ingest": "every 5m",
        "alerts": "every 15m",
        "deliver": "every 1m",
        "compact": "daily at 01:15 UTC",
        "report": "daily at 03:00 UTC",
        "experiments": "daily at 04:00 UTC",
    }
    assert all(s.purpose for s in specs)  # each job says what it is for, where it is named
    assert [s.name for s in specs if s.heartbeat] == ["ingest", "alerts"]


def test_status_and_recent_runs_read_the_run_log(tmp_path):
    db = tmp_path / "s.duckdb"
    ingest_spec, report_spec = (
        runner_runs.JobSpec("ingest", every=timedelta(minutes=1)),
        runner_runs.JobSpec("report", at=dtime(3, 0)),
    )
    fails = iter([RuntimeError("origin down"), None, None])

    def flaky(now):
        exc = next(fails)
        if exc:
            raise exc
        return 7

    with store_db.writer(db, D) as con:
        r = runner_runs.Runner(
            [(ingest_spec, flaky), (report_spec, lambda now: 1)],
            lambda rec: runner_runs.record_run(con, rec),
        )
        for minute in (0, 1, 5):  # minutes 2–4 are missed (recorded as skipped)
            r.tick(D + timedelta(minutes=minute))
        now = D + timedelta(minutes=5, seconds=30)
        ingest_st, report_st = runner_runs.status(con, [ingest_spec, report_spec], now)
        runs = runner_runs.recent_runs(con, D, 10)
    assert (ingest_st.last_run, ingest_st.last_outcome, ingest_st.last_ok) == (
        D + timedelta(minutes=5),
        "ok",
        D + timedelta(minutes=5),
    )
    assert (
        ingest_st.errors_24h == 1
        and "origin down" in ingest_st.last_error
        and ingest_st.last_error_at == D
    )
    assert ingest_st.next_run == D + timedelta(minutes=6) and not ingest_st.overdue
    # A daily job before its first slot: recorded as scheduled, never ran.
    assert report_st.last_outcome is None and report_st.next_run == D + timedelta(hours=3)
    latest = {x.outcome: x for x in runs if x.started_at == D + timedelta(minutes=5)}
    assert set(latest) == {"ok", "skipped"} and runs == sorted(
        runs, key=lambda x: x.started_at, reverse=True
    )
    assert latest["ok"].rows == 7 and latest["skipped"].slots == 3
    with store_db.writer(db, D) as con:
        late = runner_runs.status(con, [ingest_spec], D + timedelta(minutes=30))[0]
    assert late.next_run == D + timedelta(minutes=30) and late.overdue


def test_list_writes_nothing(tmp_path):
    """`--list` reads what readers see: with no store it lists every job as
    due and creates no store (it used to open the writer, migrate and publish)."""
    env, db = _env(tmp_path)
    p = _list_jobs(env)
    assert p.returncode == 0, p.stderr
    assert "ingest     every 1m" in p.stdout
    assert not Path(db).exists() and list(Path(db).parent.glob("*.duckdb")) == []
