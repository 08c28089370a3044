"""TTL what-if validation: the SHARDS replay (`cachemon.tuning.shards`) and
the fixed-TTL model against the exact full replay, per TTL from 1 h to 30 d.

    .venv/bin/python -m bench.bench_ttl_validation [--rate 0.1] [--seed 11] [--no-simulator]

Traces (title endpoint shape): 5,000 Zipf keys (α 0.8), 5,000 KV lookups a
day, 8 weeks of history before a 7-day window; Poisson, bursty (about 15
requests within 10 minutes per burst) and periodic polling (every 6 to 30 h),
from `cachemon.testing.traces`; and the simulator (5,000 catalog keys,
4,000 requests/hour, unsampled) over the same span, title's KV lookups. The
exact replay is the plain per-key loop (`traces.exact_hit_ratio`) over the
whole history; the sample is every key whose `keyhash` is under the rate; the
model is λT/(1+λT) on the window's per-key counts (`tuning.whatif`). Prints
markdown tables: per trace and TTL, then the error at other rates.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta

import numpy as np

from cachemon.clock import Window
from cachemon.settings import SimulatorConfig
from cachemon.sources.simulator import Simulator
from cachemon.testing import traces
from cachemon.tuning import keyrates, shards

US = 1_000_000
END = datetime(2026, 11, 30, tzinfo=UTC)
WINDOW = Window(END - timedelta(days=7), END)
HISTORY = Window(WINDOW.start - timedelta(weeks=8), END)
TTLS = [t for t in shards.grid() if timedelta(hours=1) <= t <= timedelta(days=30)]
RATES = (0.01, 0.03, 0.05, 0.1, 0.2)


def simulator_trace(seed: int) -> traces.Trace:
    """Title's KV lookups (requests the edge did not serve) from the simulator."""
    sim = Simulator(
        SimulatorConfig(
            seed=seed,
            requests_per_hour=4000,
            catalog_keys=5000,
            sample_threshold_per_minute=1e12,
            experiment=False,
        )
    )
    keys, times, failed = [], [], []
    for w in HISTORY.split(timedelta(days=1)):
        t = sim.generate(w).table.to_pandas()
        t = t[(t.kind == "request") & (t.endpoint == "title") & (t.tier != "edge")]
        keys.append(t.key.astype(str).to_numpy(dtype=object))
        times.append(t.timestamp.astype("datetime64[us, UTC]").astype("int64").to_numpy())
        # A failed fill (an r2/api error) writes nothing, in the simulator and the replays.
        failed.append(((t.status == "error") & t.tier.isin(["r2", "api"])).to_numpy())
    k, t, f = np.concatenate(keys), np.concatenate(times), np.concatenate(failed)
    order = np.argsort(t, kind="stable")
    return traces.Trace("simulator", k[order], t[order], f[order])


def population(tr: traces.Trace) -> np.ndarray:
    """Every key's KV lookups in the window (what the store's rollups hold)."""
    inside = (tr.t_us >= round(WINDOW.start.timestamp() * US)) & (
        tr.t_us < round(WINDOW.end.timestamp() * US)
    )
    return np.unique(tr.keys[inside], return_counts=True)[1].astype(float)


def model(pop: np.ndarray) -> np.ndarray:
    """The fixed-TTL model's hit ratio per TTL on the window's counts."""
    days = (WINDOW.end - WINDOW.start) / timedelta(days=1)
    mu = pop / days
    return np.array([keyrates.model_hits(mu, days, t / timedelta(days=1)).sum() for t in TTLS]) / (
        mu.sum()
    )


def label(t: timedelta) -> str:
    """A grid TTL for the table: '1h', '7.3h', '2.6d'."""
    h = t / timedelta(hours=1)
    return f"{h:.3g}h" if h < 48 else f"{h / 24:.3g}d"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--no-simulator", action="store_true")
    args = ap.parse_args()
    made = [traces.generate(s, HISTORY, 5000, 5000, args.seed) for s in traces.SHAPES]
    if not args.no_simulator:
        made.append(simulator_trace(args.seed))
    summary, sweep = [], []
    for tr in made:
        t0 = time.perf_counter()
        exact = np.array(
            [traces.exact_hit_ratio(tr.keys, tr.t_us, WINDOW, t, tr.failed) for t in TTLS]
        )
        pop, full = population(tr), tr.samples()
        t1 = time.perf_counter()
        c = shards.curve(
            traces.shards_sample(full, tr.keys, args.rate), WINDOW, TTLS, pop, with_grid=False
        )
        t2 = time.perf_counter()
        m = model(pop)
        d, dm = 100 * (c.hit_ratio - exact), 100 * (m - exact)
        print(
            f"\n### {tr.shape}: {len(tr.t_us):,} lookups, {len(pop):,} keys in the window, "
            f"rate {args.rate} ({c.keys:,} sampled keys)\n"
        )
        print("| TTL | exact % | SHARDS % ± error | SHARDS − exact | model − exact |")
        print("| --- | --- | --- | --- | --- |")
        for i, t in enumerate(TTLS):
            print(
                f"| {label(t)} | {100 * exact[i]:.2f} | {100 * c.hit_ratio[i]:.2f} ± "
                f"{100 * c.error[i]:.2f} | {d[i]:+.2f} | {dm[i]:+.2f} |"
            )
        summary.append(
            (tr.shape, c.keys, np.abs(d).mean(), np.abs(d).max(), np.abs(dm).mean(), dm[0], t2 - t1)
        )
        for r in RATES:
            cr = shards.curve(traces.shards_sample(full, tr.keys, r), WINDOW, TTLS, pop, False)
            e = 100 * (cr.hit_ratio - exact)
            sweep.append((tr.shape, r, cr.keys, np.abs(e).mean(), np.abs(e).max()))
        print(f"\n(exact replay {t1 - t0:.1f} s, sampled replay {t2 - t1:.2f} s)")
    print(f"\n### Summary at rate {args.rate}, {len(TTLS)} TTLs from 1h to 30d\n")
    print(
        "| trace | sampled keys | SHARDS MAE | SHARDS max | model MAE | model at 1h | replay time |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for shape, k, mae, mx, mmae, m1, secs in summary:
        print(f"| {shape} | {k:,} | {mae:.2f} | {mx:.2f} | {mmae:.2f} | {m1:+.2f} | {secs:.2f} s |")
    print("\n### Error by rate (points, 1h to 30d)\n")
    print("| trace | rate | sampled keys | MAE | max |")
    print("| --- | --- | --- | --- | --- |")
    for shape, r, k, mae, mx in sweep:
        print(f"| {shape} | {r} | {k:,} | {mae:.2f} | {mx:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
