"""Pull benchmark: N days at the seed's volume from the loopback Analytics
Engine emulator; wall time and rows transferred, against raw events.

    .venv/bin/python bench/bench_pull.py [--days 7]
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cachemon import config, pipeline, store  # noqa: E402
from cachemon.clock import Window  # noqa: E402
from cachemon.sources.analytics_engine import Client, Credentials  # noqa: E402
from cachemon.sources.simulator import Simulator  # noqa: E402
from cachemon.testing.ae_emulator import Emulator  # noqa: E402

OUT = ROOT / "bench" / "out"
UNTIL = datetime(2026, 11, 20, 0, 0, tzinfo=timezone.utc)
TOKEN = "bench-token"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=float, default=7)
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    db = OUT / "pull.duckdb"
    for p in (db, store.snapshot_path(db)):
        p.unlink(missing_ok=True)
    span = Window(UNTIL - timedelta(days=args.days), UNTIL)
    with Emulator(TOKEN) as emu:
        sim = Simulator(config.SimulatorConfig())
        for w in span.split(timedelta(hours=24)):
            emu.add(sim.generate(w))
        raw_rows = emu.db.execute(f"SELECT count(*) FROM {emu.dataset}").fetchall()[0][0]
        client = Client(Credentials(emu.account, TOKEN, emu.base))
        cfg = config.with_db(config.Config(), str(db))
        t = time.perf_counter()
        pipeline.pull(cfg, client, UNTIL, since=span.start, until=span.end)
        wall = time.perf_counter() - t
        sent = emu.rows_sent
        per_family = {}
        for sql, n in emu.answered:
            family = ("request rollups" if "latency_sum" in sql else "latency histogram" if "bucket" in sql
                      else "per-key counts" if " AS t," in sql else "gauge points")
            per_family[family] = per_family.get(family, 0) + n
    rows = [
        ("days pulled", f"{args.days:g}"),
        ("queries", f"{client.queries}"),
        ("pull wall time", f"{wall:.1f} s"),
        ("raw data points (rows a raw pull would move)", f"{raw_rows:,}"),
        ("rollup rows transferred", f"{sent:,}"),
        ("ratio raw / rollup", f"{raw_rows / sent:.1f}×"),
    ] + [(f"  of which {k}", f"{v:,} ({raw_rows / max(v, 1):.0f}× fewer than raw)") for k, v in per_family.items()]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name.ljust(width)} | {value}")


if __name__ == "__main__":
    main()
