"""The runner's ingest job: a real process, live simulator, clean stop."""

import os
import signal
import subprocess
import sys
import time

from cachemon.clock import MINUTE, floor_to, utcnow
from cachemon.ingest import write as ingest_write
from cachemon.store import db as store_db
from cachemon.store import queries, snapshots
from tests.helpers import ROOT


def _env(tmp_path):
    cfg = tmp_path / "small.toml"
    cfg.write_text("[simulator]\nseed = 5\nrequests_per_hour = 6000\ncatalog_keys = 3000\n")
    env = dict(
        os.environ,
        CACHEMON_DB=str(tmp_path / "r.duckdb"),
        CACHEMON_CONFIG=str(cfg),
        PYTHONPATH=str(ROOT),
    )
    return env, tmp_path / "r.duckdb"


def test_once_ingest_fills_up_to_now(tmp_path):
    env, db = _env(tmp_path)
    before = floor_to(utcnow(), MINUTE)
    p = subprocess.run(
        [sys.executable, "-m", "jobs", "--once", "ingest"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    with store_db.reader(db) as con:
        until = ingest_write.watermark(con, "simulator")
        span = queries.data_span(con)
        runs = con.execute("SELECT job, outcome, rows FROM job_runs").fetchall()
    assert before <= until <= floor_to(utcnow(), MINUTE)
    assert span[1] == until and until - span[0] == 60 * MINUTE
    assert runs == [("ingest", "ok", runs[0][2])] and runs[0][2] > 0  # a manual run is recorded too


def test_once_failure_is_recorded_and_exits_1(tmp_path):
    env, db = _env(tmp_path)
    (tmp_path / "small.toml").write_text('source = "analytics_engine"\n')
    env = {k: v for k, v in env.items() if not k.startswith("CF_")}
    p = subprocess.run(
        [sys.executable, "-m", "jobs", "--once", "ingest"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 1, p.stderr
    with store_db.reader(db) as con:
        ((job, outcome, error),) = con.execute(
            "SELECT job, outcome, error FROM job_runs"
        ).fetchall()
    assert (job, outcome) == ("ingest", "error") and "CF_" in error and "CF_" in p.stderr


def test_runner_stops_cleanly_on_sigterm(tmp_path):
    env, db = _env(tmp_path)
    p = subprocess.Popen(
        [sys.executable, "-m", "jobs"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 120
    while not snapshots.snapshot_path(db).exists() and time.time() < deadline:
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0, out
    assert "ingest:" in out and "runner stopped" in out
    with store_db.writer(db, utcnow(), publish=False):  # the runner released the store
        pass


def test_bad_config_exits_2(tmp_path):
    env, _ = _env(tmp_path)
    (tmp_path / "small.toml").write_text("[simulator]\nseed = 'five'\n")
    p = subprocess.run(
        [sys.executable, "-m", "jobs", "--once", "ingest"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and "seed must be int" in p.stderr


def test_runner_pulls_from_analytics_engine_when_configured(tmp_path):
    from cachemon.clock import HOUR, Window
    from cachemon.testing.ae_emulator import Emulator
    from tests.helpers import small_sim

    now = floor_to(utcnow(), MINUTE)
    sim = small_sim()
    with Emulator("tok") as emu:
        for w in Window(now - 2 * HOUR, now).split(HOUR):
            emu.add(sim.generate(w))
        cfg = tmp_path / "ae.toml"
        cfg.write_text('source = "analytics_engine"\n[analytics_engine]\nbackfill = "1h"\n')
        env = dict(
            os.environ,
            CACHEMON_DB=str(tmp_path / "ae.duckdb"),
            CACHEMON_CONFIG=str(cfg),
            PYTHONPATH=str(ROOT),
            CF_ACCOUNT_ID=emu.account,
            CF_API_TOKEN="tok",
            CF_API_BASE=emu.base,
        )
        p = subprocess.run(
            [sys.executable, "-m", "jobs", "--once", "ingest"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert p.returncode == 0, p.stderr
    with store_db.reader(tmp_path / "ae.duckdb") as con:
        mark = ingest_write.watermark(con, "analytics_engine")
        span = queries.data_span(con)
    # The runner's clock may have passed a minute boundary since `now`.
    assert now <= mark <= now + MINUTE
    # The first pull backfills `backfill` (1 h here), floored to the hour.
    assert span[0] == floor_to(mark - HOUR, HOUR) and span[1] <= now
