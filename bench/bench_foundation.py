"""Foundation benchmarks: demo fill, 7-day metrics vs raw events, import.

    .venv/bin/python -m bench.bench_foundation [--days 7] [--repeat 15]

Prints a table; results are recorded by hand in bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from cachemon import config, settings
from cachemon.clock import Window
from cachemon.ingest import load as ingest_load
from cachemon.metrics import window as metrics_window
from cachemon.sources.simulator import Simulator
from cachemon.store import db as store_db
from cachemon.store import snapshots

ROOT = Path(__file__).resolve().parent.parent

OUT = ROOT / "bench" / "out"
UNTIL = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)

# The same figures as `metrics`, computed exactly from raw events.
RAW_TIERS = "SELECT tier, sum(sample_interval), sum(latency_ms * sample_interval) FROM events WHERE kind = 'request' AND timestamp >= $lo AND timestamp < $hi GROUP BY tier"
RAW_QUANTILE = """
WITH r AS (SELECT latency_ms, sample_interval AS w FROM events WHERE kind = 'request' AND timestamp >= $lo AND timestamp < $hi),
c AS (SELECT latency_ms, sum(w) OVER (ORDER BY latency_ms ROWS UNBOUNDED PRECEDING) AS cum, sum(w) OVER () AS total FROM r)
SELECT min(latency_ms) FILTER (WHERE cum >= 0.50 * total), min(latency_ms) FILTER (WHERE cum >= 0.95 * total),
       min(latency_ms) FILTER (WHERE cum >= 0.99 * total) FROM c
"""
RAW_TOP = "SELECT key, sum(sample_interval) AS n FROM events WHERE kind = 'request' AND timestamp >= $lo AND timestamp < $hi GROUP BY key ORDER BY n DESC, key LIMIT 10"


def bench_demo(days: float, db: Path) -> float:
    for p in (db, snapshots.snapshot_path(db)):
        p.unlink(missing_ok=True)
    env = dict(os.environ, CACHEMON_DB=str(db), PYTHONPATH=str(ROOT))
    t = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "cachemon",
            "demo",
            "--days",
            str(days),
            "--quiet",
            "--until",
            UNTIL.isoformat(),
        ],
        env=env,
        check=True,
    )
    return time.perf_counter() - t


def raw_events(days: float, raw: Path) -> int:
    """The same simulated events, kept raw in a DuckDB table."""
    raw.unlink(missing_ok=True)
    sim = Simulator(settings.SimulatorConfig())
    con = duckdb.connect(str(raw))
    con.execute("SET TimeZone = 'UTC'")
    first = True
    for w in Window(UNTIL - timedelta(days=days), UNTIL).split(timedelta(hours=6)):
        batch = sim.generate(w).table
        con.register("batch", batch)
        con.execute(
            "CREATE TABLE events AS SELECT * FROM batch"
            if first
            else "INSERT INTO events SELECT * FROM batch"
        )
        con.unregister("batch")
        first = False
    n = con.execute("SELECT count(*) FROM events").fetchall()[0][0]
    con.close()
    return n


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_metrics(db: Path, raw: Path, repeat: int):
    window = Window.ending(UNTIL - timedelta(minutes=23), timedelta(days=7))
    p = {"lo": window.start, "hi": window.end}
    with store_db.reader(db) as con:
        ours = median_time(lambda: metrics_window.compute(con, window, "7d"), repeat)
        m = metrics_window.compute(con, window, "7d")
    rcon = duckdb.connect(str(raw), read_only=True)
    rcon.execute("SET TimeZone = 'UTC'")

    def exact():
        rcon.execute(RAW_TIERS, p).fetchall()
        rcon.execute(RAW_TOP, p).fetchall()
        return rcon.execute(RAW_QUANTILE, p).fetchall()[0]

    theirs = median_time(exact, max(3, repeat // 5))
    q = exact()
    top = [r[0] for r in rcon.execute(RAW_TOP, p).fetchall()]
    rcon.close()
    errors = [
        abs(ours_q - exact_q) / exact_q
        for ours_q, exact_q in zip((m.latency.p50, m.latency.p95, m.latency.p99), q)
    ]
    return ours, theirs, errors, top == [k.key for k in m.top_keys], m.volume.total


def bench_import(raw: Path, rows: int) -> dict:
    rcon = duckdb.connect(str(raw), read_only=True)
    table = rcon.sql(f"SELECT * FROM events LIMIT {int(rows)}").to_arrow_table()
    rcon.close()
    table = table.set_column(0, "timestamp", table["timestamp"].cast(pa.timestamp("us", tz="UTC")))
    out = {}
    parquet, ndjson = OUT / "events.parquet", OUT / "events.ndjson"
    pq.write_table(table, parquet)
    table.to_pandas().assign(
        timestamp=lambda d: d.timestamp.dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    ).to_json(ndjson, orient="records", lines=True)
    for name, path in (("Parquet", parquet), ("NDJSON", ndjson)):
        db = OUT / f"import-{name}.duckdb"
        for p in (db, snapshots.snapshot_path(db)):
            p.unlink(missing_ok=True)
        cfg = config.with_db(settings.Config(), str(db))
        t = time.perf_counter()
        ingest_load.import_files(cfg, [path], UNTIL)
        out[name] = table.num_rows / (time.perf_counter() - t)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=float, default=7)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--import-rows", type=int, default=1_000_000)
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    db, raw = OUT / "bench.duckdb", OUT / "raw.duckdb"
    demo_s = bench_demo(args.days, db)
    n_raw = raw_events(args.days, raw)
    ours, theirs, errors, same_top, requests = bench_metrics(db, raw, args.repeat)
    rates = bench_import(raw, args.import_rows)
    size = db.stat().st_size / 2**20
    rows = [
        (f"demo --days {args.days:g} (wall)", f"{demo_s:.1f} s", "< 60 s"),
        ("store size", f"{size:.0f} MiB", ""),
        (
            "raw events (rows / weighted requests)",
            f"{n_raw:,} / {requests:,.0f}",
            "≈ 21 M requests",
        ),
        ("metrics 7d, ours (median)", f"{ours * 1000:.1f} ms", "< 50 ms"),
        ("metrics 7d, exact over raw events in DuckDB (median)", f"{theirs * 1000:.1f} ms", ""),
        ("speed-up", f"{theirs / ours:.0f}×", "≥ 20×"),
        ("p50 / p95 / p99 relative error", " / ".join(f"{e * 100:.2f} %" for e in errors), "≤ 1 %"),
        ("top 10 keys identical to exact", str(same_top), "True"),
        ("import Parquet", f"{rates['Parquet']:,.0f} events/s", ""),
        ("import NDJSON", f"{rates['NDJSON']:,.0f} events/s", ""),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'benchmark'.ljust(width)} | result | target")
    for name, value, target in rows:
        print(f"{name.ljust(width)} | {value} | {target}")
    shutil.rmtree(OUT / "tmp", ignore_errors=True)


if __name__ == "__main__":
    main()
