"""The disk refuses: a real full disk (a tiny tmpfs) under a running job
runner, and a read-only file system under the CLI. Each is one clear line
(log or `cachemon: error: ...`), no temporary file stays, the last good
snapshot stays readable, and the runner retries until the disk has room.

Mounting needs root (CAP_SYS_ADMIN); elsewhere these tests are skipped and
tests/store/test_store_snapshots.py injects ENOSPC through the copy function."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from cachemon.store import db as store_db
from cachemon.store import snapshots
from tests.helpers import ROOT
from tests.helpers.disk import CONFIG, tmpfs
from tests.helpers.disk import fill as _fill
from tests.helpers.servers import runner_process


def _runs(db):
    with store_db.reader(db) as con:
        return con.execute(
            "SELECT job, outcome, error FROM job_runs ORDER BY started_at"
        ).fetchall()


def _leftovers(d):
    return [f.name for f in d.iterdir() if f.name.endswith((".tmp", ".link"))]


def test_a_full_disk_never_stops_the_runner_and_it_recovers(tmp_path, results):
    # Room, once the ballast goes, for the store and the snapshots readers may hold (about four
    # copies of a ~15 MB store after a minute of fast clock): the ballast fills it whatever its size.
    with tmpfs(tmp_path / "disk", "160m") as disk:
        db, cfg_file = disk / "d.duckdb", tmp_path / "d.toml"
        cfg_file.write_text(CONFIG)
        env = dict(
            os.environ,
            CACHEMON_DB=str(db),
            CACHEMON_CONFIG=str(cfg_file),
            PYTHONPATH=str(ROOT),
            CACHEMON_WRITE_WAIT_SECONDS="5",
        )
        log = tmp_path / "runner.log"
        runner = runner_process(env, log)
        try:
            deadline = time.time() + 90
            while time.time() < deadline and not snapshots.snapshot_path(db).exists():
                assert runner.poll() is None, log.read_text()
                time.sleep(0.2)
            time.sleep(2)
            before = len(_runs(db))
            _fill(disk / "ballast")
            full_at = log.read_text().count("\n")
            time.sleep(6)  # several ticks on a full disk
            alive_full = runner.poll() is None
            during = log.read_text().splitlines()[full_at:]
            left = _leftovers(disk)
            readable = len(_runs(db)) >= before  # the last good snapshot stays readable
            (disk / "ballast").unlink()
            deadline = time.time() + 60
            while time.time() < deadline and not any(
                "no space left on device" in (e or "") for _, _, e in _runs(db)
            ):
                time.sleep(0.5)
            time.sleep(2)
            alive = runner.poll() is None
        finally:
            runner.send_signal(signal.SIGTERM)
            runner.wait(timeout=120)
        out = log.read_text()
        assert alive_full and alive and runner.returncode == 0, out[-3000:]
        assert readable and left == [], left
        full_lines = [line for line in during if "no space left on device" in line]
        assert full_lines and "Traceback" not in "\n".join(during), "\n".join(during)[-3000:]
        runs = _runs(db)
        failed = [
            (j, e) for j, o, e in runs if o == "error" and "no space left on device" in (e or "")
        ]
        recovered = [j for j, o, _ in runs[-10:] if o == "ok"]
        # The failed runs were kept and recorded once the disk had room, and jobs succeed again.
        assert failed and "ingest" in recovered, runs[-15:]
        assert all("\n" not in e for _, e in failed)
        assert _leftovers(disk) == []
    results(
        "disk full under the runner",
        "a 160 MB tmpfs filled up for ~6 s of ticks",
        len(failed),
        f"runner alive; {len(full_lines)} one-line log errors; no temporary file; "
        f"{len(failed)} failed runs recorded after space came back; jobs ok again",
    )


def test_a_read_only_file_system_is_one_line_and_reads_still_work(tmp_path, results):
    """Linux refuses to remount a file system read-only while a process
    holds a file on it open for writing (the runner's lock), so the runner
    meets a read-only disk at its start here: one line, exit 2."""
    with tmpfs(tmp_path / "ro", "64m") as disk:
        db = disk / "r.duckdb"
        env = dict(os.environ, PYTHONPATH=str(ROOT))

        def cli(*args):
            return subprocess.run(
                [sys.executable, "-m", "cachemon", "--db", str(db), *args],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )

        assert (
            cli("demo", "--days", "0.05", "--until", "2026-11-19T10:00:00Z", "--quiet").returncode
            == 0
        )
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        before = sorted((f.name, f.stat().st_size) for f in disk.iterdir())
        writes = [
            cli("alerts", "silence", "p99_latency", "--for", "1h", "--reason", "ro"),
            cli("demo", "--days", "0.05", "--quiet"),
            cli("compact"),
        ]
        read = cli("metrics", "--at", "2026-11-19T10:00:00Z")
        jobs = subprocess.run(
            [sys.executable, "-m", "jobs", "--db", str(db)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        after = sorted((f.name, f.stat().st_size) for f in disk.iterdir())
    for p in writes:
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        assert p.stderr.startswith("cachemon: error: ") and "read-only file system" in p.stderr, (
            p.stderr
        )
        assert p.stderr.count("\n") == 1, p.stderr
    assert read.returncode == 0, read.stderr  # the published snapshot still answers
    assert (
        jobs.returncode == 2
        and "Traceback" not in jobs.stderr
        and "read-only file system" in jobs.stderr
    ), jobs.stderr
    assert before == after
    results(
        "read-only file system",
        "3 writing commands, 1 read and a runner start on a read-only mount",
        len(writes) + 2,
        "each write one `cachemon: error: ... read-only file system` line, exit 2; "
        "the read answered; the runner's start one log line, exit 2",
    )


def test_a_write_on_a_full_disk_reports_its_own_error_not_the_snapshots(tmp_path, results):
    """The write fails on the full disk, and so does the publish after it:
    the line says what the write met, nothing half-written is left, and the
    last good snapshot still answers."""
    from tests.helpers import simulate

    with tmpfs(tmp_path / "full", "24m") as disk:
        db = disk / "f.duckdb"
        env = dict(os.environ, PYTHONPATH=str(ROOT))

        def cli(*args):
            return subprocess.run(
                [sys.executable, "-m", "cachemon", "--db", str(db), *args],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )

        assert (
            cli("demo", "--days", "0.05", "--until", "2026-11-19T10:00:00Z", "--quiet").returncode
            == 0
        )
        _, df = simulate(2)
        events = tmp_path / "events.parquet"  # outside the full disk
        df.to_parquet(events, index=False)
        snap = snapshots.current_snapshot(db)
        _fill(disk / "ballast")
        p = cli("import", str(events))
        left = _leftovers(disk)
        after = snapshots.current_snapshot(db)
        read = cli("metrics", "--at", "2026-11-19T10:00:00Z")
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith(f"cachemon: error: cannot write {db}: no space left on device"), (
        p.stderr
    )
    assert left == [] and after == snap and read.returncode == 0, (left, read.stderr)
    results(
        "write on a full disk",
        "`cachemon import` of 2 h of events onto a full tmpfs",
        1,
        "one line naming the store file and ENOSPC, exit 2; no temporary file; old snapshot answers",
    )
