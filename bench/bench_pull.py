"""Pull benchmark: N days at the seed's volume from the loopback Analytics
Engine emulator; wall time and rows transferred, against raw events.

    .venv/bin/python -m bench.bench_pull [--days 7]
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa

from cachemon import config, events, settings
from cachemon.clock import Window
from cachemon.ingest import load as ingest_load
from cachemon.ingest import write as ingest_write
from cachemon.sources import ae_sql
from cachemon.sources.analytics_engine import Client, Credentials
from cachemon.sources.simulator import Simulator
from cachemon.store import db as store_db
from cachemon.store import snapshots
from cachemon.testing.ae_emulator import Emulator

ROOT = Path(__file__).resolve().parent.parent

OUT = ROOT / "bench" / "out"
UNTIL = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)
TOKEN = "bench-token"


FLOORS = """
SELECT count(*) FILTER (WHERE blob6 = 'request') AS requests,
       count(DISTINCT (time_bucket(INTERVAL '1 day', timestamp), blob1)) FILTER (WHERE blob6 = 'request') AS key_days
FROM {dataset}
"""


def family(sql: str) -> str:
    return (
        "request rollups"
        if "latency_sum" in sql
        else "latency histogram"
        if "bucket" in sql
        else "per-key counts"
        if " AS t," in sql
        else "raw"
        if "sample_interval AS" in sql
        else "gauge points"
    )


def raw_pull(client: Client, emu: Emulator, span: Window, db: Path) -> tuple[float, int, int]:
    """The alternative: every data point fetched, parsed, validated as events
    and rolled up locally through the same ingestion path."""
    rows0, bytes0 = emu.rows_sent, emu.bytes_sent
    for p in (db, snapshots.snapshot_path(db)):
        p.unlink(missing_ok=True)
    t = time.perf_counter()
    with store_db.writer(db, UNTIL) as con:
        for w in span.split(timedelta(hours=1)):
            result = client.query(ae_sql.raw_events(emu.dataset, settings.ColumnMapping(), w))
            frame = events.validate(pa.Table.from_pylist(list(result.data)), "raw pull")
            ingest_write.replace_window(con, frame, "raw", w, UNTIL)
    return time.perf_counter() - t, emu.rows_sent - rows0, emu.bytes_sent - bytes0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=float, default=7)
    ap.add_argument(
        "--no-raw", action="store_true", help="skip the raw pull (it doubles the run time)"
    )
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    db = OUT / "pull.duckdb"
    for p in (db, snapshots.snapshot_path(db)):
        p.unlink(missing_ok=True)
    span = Window(UNTIL - timedelta(days=args.days), UNTIL)
    with Emulator(TOKEN) as emu:
        sim = Simulator(settings.SimulatorConfig())
        for w in span.split(timedelta(hours=24)):
            emu.add(sim.generate(w))
        raw_rows = emu.db.execute(f"SELECT count(*) FROM {emu.dataset}").fetchall()[0][0]
        n_requests, key_days = emu.db.execute(FLOORS.format(dataset=emu.dataset)).fetchall()[0]
        client = Client(Credentials(emu.account, TOKEN, emu.base))
        cfg = config.with_db(settings.Config(), str(db))
        t = time.perf_counter()
        ingest_load.pull(cfg, client, UNTIL, since=span.start, until=span.end)
        wall = time.perf_counter() - t
        sent, sent_bytes = emu.rows_sent, emu.bytes_sent
        per_family: dict[str, list[int]] = {}
        for sql, n, size in emu.answered:
            f = per_family.setdefault(family(sql), [0, 0])
            f[0], f[1] = f[0] + n, f[1] + size
        raw = None if args.no_raw else raw_pull(client, emu, span, OUT / "pull-raw.duckdb")
    rows = [
        ("days pulled", f"{args.days:g}"),
        ("queries", f"{client.queries}"),
        ("rollup pull wall time", f"{wall:.1f} s"),
        ("rollup rows transferred", f"{sent:,}"),
        ("rollup bytes transferred", f"{sent_bytes / 1e6:,.1f} MB"),
        ("raw data points (rows a raw pull moves)", f"{raw_rows:,}"),
        ("ratio raw / rollup rows", f"{raw_rows / sent:.1f}×"),
    ] + [
        (
            f"  of which {k}",
            f"{v[0]:,} rows, {v[1] / 1e6:,.1f} MB ({raw_rows / max(v[0], 1):.1f}× fewer rows than raw)",
        )
        for k, v in per_family.items()
    ]
    rows.append(
        (
            "floor of any per-key pull: distinct key-days",
            f"{key_days:,} ({raw_rows / key_days:.1f}× fewer than raw)",
        )
    )
    rows.append(("request data points", f"{n_requests:,}"))
    if raw:
        rows += [
            ("raw pull wall time (fetch, parse, roll up, store)", f"{raw[0]:.1f} s"),
            ("raw pull bytes", f"{raw[2] / 1e6:,.1f} MB"),
            ("ratio raw / rollup bytes", f"{raw[2] / sent_bytes:.1f}×"),
            ("ratio raw / rollup wall time", f"{raw[0] / wall:.1f}×"),
        ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name.ljust(width)} | {value}")


if __name__ == "__main__":
    main()
