"""Other writers never stop the job runner: while a real `python -m jobs`
runs with a fast clock, a big `cachemon import` and twenty quick
`cachemon alerts silence` calls (the dashboard's Silence form writes the
same way) hammer the store across several ticks. Every write lands, the
runner lives on, every run it logged is recorded, and its heartbeat pings
a loopback receiver without the URL ever reaching its log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from cachemon.cli import main as cli_main
from cachemon.store import db as store_db
from cachemon.store import snapshots
from tests.helpers import ROOT, simulate, small_sim
from tests.helpers.pingsink import PingSink
from tests.helpers.servers import runner_process

SECRET = "/ping/0d9e1f-runner-check-key"
CONFIG = '[simulator]\nseed = 5\nrequests_per_hour = 6000\ncatalog_keys = 3000\n[jobs]\ncompact_at = "23:50"\n'
SILENCES = 20


def _cli(env, *args):
    return subprocess.run(
        [sys.executable, "-m", "cachemon", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _big_file(tmp_path):
    """About 300k events from another source, the day before the runner's clock."""
    start = datetime(2026, 11, 18, 19, 0, tzinfo=UTC)
    _, df = simulate(3, start=start, sim=small_sim(requests_per_hour=100_000, catalog_keys=20_000))
    df = df.copy()
    df["timestamp"] = df.timestamp.dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    path = tmp_path / "big.parquet"
    df.to_parquet(path, index=False)
    return path, len(df)


def test_writers_hammering_the_store_never_stop_the_runner(tmp_path, results):
    db, cfg_file = tmp_path / "w.duckdb", tmp_path / "w.toml"
    cfg_file.write_text(CONFIG)
    big, rows = _big_file(tmp_path)
    sink = PingSink()
    env = dict(
        os.environ,
        CACHEMON_DB=str(db),
        CACHEMON_CONFIG=str(cfg_file),
        PYTHONPATH=str(ROOT),
        CACHEMON_HEARTBEAT_URL=sink.url(SECRET),
    )
    log = tmp_path / "runner.log"
    runner = runner_process(env, log)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and not snapshots.snapshot_path(db).exists():
            assert runner.poll() is None, log.read_text()
            time.sleep(0.2)
        writer_env = {k: v for k, v in env.items() if k != "CACHEMON_HEARTBEAT_URL"}
        with ThreadPoolExecutor(max_workers=4) as pool:
            imported = pool.submit(_cli, writer_env, "import", str(big))
            time.sleep(1)  # the import's turn has begun
            # The CLI's own entry in this (test) process, four threads at once: another
            # process than the runner, as a shell's `alerts silence` or the dashboard's form.
            silenced = list(
                pool.map(
                    lambda i: cli_main.main(
                        [
                            "--db",
                            str(db),
                            "alerts",
                            "silence",
                            "p99_latency",
                            "--for",
                            "1h",
                            "--reason",
                            f"hammer {i}",
                        ]
                    ),
                    range(SILENCES),
                )
            )
            imported = imported.result()
        time.sleep(3)  # a few more ticks after the hammering
        alive = runner.poll() is None
    finally:
        runner.send_signal(signal.SIGTERM)
        runner.wait(timeout=120)
        sink.close()
    out = log.read_text()
    assert alive and runner.returncode == 0, out[-3000:]
    assert imported.returncode == 0, imported.stderr
    assert silenced == [0] * SILENCES
    assert (
        "Traceback" not in out
        and "run(s) kept to record later" not in out.split("runner stopped")[-1]
    )
    with store_db.reader(db) as con:
        silences = con.execute("SELECT count(*) FROM silences").fetchall()[0][0]
        events = con.execute("SELECT sum(events) FROM imports").fetchall()[0][0]
        runs = dict(
            con.execute(
                "SELECT job, count(*) FROM job_runs WHERE outcome = 'ok' GROUP BY job"
            ).fetchall()
        )
    assert silences == SILENCES and events == rows
    # Every ingest the runner logged is in the run log: none was lost to a busy store.
    assert runs["ingest"] == out.count(" ingest: ") and runs["ingest"] >= 3, (runs, out[-2000:])
    # The dead man's switch: pinged after successful ingests and evaluations, never more.
    pings = sink.pings[SECRET]
    assert 2 <= pings <= runs["ingest"] + runs.get("alerts", 0), (pings, runs)
    assert SECRET not in out and "runner-check-key" not in out
    results(
        "writers hammer the store during runner ticks",
        f"1 import of {rows:,} events + {SILENCES} `alerts silence` calls (4 threads at once)",
        SILENCES + 1,
        f"runner alive, all {SILENCES + 1} writes landed, {runs['ingest']} ingest runs all recorded, "
        f"{pings} heartbeat pings",
    )
