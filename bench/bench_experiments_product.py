"""A/A false promotions and power through the product: the daily job's own
analysis (SRM, guardrails, Holm, CUPED, the decision) on real stores.

    .venv/bin/python -m bench.bench_experiments_product [--runs 100] [--jobs 2] [--quick]
        [--effect 3] [--simulator N]   (--runs 0 --simulator N: the simulator's A/A only)

`bench_experiments.py` calls the statistics directly; this bench runs every
experiment through what the runner's `experiments` job runs
(`tuning.promote.daily`, dry run: it analyses with `tuning.analysis.analyze`
and would promote a winner), once a day for the planned 14 days, on a DuckDB
store the events were ingested into (`ingest.write.replace_window`, as every
source is). "Promoted" = a `winner` at any of the 14 daily looks.

Traffic, per run (`key_traffic`): title keys with Zipf(0.8) popularity, each
drawing Poisson(λ) requests a day and Binomial hits with the fixed-TTL
model's probability λT/(1+λT) (T = 1 day), 1 % of misses failing at the
origin; a pre-experiment week under the control TTL (CUPED's covariate);
keys assigned by the experiment's own scheme (`sha256-u64`, the key names
differ per run). Each key's day goes in as Analytics Engine-style data
points: one row per tier and status with the count as its sample interval.
A/A: no difference. Power: the treatment's misses shrink by one share, so
that its request-weighted hit rate is `--effect` points higher.

`--simulator` also runs A/A experiments on the embedded simulator
(`experiment = false`: its cohorts keep labels but share one TTL), the
seed's experiment and scheme, real cache state, incidents and all.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from cachemon import config, events
from cachemon.clock import DAY, Window
from cachemon.ingest import write as ingest_write
from cachemon.notify.transports import Transports
from cachemon.settings import Config, SimulatorConfig
from cachemon.sources.simulator import Simulator
from cachemon.store import db as store_db
from cachemon.tuning import promote
from cachemon.tuning.analysis import Decision
from cachemon.tuning.experiments import Experiment, Scheme, example_toml

START = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday: the experiment's start
PRE_DAYS, DAYS = 7, 14
MARGINS = (2.0, 0.0)
ORIGIN_ERRORS = 0.01
LATENCY = {"kv": (22.0, 0.45), "api": (180.0, 0.6)}  # median ms, log-sigma
NAME = "bench-ttl"


@dataclass(frozen=True)
class Traffic:
    """Title keys and their requests a day."""

    keys: int
    per_day: float

    def __str__(self) -> str:
        return f"{self.keys:,} keys, {self.per_day:,.0f} requests/day"


def population(t: Traffic) -> tuple[np.ndarray, np.ndarray]:
    """Each key's requests a day (Zipf 0.8) and control hit probability (λT/(1+λT), T = 1 day)."""
    w = np.arange(1, t.keys + 1) ** -0.8
    lam = w / w.sum() * t.per_day
    return lam, lam / (1 + lam)


def shrink(lam: np.ndarray, hit: np.ndarray, effect: float) -> float:
    """The share g by which every treatment key's misses shrink so that the
    request-weighted hit rate rises by `effect` (a fraction)."""
    miss = float((lam * (1 - hit)).sum() / lam.sum())
    return min(1.0, effect / miss)


def experiment_config(
    db: Path, margin: float, names: list[str], duration_days: int = DAYS, simulator: bool = False
) -> Config:
    """The config the daily job would read (a TOML file next to the store):
    one 50/50 title experiment under `sha256-u64` per name, or with
    `simulator` the simulator's own (the seed's experiment and scheme), all
    at `margin`."""
    duration = timedelta(days=duration_days)
    blocks = (
        [example_toml(start=START, duration=duration)]
        if simulator
        else [
            example_toml(
                name=name,
                cohorts=(("control", "24h", 0.5), ("treatment", "48h", 0.5)),
                start=START,
                description=None,
                scheme=Scheme.SHA256_U64,
                duration=duration,
            )
            for name in names
        ]
    )
    path = db.with_suffix(".toml")
    path.write_text("\n".join(blocks))
    cfg = config.with_db(config.load(path, env={}), str(db))
    return replace(cfg, experiments=tuple(replace(e, margin=margin) for e in cfg.experiments))


