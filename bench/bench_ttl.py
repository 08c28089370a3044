"""TTL what-if benchmark: predictions for 5 TTLs × 3 endpoints over 30 days
of per-key aggregates at the seed's volume.

    .venv/bin/python -m bench.bench_ttl [--store bench/out/dash30.duckdb] [--runs 5]

Uses the 30-day store bench_dashboard.py builds (or any store).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

from cachemon import config, settings
from cachemon.clock import Window
from cachemon.store import db as store_db
from cachemon.store.queries import data_span
from cachemon.tuning import whatif as tuning_whatif

ROOT = Path(__file__).resolve().parent.parent

TTLS = tuning_whatif.parse_ttls("6h,12h,24h,48h,7d")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default=str(ROOT / "bench" / "out" / "dash30.duckdb"))
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    cfg = config.with_db(settings.Config(), args.store)
    times, keys = [], 0
    with store_db.reader(args.store) as con:
        end = data_span(con)[1]
        window = Window(end - timedelta(days=30), end)
        for _ in range(args.runs):
            t = time.perf_counter()
            found = tuning_whatif.whatif(con, cfg, ["title", "isbn", "author"], TTLS, window, end)
            times.append(time.perf_counter() - t)
        keys = con.execute("SELECT count(*) FROM ttl_keys").fetchall()[0][0]
    print("| benchmark | result |\n| --- | --- |")
    print(f"| keys in 30 days | {keys:,} |")
    print(
        f"| 5 TTLs × 3 endpoints, median of {args.runs} | {statistics.median(times) * 1000:.0f} ms |"
    )
    print(f"| slowest run | {max(times) * 1000:.0f} ms |")
    for w in found:
        best = tuning_whatif.recommend(w, cfg.costs.max_kv_ttl)
        print(
            f"| {w.endpoint}: KV hit % at "
            + ", ".join(
                f"{p.ttl.total_seconds() / 3600:g}h {p.kv_hit_rate:.2f}" for p in w.candidates
            )
            + f" (now {w.observed_kv_hit_rate:.2f}); recommended {best.ttl} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
