"""Publishing fails but writing works: a disk with room for the store's
writes but not for another snapshot copy. The runner keeps running its
jobs (also when it starts on such a disk), retries the publish with
back-off instead of copying the store every second, names the snapshot
file, and sends no heartbeat while readers are frozen; a CLI write says it
was STORED so nobody repeats it. Needs root for the tmpfs (else skipped)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

from cachemon.store import db as store_db
from cachemon.store import snapshots
from tests.helpers import ROOT
from tests.helpers.disk import fill as _fill
from tests.helpers.disk import tmpfs
from tests.helpers.pingsink import PingSink


def _cli(db, *args):
    return subprocess.run(
        [sys.executable, "-m", "cachemon", "--db", str(db), *args],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _leave_free(disk, free: int) -> None:
    """Fill the disk with a ballast file, then give back `free` bytes."""
    ballast = disk / "ballast"
    _fill(ballast)
    os.truncate(ballast, max(0, ballast.stat().st_size - free))


def _count(db, sql) -> int:
    with store_db.reader(db) as con:
        return con.execute(sql).fetchone()[0]


def test_runner_without_room_to_publish_runs_jobs_backs_off_and_stops_the_heartbeat(
    tmp_path, results
):
    sink = PingSink()
    with tmpfs(tmp_path / "disk", "64m") as disk:
        db, log = disk / "g.duckdb", tmp_path / "runner.log"
        assert _cli(db, "demo", "--days", "0.05", "--quiet").returncode == 0
        runs_before = _count(db, "SELECT count(*) FROM job_runs")
        _leave_free(disk, db.stat().st_size // 2)  # room for writes, not for a copy of the store
        env = dict(
            os.environ,
            CACHEMON_DB=str(db),
            PYTHONPATH=str(ROOT),
            CACHEMON_HEARTBEAT_URL=sink.url("/hb"),
            CACHEMON_WRITE_WAIT_SECONDS="5",
        )
        env.pop("CACHEMON_CONFIG", None)
        start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1800))
        runner = subprocess.Popen(
            [sys.executable, "-m", "jobs", "--clock-start", start, "--clock-speed", "60"],
            cwd=ROOT,
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        try:
            time.sleep(9)
            blocked = log.read_text()
            pings_blocked = sum(sink.pings.values())
            (disk / "ballast").unlink()
            deadline = time.time() + 30
            while time.time() < deadline and not sink.pings:
                time.sleep(0.2)
            alive = runner.poll() is None
        finally:
            runner.send_signal(signal.SIGTERM)
            runner.wait(timeout=60)
            sink.close()
        out = log.read_text()
        runs_after = _count(db, "SELECT count(*) FROM job_runs")
    assert alive and runner.returncode == 0 and "Traceback" not in out, out[-3000:]
    assert "runner started" in blocked and "ingest:" in blocked, blocked[
        -3000:
    ]  # startup not blocked
    assert "starting:" not in blocked, blocked[-3000:]
    fails = [line for line in blocked.splitlines() if "publish: cannot write" in line]
    assert fails and all(
        f"{snapshots.snapshot_path(db)}: no space left on device" in line for line in fails
    ), fails
    assert len(fails) <= 4, fails  # back-off: 2, 4, 8 s, not one 8 MB copy a second
    assert pings_blocked == 0  # readers were frozen: no heartbeat
    assert (
        sink.pings["/hb"] >= 1 and runs_after > runs_before
    )  # published and pinging once there is room
    results(
        "no room to publish under the runner",
        "a tmpfs with room for writes but not a snapshot copy, runner started on it for 9 s",
        len(fails),
        "jobs ran; publish retried with back-off naming the "
        "snapshot; no heartbeat until a publish succeeded, then pings and readers caught up",
    )


def test_a_write_stored_but_not_published_says_stored(tmp_path, results):
    with tmpfs(tmp_path / "disk", "32m") as disk:
        db = disk / "w.duckdb"
        assert _cli(db, "demo", "--days", "0.05", "--quiet").returncode == 0
        _leave_free(disk, db.stat().st_size // 2)
        p = _cli(db, "alerts", "silence", "miss_rate", "--for", "1h", "--reason", "full")
        seen_by_readers = _count(db, "SELECT count(*) FROM silences")
        (disk / "ballast").unlink()
        with store_db.writer(
            db, datetime.now(UTC), create=False
        ) as con:  # the next write publishes
            stored = con.execute("SELECT count(*) FROM silences WHERE reason = 'full'").fetchone()[
                0
            ]
        published = _count(db, "SELECT count(*) FROM silences")
    assert p.returncode == 3 and "Traceback" not in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert (
        p.stderr.startswith("cachemon: warning: the change was STORED in")
        and "do not repeat" in p.stderr
    )
    assert "no space left on device" in p.stderr and p.stdout.startswith("silence 1: miss_rate"), (
        p.stdout
    )
    assert seen_by_readers == 0 and stored == 1 and published == 1
    results(
        "write stored, publish failed",
        "`alerts silence` with room for the write, not the snapshot copy",
        1,
        "exit 3, one warning line saying STORED and not to repeat; the silence stored once, published later",
    )
