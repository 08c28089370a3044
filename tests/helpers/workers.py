"""Small worker processes for the concurrency and crash tests.

python -m tests.helpers.workers writer DB START STEPS STEP_MINUTES
python -m tests.helpers.workers dashboard DB STOPFILE
python -m tests.helpers.workers analyst DB STOPFILE

(from the repository root, which `-m` puts on sys.path)
"""

import json
import sys
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import duckdb

from cachemon import config, settings
from cachemon.clock import Window, parse_instant
from cachemon.errors import CachemonError
from cachemon.ingest import load as ingest_load
from cachemon.metrics import window as metrics_window
from cachemon.store import db as store_db
from cachemon.store import queries, snapshots

SMALL = dict(seed=7, requests_per_hour=6000, catalog_keys=3000, sample_threshold_per_minute=30)


def cfg(db):
    c = config.with_db(settings.Config(), db)
    return replace(c, simulator=replace(c.simulator, **SMALL))


def writer(db, start, steps, step_minutes):
    c, sim = cfg(db), None
    now = parse_instant(start)
    for i in range(int(steps) + 1):
        _, sim = ingest_load.simulate_until(c, now + timedelta(minutes=int(step_minutes) * i), sim)
        print(f"step {i}", flush=True)  # lets a test kill at a known point of progress


def dashboard(db, stopfile):
    renders, errors = 0, []
    while not Path(stopfile).exists():
        try:
            with store_db.reader(db) as con:
                span = queries.data_span(con)
                if span:
                    metrics_window.compute(
                        con, Window(span[1] - timedelta(minutes=15), span[1]), "15m"
                    )
            renders += 1
        except CachemonError as exc:
            if "no store at" not in str(exc) and "no published snapshot yet" not in str(exc):
                errors.append(str(exc))
        time.sleep(0.05)
    print(json.dumps({"renders": renders, "errors": errors}))


def analyst(db, stopfile):
    snap = snapshots.snapshot_path(db)
    while not snap.exists():
        time.sleep(0.05)
    con = duckdb.connect(str(snap), read_only=True)  # held open for the whole test
    queries, errors = 0, []
    while not Path(stopfile).exists():
        try:
            con.execute("SELECT tier, sum(requests) FROM rollup_minute GROUP BY tier").fetchall()
            queries += 1
        except duckdb.Error as exc:
            errors.append(str(exc))
        time.sleep(0.05)
    con.close()
    print(json.dumps({"queries": queries, "errors": errors}))


if __name__ == "__main__":
    {"writer": writer, "dashboard": dashboard, "analyst": analyst}[sys.argv[1]](*sys.argv[2:])
