"""Analyst access benchmark: every example query of docs/analysts.md, the
Parquet export, and retention, on 30 days at the seed's volume.

    .venv/bin/python -m bench.bench_analyst [--store bench/out/dash30.duckdb] [--runs 3]

Uses the 30-day store bench_dashboard.py builds; retention runs on a copy.
The queries say now(), so the store's data should end near now.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

from cachemon import settings
from cachemon.ingest import retention
from cachemon.store import db as store_db
from cachemon.store import export, snapshots
from cachemon.store.queries import data_span

ROOT = Path(__file__).resolve().parent.parent


def _examples():
    text = (
        (ROOT / "docs" / "analysts.md")
        .read_text()
        .split("## Example questions", 1)[1]
        .split("\n## ", 1)[0]
    )
    for section in text.split("\n### ")[1:]:
        for sql in re.findall(r"```sql\n(.*?)```", section, re.S):
            yield section.splitlines()[0], sql


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default=str(ROOT / "bench" / "out" / "dash30.duckdb"))
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "s.duckdb"
        shutil.copyfile(args.store, copy)
        # Brings an older store up to the current schema (views included).
        with store_db.writer(copy, datetime.now(UTC)):
            pass
        print("| query / step | median | rows |\n| --- | --- | --- |")
        con = duckdb.connect(str(snapshots.snapshot_path(copy)), read_only=True)
        con.execute("SET TimeZone = 'UTC'")
        for title, sql in _examples():
            runs = [_timed(lambda sql=sql: con.execute(sql).fetchall()) for _ in range(args.runs)]
            print(
                f"| {title} | {statistics.median(t for t, _ in runs) * 1000:.0f} ms | {len(runs[0][1]):,} |"
            )
        con.close()
        with store_db.reader(copy) as con:
            seconds, written = _timed(lambda: export.parquet(con, Path(tmp) / "export"))
            end = data_span(con)[1]
        size = sum(p.stat().st_size for p in (Path(tmp) / "export").rglob("*.parquet"))
        rows = sum(w.rows for w in written)
        print(
            f"| export (all {len(written)} datasets) | {seconds:.1f} s | {rows:,} ({size / 2**20:.0f} MiB Parquet, "
            f"store {copy.stat().st_size / 2**20:.0f} MiB) |"
        )
        keep = settings.RetentionConfig(minute_days=7, hour_days=14)
        with store_db.writer(copy, end) as con:
            seconds, result = _timed(lambda: retention.apply(con, end + timedelta(days=1), keep))
        print(
            f"| retention to 7 days of minutes, 14 of hours | {seconds:.1f} s | "
            f"{result.minute_rows:,} minute and {result.hour_rows:,} hourly rows removed |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
