"""kill -9 of the real job runner, again and again, while it ingests,
evaluates alerts, compacts, writes cost reports and sends email.

The runner runs on a fast simulated clock from a Thursday 00:05 UTC, so
within a couple of simulated days it crosses the daily compaction (00:30)
and cost report (03:00, mailed) and the 09:00 origin slowdown (the p99 rule
may fire) and a daily traffic peak (the `busy` rule fires each afternoon and
resolves each night, by email). Each restart continues the simulated clock
where the killed process left it. Afterwards the store must equal one
uninterrupted simulation of the same span, and every notification must
have reached the SMTP server (a real one on loopback).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pandas as pd

from cachemon import config
from cachemon.errors import EmptyStoreError
from cachemon.ingest import load as ingest_load
from cachemon.store import db as store_db
from cachemon.store import queries
from tests.helpers import P99_RULE, ROOT
from tests.helpers.servers import SmtpSink
from tests.helpers.suite import LONG

SPEED = 1200  # 20 simulated minutes per second
START = datetime(2026, 11, 19, 0, 5, tzinfo=UTC)
KILLS = 120 if LONG else 50
# The span the kills must cover (Thursday 00:05 to Friday 06:05: the busy
# rule's first night and the 03:00 report), and the kills allowed to get there.
SPAN_MIN = timedelta(hours=30)
EXTRA_KILLS = 100
CONFIG = (
    """
[simulator]
seed = 7
requests_per_hour = 6000
catalog_keys = 3000
sample_threshold_per_minute = 30
[jobs]
compact_at = "00:30"
"""
    + P99_RULE.replace('for = "30m"\n', "")
    + """