def key_traffic(t: Traffic, effect: float, run: int, e: Experiment, days: int = DAYS):
    """One experiment's traffic (its keys named after `run`): per day from
    `PRE_DAYS` before the start to `days` after it, the columns of its
    events; and the truth as generated: per cohort, the experiment days'
    hits and requests, and its keys with a request."""
    rng = np.random.default_rng([run, int(effect * 1e4), t.keys])
    names = np.array([f"search:title:q=r{run}-k{i}" for i in range(t.keys)], dtype=object)
    arm = np.array([e.assign(k).name == "treatment" for k in names])
    lam, hit = population(t)
    g = shrink(lam, hit, effect) if effect else 0.0
    p_treat = np.where(arm, 1 - (1 - hit) * (1 - g), hit)
    truth = {c: np.zeros(3) for c in ("control", "treatment")}  # hits, requests, keys
    seen = np.zeros(t.keys, bool)
    days_out = []
    for day in range(-PRE_DAYS, days):
        d = rng.poisson(lam)
        h = rng.binomial(d, p_treat if day >= 0 else hit)
        err = rng.binomial(d - h, ORIGIN_ERRORS)
        if day >= 0:
            seen |= d > 0
            for c, sel in (("control", ~arm), ("treatment", arm)):
                truth[c][:2] += h[sel].sum(), d[sel].sum()
        days_out.append(_columns(names, arm, h, d - h - err, err, day, e.name, rng))
    for c, sel in (("control", ~arm), ("treatment", arm)):
        truth[c][2] = (seen & sel).sum()
    return days_out, truth


def _columns(names, arm, hits, ok_misses, errors, day, experiment, rng) -> dict:
    """One day's rows of one experiment: one per key, tier and status with
    its count as the sample interval, at a random time of the day."""
    parts = []
    for tier, status, count in (
        ("kv", "ok", hits),
        ("api", "ok", ok_misses),
        ("api", "error", errors),
    ):
        sel = count > 0
        n = int(sel.sum())
        med, sig = LATENCY[tier]
        labelled = day >= 0  # the Worker labels requests only once the experiment runs
        parts.append(
            {
                "timestamp": (START + day * DAY).timestamp() * 1e6
                + rng.uniform(0, 86_399e6, n).astype(np.int64),
                "tier": np.full(n, tier, dtype=object),
                "key": names[sel],
                "experiment": np.full(n, experiment if labelled else "", dtype=object),
                "cohort": np.where(arm[sel], "treatment", "control").astype(object)
                if labelled
                else np.full(n, "", dtype=object),
                "status": np.full(n, status, dtype=object),
                "latency_ms": med * np.exp(sig * rng.standard_normal(n)),
                "sample_interval": count[sel].astype(float),
            }
        )
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _frame(cols: list[dict], what: str) -> events.EventFrame:
    """Days of several experiments as events, validated like any source's."""
    c = {k: np.concatenate([x[k] for x in cols]) for k in cols[0]}
    n = len(c["key"])
    table = pa.table(
        {
            "timestamp": pa.array(c["timestamp"].astype(np.int64), pa.timestamp("us", tz="UTC")),
            "tier": pa.array(c["tier"], pa.string()),
            "key": pa.array(c["key"], pa.string()),
            "endpoint": pa.array(np.full(n, "title", dtype=object), pa.string()),
            "experiment": pa.array(c["experiment"], pa.string()),
            "cohort": pa.array(c["cohort"], pa.string()),
            "status": pa.array(c["status"], pa.string()),
            "kind": pa.array(np.full(n, "request", dtype=object), pa.string()),
            "latency_ms": c["latency_ms"],
            "bytes": np.full(n, 4000.0),
            "sample_interval": c["sample_interval"],
        }
    )
    return events.validate(table, f"bench events ({what})")


def simulator_traffic(t: Traffic, run: int, days: int = DAYS):
    """The embedded simulator's A/A: its own experiment's labels, one TTL for
    both cohorts; `t.per_day` title requests (55 % of its traffic)."""
    sim = Simulator(
        SimulatorConfig(
            seed=run,
            requests_per_hour=t.per_day / 24 / 0.55,
            catalog_keys=2 * t.keys,  # half of the catalog is title keys
            sample_threshold_per_minute=1e9,
            experiment=False,
        )
    )
    lo = START - PRE_DAYS * DAY
    return [(w, sim.generate(w)) for w in Window(lo, START + days * DAY).split(DAY)]


def daily_looks(db: Path, cfgs: dict[float, Config], days: int = DAYS) -> dict[float, dict]:
    """The daily job's analyses (`promote.daily`, dry run: nothing written
    to KV or stored) at each of the `days` daily looks, per margin and
    experiment."""
    out = {m: {e.name: [] for e in cfg.experiments} for m, cfg in cfgs.items()}
    transports = Transports.from_env({})
    with store_db.reader(db) as con:
        for day in range(1, days + 1):
            at = START + day * DAY
            for m, cfg in cfgs.items():
                for a in promote.daily(con, cfg, at, at, {}, transports, dry_run=True).analyses:
                    out[m][a.experiment].append(a)
    return out


