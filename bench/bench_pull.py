"""Pull benchmark: the Analytics Engine pull from the loopback emulator.

Default (`--scales 1,10,100`): for each traffic scale (× the seed's 125,000
requests an hour), `--hours` of simulated traffic with Analytics Engine-like
sampling (`[simulator] sample_threshold_per_minute`: busy minutes keep one
data point in 2^k) are loaded into the emulator and pulled three ways in the
same run: the budgeted pull (`[columns] key_hash` and `--key-budget`), the
exact pull (no key hash: every per-key row) and a raw pull (every data
point). For each: rows, bytes and wall time; for the two rollup pulls the
error of hit rates, p99 and the top-10 keys' counts against the unsampled
truth (the same simulation with no Analytics Engine sampling, same seed).

    .venv/bin/python -m bench.bench_pull [--scales 1,10,100] [--hours 2] [--key-budget N]
    .venv/bin/python -m bench.bench_pull --days 7        # the older one-scale table
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cachemon import config, events, settings
from cachemon.clock import HOUR, Window
from cachemon.ingest import load as ingest_load
from cachemon.ingest import write as ingest_write
from cachemon.metrics import window as metrics_window
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
SEED_RATE = 125_000.0
TIERS = ("edge", "kv", "r2", "api")


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
        if "bucket" in sql and "heavy" not in sql
        else "per-key sizes"
        if "AS heavy" in sql
        else "per-key counts"
        if " AS t," in sql
        else "TTL sample sizes"
        if "AS n" in sql and "GROUP BY key_hash" in sql
        else "TTL sample rows"
        if "AS weight" in sql
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


# -- the scale table -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Truth:
    """The unsampled traffic's figures over the span."""

    requests: float
    shares: dict  # tier -> percent of requests
    p99: float
    top: dict  # key -> requests, the 10 busiest


def truth_of(frames: list[events.EventFrame]) -> Truth:
    """Hit rates, p99 and the top-10 keys of the unsampled events (numpy)."""
    tiers = {t: 0.0 for t in TIERS}
    lat, keys = [], {}
    for f in frames:
        t = f.table.filter(pc.equal(f.table["kind"].cast(pa.string()), "request"))
        tier = t["tier"].cast(pa.string()).to_numpy(zero_copy_only=False)
        for name in TIERS:
            tiers[name] += float((tier == name).sum())
        lat.append(t["latency_ms"].to_numpy())
        vc = pc.value_counts(t["key"].cast(pa.string()))
        for v, c in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()):
            keys[v] = keys.get(v, 0) + c
    total = sum(tiers.values())
    p99 = float(np.quantile(np.concatenate(lat), 0.99, method="inverted_cdf"))
    top = dict(sorted(keys.items(), key=lambda kv: (-kv[1], kv[0]))[:10])
    return Truth(total, {k: 100 * v / total for k, v in tiers.items()}, p99, top)


KEY_TOTALS = """
SELECT k.key, sum(edge + kv + r2 + api) FROM key_minute m JOIN cache_keys k USING (key_id)
WHERE k.key IN (SELECT unnest($keys::VARCHAR[])) GROUP BY k.key
"""


def errors_of(db: Path, span: Window, truth: Truth) -> dict:
    """The store's figures against the truth: hit rates (points), p99 and
    top-10 counts (relative); the top keys `metrics` marks estimated."""
    with store_db.reader(db) as con:
        m = metrics_window.compute(con, span, "span", top=10)
        counts = dict(con.execute(KEY_TOTALS, {"keys": list(truth.top)}).fetchall())
    hit = max(abs(m.volume.share(t) - truth.shares[t]) for t in TIERS)
    top = max(abs(counts.get(k, 0.0) - n) / n for k, n in truth.top.items())
    return {
        "hit_points": hit,
        "p99_rel": abs(m.latency.p99 - truth.p99) / truth.p99,
        "top10_rel": top,
        "estimated_top": sum(not k.exact for k in m.top_keys),
    }


def pull_once(emu: Emulator, db: Path, cfg: settings.Config, span: Window) -> dict:
    """One pull of `span` into a fresh store: wall time, rows and bytes, per family."""
    for p in (db, snapshots.snapshot_path(db)):
        p.unlink(missing_ok=True)
    client = Client(Credentials(emu.account, TOKEN, emu.base))
    n0 = len(emu.answered)
    t = time.perf_counter()
    ingest_load.pull(config.with_db(cfg, str(db)), client, UNTIL, since=span.start, until=span.end)
    wall = time.perf_counter() - t
    fam: dict[str, int] = {}
    for sql, n, _ in emu.answered[n0:]:
        fam[family(sql)] = fam.get(family(sql), 0) + n
    answered = emu.answered[n0:]
    with duckdb.connect(str(db), read_only=True) as con:
        rates = [r[0] for r in con.execute("SELECT rate FROM key_estimates").fetchall()]
    return {
        "wall": wall,
        "rows": sum(n for _, n, _ in answered),
        "bytes": sum(b for _, _, b in answered),
        "families": fam,
        "key_rows": fam.get("per-key counts", 0),
        "rate": min(rates) if rates else 1.0,
    }