[[alerts.rules]]
name = "busy"               # fires every afternoon, resolves every night
metric = "requests"
op = ">"
threshold = 1600
severity = "warning"
"""
)
COMPARED = {
    "requests": "SELECT minute, tier, endpoint, experiment, cohort, requests, errors, data_points "
    "FROM v1.requests_minute ORDER BY ALL",
    "latency": "SELECT minute, tier, endpoint, bucket, weight FROM v1.latency_histogram_minute ORDER BY ALL",
    "gauges": "SELECT minute, name, value_avg, value_last, samples FROM v1.gauges_minute ORDER BY ALL",
    "keys": "SELECT day, key, requests, edge, kv, r2, api, errors FROM v1.keys_day ORDER BY ALL",
}
STARTED = re.compile(r"cachemon\.runner: (\w+) started for")


def _spawn(env, clock: datetime, log):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jobs",
            "--verbose",
            "--clock-start",
            clock.isoformat(),
            "--clock-speed",
            str(SPEED),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _wait_for_first_job(p, log, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while p.poll() is None and time.monotonic() < deadline and not STARTED.search(log.read_text()):
        time.sleep(0.05)
    assert p.poll() is None, log.read_text()[-2000:]


def _killed_during(text: str) -> str:
    """The job a killed runner was in: the last started, unless it logged its end."""
    started = list(STARTED.finditer(text))
    if not started:
        return "start-up"  # not expected: kills wait for the first job
    job = started[-1].group(1)
    return "between jobs" if re.search(rf"jobs: {job}:", text[started[-1].end() :]) else job


def _data_end(path) -> datetime:
    """Where the published data ends (START before any)."""
    try:
        with store_db.reader(path) as con:
            span = queries.data_span(con)
    except EmptyStoreError:
        return START
    return span[1] if span and span[1] else START


def _has_night(path) -> bool:
    """The published outbox holds a firing and a resolved alert and a report."""
    try:
        with store_db.reader(path) as con:
            kinds = {
                k for (k,) in con.execute("SELECT DISTINCT kind FROM notifications").fetchall()
            }
    except EmptyStoreError:
        return False
    return {"firing", "resolved", "report"} <= kinds


def _frames(path) -> dict[str, pd.DataFrame]:
    with store_db.reader(path) as con:
        return {name: con.execute(sql).df() for name, sql in COMPARED.items()}


def test_kill_9_at_random_points_loses_nothing_and_doubles_nothing(tmp_path, results):
    db, cfg_file = tmp_path / "crash.duckdb", tmp_path / "crash.toml"
    cfg_file.write_text(CONFIG)
    smtp = SmtpSink().start()
    env = dict(
        os.environ,
        CACHEMON_DB=str(db),
        CACHEMON_CONFIG=str(cfg_file),
        PYTHONPATH=str(ROOT),
        ALERT_EMAIL="oncall@example.org",
        **smtp.env(),
    )
    rng = random.Random(12)
    clock, where = START, Counter()
    try:
        # At least KILLS kills, and on until the data covers SPAN_MIN and the
        # outbox holds what the assertions below need (a firing and a resolved
        # alert, a report): how far a kill's run gets, and so at which simulated
        # instants alerts are evaluated, depends on the machine's speed and load
        # (a slow start-up skipped the first evening's peak, and the second
        # evening's alert had no night left to resolve in).
        for i in range(KILLS + EXTRA_KILLS):
            if i >= KILLS and _data_end(db) >= START + SPAN_MIN and _has_night(db):
                break
            log = tmp_path / f"run{i}.log"
            with log.open("w") as out:
                p, t0 = _spawn(env, clock, out), time.monotonic()
                _wait_for_first_job(p, log)  # start-up (imports) takes seconds: kill after it
                time.sleep(rng.uniform(0.0, 2.0))
                p.send_signal(signal.SIGKILL)
                p.wait()
            clock += timedelta(seconds=(time.monotonic() - t0) * SPEED)
            where[_killed_during(log.read_text())] += 1
        # A last, clean run catches up and delivers whatever the kills left in the outbox.
        with (tmp_path / "final.log").open("w") as out:
            p = _spawn(env, clock, out)
            time.sleep(8)
            p.send_signal(signal.SIGTERM)
            assert p.wait(timeout=60) == 0, (tmp_path / "final.log").read_text()[-3000:]
        received = [m["Message-ID"] for m in smtp.messages]
    finally:
        smtp.stop()

    with store_db.reader(db) as con:
        span, runs = (
            queries.data_span(con),
            con.execute("SELECT outcome, error FROM job_runs").fetchall(),
        )
        outbox = con.execute(
            "SELECT kind, status, payload FROM notifications ORDER BY id"
        ).fetchall()
        reports = con.execute("SELECT day FROM cost_reports").fetchall()
    # The same span simulated in one go, into another store.
    ref = tmp_path / "ref.duckdb"
    ref_cfg = replace(config.with_db(config.load(cfg_file, env={}), str(ref)))
    _, sim = ingest_load.simulate_until(ref_cfg, span[0] + timedelta(hours=1))
    ingest_load.simulate_until(ref_cfg, span[1], sim)
    got, want = _frames(db), _frames(ref)
    for name in COMPARED:
        assert len(got[name]) == len(want[name]), name
        pd.testing.assert_frame_equal(
            got[name], want[name], check_exact=False, rtol=1e-12, obj=name
        )
    minutes = len(got["requests"].minute.unique())
    assert minutes == (span[1] - span[0]) // timedelta(minutes=1)  # contiguous: no window lost

    assert not [r for r in runs if r[0] == "error"], runs
    sent_ids = {json.loads(payload)["message_id"] for _, _, payload in outbox}
    assert all(status == "sent" for _, status, _ in outbox) and len(sent_ids) == len(outbox)
    assert set(received) == sent_ids  # none lost, none unknown
    duplicates = len(received) - len(set(received))
    # Only a kill between the server's accept and the commit that marks it sent can repeat a
    # message (with the same Message-ID, so mail clients fold it).
    assert duplicates <= where["alerts"] + where["report"] + where["deliver"]
    kinds = Counter(kind for kind, _, _ in outbox)
    assert (
        kinds["firing"] >= 1
        and kinds["resolved"] >= 1
        and len(reports) >= 1
        and kinds["report"] == len(reports)
    )
    assert sum(where[j] for j in ("ingest", "alerts", "compact", "report", "deliver")) >= KILLS // 3

    during = ", ".join(f"{n} {j}" for j, n in where.most_common())
    results(
        "kill -9 of the job runner",
        f"SIGKILL at random points ({during})",
        f"{KILLS} kills",
        f"{minutes:,} minutes equal to an uninterrupted run: 0 lost windows, 0 doubled; "
        f"{len(outbox)} notifications, {len(set(received))} delivered, {duplicates} repeated; "
        f"{len(reports)} daily reports, each once",
    )