def run_batch(
    workdir: Path,
    t: Traffic,
    effect: float,
    runs: range,
    simulator: bool = False,
    days: int = DAYS,
    margins=MARGINS,
):
    """Experiments through the product, several to a store: their events
    ingested into a fresh store (disjoint keys, one experiment each; the
    simulator's store holds its one experiment), the daily job's analysis of
    every experiment at every daily look, per margin. Returns
    ({margin: {experiment: [Analysis per look]}}, {experiment: truth})."""
    db = workdir / f"batch{runs.start}.duckdb"
    names = [f"{NAME}-{r}" for r in runs]
    cfgs = {m: experiment_config(db, m, names, days, simulator) for m in margins}
    end = START + days * DAY
    truth = {}
    if simulator:
        parts = simulator_traffic(t, runs.start, days)
    else:
        traffic = [
            key_traffic(t, effect, r, e, days) for r, e in zip(runs, cfgs[margins[0]].experiments)
        ]
        truth = {n: tr for n, (_, tr) in zip(names, traffic)}
        # The whole span in one window (as `import` stores a file): one transaction.
        frame = _frame([c for cols, _ in traffic for c in cols], "all")
        parts = [(Window(START - PRE_DAYS * DAY, end), frame)]
    with store_db.writer(db, end, create=True) as con:
        for w, frame in parts:
            ingest_write.replace_window(con, frame, "simulator", w, end)
    looks = daily_looks(db, cfgs, days)
    db.unlink()
    db.with_suffix(".toml").unlink()
    return looks, truth


def promoted(looks) -> bool:
    """Whether the daily job would have promoted: a winner at any look."""
    return any(a.decision == Decision.WINNER for a in looks)


def _one(args) -> tuple[dict[float, bool], bool]:
    """One experiment in its own store (a worker process's task): promoted
    per margin, and whether SRM blocked it at any look."""
    workdir, t, effect, run, simulator = args
    looks, _ = run_batch(workdir, t, effect, range(run, run + 1), simulator)
    return (
        {m: any(promoted(v) for v in looks[m].values()) for m in MARGINS},
        any(a.decision == Decision.SRM for v in looks[MARGINS[0]].values() for a in v),
    )


def rates(t: Traffic, effect: float, runs: int, workdir: Path, jobs: int, simulator=False):
    """Share of `runs` experiments promoted, per margin, and of SRM-blocked ones."""
    base = 10_000 * (1 + int(simulator)) + int(effect * 100) * 1000
    tasks = [(workdir, t, effect, base + r, simulator) for r in range(runs)]
    with ProcessPoolExecutor(jobs) as pool:
        out = list(pool.map(_one, tasks))
    return {m: sum(w[m] for w, _ in out) / runs for m in MARGINS}, sum(s for _, s in out) / runs


LOW = Traffic(3_000, 8_000)  # the case
TRAFFIC = (LOW, Traffic(3_000, 16_000), Traffic(3_000, 32_000), Traffic(10_000, 40_000))
AA_TRAFFIC = (LOW, Traffic(10_000, 40_000))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100, help="experiments per row")
    ap.add_argument("--effect", type=float, default=3.0, help="true gain for power, points")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 4 runs a row, low traffic")
    ap.add_argument("--simulator", type=int, default=0, help="also N A/A runs on the simulator")
    args = ap.parse_args()
    runs = 4 if args.quick else args.runs
    aa, power = ((LOW,), TRAFFIC[:2]) if args.quick else (AA_TRAFFIC, TRAFFIC)
    rows = [("A/A", t, 0.0, False, runs) for t in aa]
    rows += [(f"+{args.effect:g} points", t, args.effect / 100, False, runs) for t in power]
    if args.simulator:
        rows.append(("A/A (simulator)", LOW, 0.0, True, args.simulator))
    t0 = time.time()
    print(f"{DAYS} daily looks through promote.daily (dry run), {args.jobs} jobs; load {_load()}")
    print(
        f"| case | traffic | runs | promoted, margin {MARGINS[0]:g} | margin {MARGINS[1]:g} | SRM |"
    )
    with tempfile.TemporaryDirectory() as d:
        for name, t, effect, sim, n in [r for r in rows if r[-1]]:  # --runs 0: simulator only
            r0 = time.time()
            by_margin, srm = rates(t, effect, n, Path(d), args.jobs, sim)
            print(
                f"| {name} | {t} | {n} | {by_margin[MARGINS[0]]:.1%} | "
                f"{by_margin[MARGINS[1]]:.1%} | {srm:.1%} | ({time.time() - r0:.0f} s)",
                flush=True,
            )
    print(f"({time.time() - t0:.0f} s; load {_load()})")


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