def scale_run(scale: float, hours: float, key_budget: int, raw: bool) -> dict:
    span = Window(UNTIL - timedelta(hours=hours), UNTIL)
    sampled_cfg = settings.SimulatorConfig(requests_per_hour=SEED_RATE * scale)
    full_cfg = dataclasses.replace(sampled_cfg, sample_threshold_per_minute=1e12)
    # The unsampled truth: the same seed and traffic with no sampling, hour by hour.
    full, truth_frames = Simulator(full_cfg), []
    for w in span.split(HOUR):
        truth_frames.append(full.generate(w))
    truth = truth_of(truth_frames)
    del truth_frames, full
    cfg = settings.Config()
    budgeted = dataclasses.replace(
        cfg,
        columns=dataclasses.replace(cfg.columns, key_hash="double3"),
        analytics_engine=dataclasses.replace(cfg.analytics_engine, key_budget=key_budget),
    )
    with Emulator(TOKEN) as emu:
        sim = Simulator(sampled_cfg)
        for w in span.split(HOUR):
            emu.add(sim.generate(w))
        points = emu.db.execute(f"SELECT count(*) FROM {emu.dataset}").fetchall()[0][0]
        out = {"scale": scale, "points": points, "requests": truth.requests}
        out["budgeted"] = pull_once(emu, OUT / f"pull-b{scale:g}.duckdb", budgeted, span)
        out["exact"] = pull_once(emu, OUT / f"pull-e{scale:g}.duckdb", cfg, span)
        if raw:
            client = Client(Credentials(emu.account, TOKEN, emu.base))
            w, n, b = raw_pull(client, emu, span, OUT / f"pull-r{scale:g}.duckdb")
            out["raw"] = {"wall": w, "rows": n, "bytes": b}
    out["budgeted"] |= errors_of(OUT / f"pull-b{scale:g}.duckdb", span, truth)
    out["exact"] |= errors_of(OUT / f"pull-e{scale:g}.duckdb", span, truth)
    return out


def print_scales(results: list[dict], hours: float, key_budget: int) -> None:
    load = os.getloadavg()
    print(
        f"{hours:g} h of simulated traffic per scale; budget {key_budget:,} per-key rows a day; "
        f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}\n"
    )
    cols = (
        "scale", "requests", "data points", "pull", "rows", "per-key rows", "R", "MB", "wall s",
        "hit rate err (pt)", "p99 err", "top-10 err", "top-10 estimated",
    )  # fmt: skip
    print("| " + " | ".join(cols) + " |")
    print("|" + " --- |" * len(cols))
    for r in results:
        for kind in ("budgeted", "exact", "raw"):
            p = r.get(kind)
            if p is None:
                continue
            cells = [f"{r['scale']:g}×", f"{r['requests']:,.0f}", f"{r['points']:,}", kind]
            cells += [f"{p['rows']:,}", f"{p['key_rows']:,}" if "key_rows" in p else ""]
            cells += [f"{p['rate']:.4g}" if "rate" in p else ""]
            cells += [f"{p['bytes'] / 1e6:,.1f}", f"{p['wall']:.1f}"]
            if "hit_points" in p:
                cells += [
                    f"{p['hit_points']:.3f}",
                    f"{100 * p['p99_rel']:.2f} %",
                    f"{100 * p['top10_rel']:.2f} %",
                    f"{p['estimated_top']}",
                ]
            else:
                cells += ["", "", "", ""]
            print("| " + " | ".join(cells) + " |")
    base, exact = results[0]["budgeted"]["rows"], results[0]["exact"]["rows"]
    for r in results[1:]:
        print(
            f"\nrows at {r['scale']:g}× / 1×: budgeted {r['budgeted']['rows'] / base:.2f}×, "
            f"exact {r['exact']['rows'] / exact:.2f}×"
        )
    for r in results:
        fams = ", ".join(f"{k} {v:,}" for k, v in sorted(r["budgeted"]["families"].items()))
        print(f"{r['scale']:g}× budgeted rows by query: {fams}")


# -- the older one-scale table ------------------------------------------------------


def days_run(days: float, no_raw: bool) -> None:
    db = OUT / "pull.duckdb"
    for p in (db, snapshots.snapshot_path(db)):
        p.unlink(missing_ok=True)
    span = Window(UNTIL - timedelta(days=days), UNTIL)
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
        raw = None if no_raw else raw_pull(client, emu, span, OUT / "pull-raw.duckdb")
    rows = [
        ("days pulled", f"{days:g}"),
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=float, help="the older table: N days at the seed's volume")
    ap.add_argument("--scales", default="1,10,100", help="traffic scales (× the seed's)")
    ap.add_argument("--hours", type=float, default=2, help="simulated hours per scale")
    ap.add_argument(
        "--key-budget",
        type=int,
        default=settings.AnalyticsEngineConfig().key_budget,
        help="per-key rows a day of the budgeted pull",
    )
    ap.add_argument(
        "--no-raw", action="store_true", help="skip the raw pull (it doubles the run time)"
    )
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.days is not None:
        return days_run(args.days, args.no_raw)
    results = []
    for s in args.scales.split(","):
        results.append(scale_run(float(s), args.hours, args.key_budget, not args.no_raw))
        print(f"scale {s} done, load {os.getloadavg()[0]:.1f}", flush=True)
    print_scales(results, args.hours, args.key_budget)


if __name__ == "__main__":
    main()
