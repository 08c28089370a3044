"""Paths and settings that used to write somewhere silently: a snapshot
given to a writer, a typo'd or empty store path, odd write-wait values, a
lock held from outside cachemon, and a fast simulated clock that ran past
real time. Each is one clear line, and nothing stored changes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest

from cachemon.api.app import health_body
from cachemon.cli import main as cli_main
from cachemon.errors import StoreBusyError, StoreError
from cachemon.notify.transports import Transports
from cachemon.runner import selfcheck
from cachemon.store import db as store_db
from cachemon.store import lock as store_lock
from cachemon.store import snapshots
from tests.helpers import ROOT

SILENCE = ["alerts", "silence", "miss_rate", "--for", "1h", "--reason", "x"]


def _md5s(d) -> dict:
    return {
        f.name: hashlib.md5(f.read_bytes()).hexdigest()
        for f in sorted(d.iterdir())
        if f.is_file() and not f.is_symlink()
    }


def _silences(path) -> int:
    with store_db.writer(path, datetime.now(UTC), create=False, publish=False) as con:
        return con.execute("SELECT count(*) FROM silences").fetchone()[0]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def made(tmp_path):
    """A published store k.duckdb with two snapshot versions."""
    db = tmp_path / "s" / "k.duckdb"
    with store_db.writer(db, datetime.now(UTC)):
        pass
    snapshots.publish_snapshot(db)
    return db


def test_writers_refuse_snapshot_paths_and_readers_follow_the_store(made, capsys, results):
    d = made.parent
    version = snapshots.current_snapshot(made)
    alias = d / "latest.duckdb"
    alias.symlink_to(version.name)
    before = _md5s(d)
    refused = 0
    for path in (snapshots.snapshot_path(made), version, alias):
        assert cli_main.main(["--db", str(path), *SILENCE]) == 2
        line = _error_line(capsys)
        assert (
            line.startswith("cachemon: error: ")
            and "snapshot" in line
            and f"use the main store {made}" in line
        )
        refused += 1
    assert _md5s(d) == before  # no version changed, no new store, no new lock file
    assert not list(d.glob("*snapshot.snapshot*")) and not list(d.glob("*.snapshot*.write.lock"))
    # Readers given the snapshot path (the README's analyst path) read the store's current snapshot.
    assert cli_main.main(["--db", str(made), *SILENCE]) == 0
    capsys.readouterr()
    assert cli_main.main(["--db", str(snapshots.snapshot_path(made)), "alerts", "silences"]) == 0
    assert "miss_rate" in capsys.readouterr().out
    assert _silences(made) == 1
    results(
        "writer given a snapshot path",
        "silence via the pointer, a version and a symlink to it",
        refused,
        "refused, one line naming the main store; versions unchanged; readers follow the store",
    )


WRITERS = [
    SILENCE,
    ["alerts", "unsilence", "1"],
    ["alerts", "check"],
    ["alerts", "deliver"],
    ["compact"],
    ["costs", "report"],
]


def test_non_filling_writers_never_create_a_store(tmp_path, capsys, monkeypatch, results):
    monkeypatch.chdir(tmp_path)
    typo = tmp_path / "x" / "typo.duckdb"
    for argv in WRITERS:
        assert cli_main.main(["--db", str(typo), *argv]) == 2, argv
        line = _error_line(capsys)
        assert f"no store at {typo}" in line and "never creates one" in line, line
    assert not (tmp_path / "x").exists()
    # An empty path never falls back to the default store.
    assert cli_main.main(["--db", "", *SILENCE]) == 2
    assert "--db is empty" in _error_line(capsys)
    monkeypatch.setenv("CACHEMON_DB", "")
    assert cli_main.main(SILENCE) == 2
    assert "CACHEMON_DB is empty" in _error_line(capsys)
    assert list(tmp_path.iterdir()) == []
    results(
        "writer given a missing or empty store path",
        "6 non-filling commands on a typo, --db '' and CACHEMON_DB=''",
        len(WRITERS) + 2,
        "refused with one line; no folder, store or lock file created",
    )


@pytest.mark.parametrize("text", ["nan", "-5", "inf", "1e400", "3601", "soon"])
def test_odd_write_waits_are_refused(made, text, capsys, monkeypatch):
    monkeypatch.setenv("CACHEMON_WRITE_WAIT_SECONDS", text)
    with pytest.raises(StoreError, match="from 0 to 3600"):
        store_lock.write_wait()
    before = _md5s(made.parent)
    assert cli_main.main(["--db", str(made), *SILENCE]) == 2
    assert "CACHEMON_WRITE_WAIT_SECONDS must be" in _error_line(capsys)
    monkeypatch.delenv("CACHEMON_WRITE_WAIT_SECONDS")
    assert _md5s(made.parent) == before and _silences(made) == 0


def test_write_wait_accepts_sane_values(monkeypatch):
    for text, want in (
        ("0", 0.0),
        ("2.5", 2.5),
        ("3600", 3600.0),
        ("", store_lock.DEFAULT_WRITE_WAIT_S),
    ):
        monkeypatch.setenv("CACHEMON_WRITE_WAIT_SECONDS", text)
        assert store_lock.write_wait() == want


def test_busy_message_never_names_a_dead_holder(made, results):
    lock = store_lock.lock_path(made)
    with store_db.writer(
        made, datetime.now(UTC)
    ):  # a cachemon writer clears its name when it lets go
        assert "pid" in lock.read_text()
    assert lock.read_text() == ""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    lock.write_text(f"pid {dead} (jobs) since 2026-01-01T00:00:00Z")
    outsider = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'r+'); "
            "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(30)",
            str(lock),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert outsider.stdout.readline().strip() == "held"
        with pytest.raises(StoreBusyError) as err:
            with store_db.writer(made, datetime.now(UTC), wait=0.2):
                pass
    finally:
        outsider.kill()
        outsider.wait()
    text = str(err.value)
    assert f"not a cachemon writer: the lock file still names pid {dead} (jobs)" in text
    assert "which is no longer running" in text
    results(
        "store busy, held from outside",
        "flock by a non-cachemon process, lock file naming a dead pid",
        1,
        "the message says the named pid is gone and the holder is another program",
    )


def test_fast_clock_never_passes_real_time():
    from jobs.__main__ import _clock

    now = datetime.now(UTC)
    for start in (None, (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")):
        clock = _clock(start, 1e6, timedelta(minutes=5))
        time.sleep(0.05)  # 50 000 simulated seconds: far past now without the clamp
        t = clock()
        assert t <= datetime.now(UTC) and t > datetime.now(UTC) - timedelta(seconds=5)


def test_run_log_times_from_the_future_are_not_fresh():
    now = datetime(2026, 12, 1, 18, 35, tzinfo=UTC)
    check = selfcheck.RunnerCheck(
        now, timedelta(minutes=1), now + timedelta(hours=1, minutes=22), (), timedelta(minutes=5)
    )
    assert check.ingest_from_future and check.ingest_stalled and not check.healthy
    assert check.ingest_age is None and check.to_json()["lastIngestAgeSeconds"] is None
    assert "dated in the future" in check.problems()[0]
    body = health_body((now - timedelta(days=1), now), check, now, timedelta(minutes=10))
    assert body["status"] == "degraded"
    fine = selfcheck.RunnerCheck(
        now, timedelta(minutes=1), now + timedelta(seconds=30), (), timedelta(minutes=5)
    )
    assert fine.healthy  # a few seconds of clock skew is not the future
    strict = selfcheck.RunnerCheck(  # [ingest] clock_skew = "0s": the same run is from the future
        now, timedelta(minutes=1), now + timedelta(seconds=30), (), timedelta(0)
    )
    assert strict.ingest_from_future and not strict.healthy


def test_a_fast_runner_writes_nothing_after_now(tmp_path, results):
    db, cfg_file = tmp_path / "f.duckdb", tmp_path / "f.toml"
    cfg_file.write_text("[simulator]\nseed = 5\nrequests_per_hour = 600\ncatalog_keys = 300\n")
    env = dict(os.environ, CACHEMON_DB=str(db), CACHEMON_CONFIG=str(cfg_file), PYTHONPATH=str(ROOT))
    start = (datetime.now(UTC) - timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    runner = subprocess.Popen(
        [sys.executable, "-m", "jobs", "--clock-start", start, "--clock-speed", "600"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(9)  # 90 simulated minutes: an hour past now without the clamp
    finally:
        runner.terminate()
        runner.wait(30)
    now = datetime.now(UTC)
    with store_db.reader(db) as con:
        latest = [
            con.execute(q).fetchone()[0]
            for q in (
                "SELECT max(started_at) FROM job_runs",
                "SELECT max(finished_at) FROM job_runs",
                "SELECT max(until) FROM watermarks",
                "SELECT max(minute) FROM rollup_minute",
                "SELECT max(evaluated_at) FROM alert_evaluations",
            )
        ]
    assert latest[0] is not None and latest[2] is not None
    assert all(t is None or t <= now for t in latest), (latest, now)
    results(
        "fast simulated clock",
        "runner 30 min in the past at 600x for 9 s (90 simulated min)",
        1,
        "caught up with real time and stopped there: nothing dated after now",
    )


def test_a_real_runner_on_a_store_written_ahead_of_now_fails_visibly(tmp_path, results):
    """An older store that a fast clock filled past real time: the real
    runner's ingest and alerts fail with a line saying so (recorded, so
    /healthz is degraded), never "ok" or "already evaluated"."""
    db = tmp_path / "ahead.duckdb"
    env = dict(os.environ, CACHEMON_DB=str(db), PYTHONPATH=str(ROOT))
    env.pop("CACHEMON_CONFIG", None)
    # Write as the old runner did: a store, its data and an evaluation an hour ahead of now.
    from cachemon import config
    from cachemon.alerts import evaluate as alerts_evaluate
    from cachemon.ingest import load as ingest_load

    cfg = config.with_db(config.load(None, {}), str(db))
    future = datetime.now(UTC) + timedelta(hours=1)
    ingest_load.simulate_until(cfg, future, None)
    with store_db.writer(db, future) as con:
        alerts_evaluate.run(con, cfg, future, Transports.from_env({}))
    outs = {
        job: subprocess.run(
            [sys.executable, "-m", "jobs", "--once", job],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        for job in ("ingest", "alerts")
    }
    for job, p in outs.items():
        assert p.returncode == 1 and "written by a clock ahead of real time" in p.stderr, (
            job,
            p.stderr[-2000:],
        )
        assert "already evaluated" not in p.stderr and "Traceback" not in p.stderr
    with store_db.reader(db) as con:
        failed = con.execute(
            "SELECT job FROM job_runs WHERE outcome = 'error' ORDER BY job"
        ).fetchall()
    assert failed == [("alerts",), ("ingest",)]
    results(
        "store written ahead of now",
        "`jobs --once ingest/alerts` on data and an evaluation 1 h ahead",
        2,
        "each fails with one line saying a clock ran ahead (recorded); never ok nor 'already evaluated'",
    )
