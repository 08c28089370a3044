"""The demo: `days` of simulated traffic, with every page's history filled in.

A composition over ingest (the simulator's data), alerts (their history),
tuning (experiment results) and costs (the daily report), each recorded in
the run log as the runner's job would be, which is why it lives above them rather than in `cachemon.ingest.load`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

from cachemon.alerts import evaluate as alerts_evaluate
from cachemon.argcheck import bounded
from cachemon.clock import DAY, MINUTE, Window, days_span, floor_to
from cachemon.costs import report
from cachemon.ingest import load
from cachemon.ingest import write as ingest_write
from cachemon.runner import runs as runner_runs
from cachemon.settings import Config
from cachemon.sources.simulator import Simulator
from cachemon.store import db as store_db
from cachemon.store import filling
from cachemon.tuning import results

# Demo windows: long enough to amortise per-statement costs, short enough
# for a progress bar and bounded memory: two windows' events are held at
# once (one ingested, the next simulated); at 6 h a 7-day demo peaks at
# about 0.9 GiB, at 24 h 1.4 GiB, for the same time (bench/README.md).
DEMO_CHUNK = timedelta(hours=6)
# The longest demo: a year and a month covers every retention and report view.
DEMO_MAX_DAYS = 400
SEED_MAX = 2**32 - 1  # numpy's seed range


def demo(
    cfg: Config,
    days: float,
    now: datetime,
    seed: int | None = None,
    progress: load.Progress | None = None,
) -> load.LoadSummary:
    """Replace the simulator's data with `days` of traffic ending at `now`.

    A demo that fails changes nothing: the arguments are checked first, then
    the new data is built aside and swapped in only when complete
    (`store.rebuilt`)."""
    span = days_span(days, "--days", DEMO_MAX_DAYS)
    sim_cfg = (
        cfg.simulator
        if seed is None
        else dataclasses.replace(cfg.simulator, seed=bounded(seed, "--seed", 0, SEED_MAX))
    )
    sim = Simulator(sim_cfg)
    end = floor_to(now, MINUTE)
    # Whole minutes, as every stored window (a fraction of a day may not be).
    windows = Window(floor_to(end - span, MINUTE), end).split(DEMO_CHUNK)
    # The progress file outlives the rebuild: it goes once the store is published.
    with (
        filling.announced(cfg.store.path, (end - windows[0].start) / DAY) as announce,
        store_db.rebuilt(cfg.store.path, now) as aside,
    ):
        days = _days_done(windows, announce, progress)
        events = _demo_into(aside, cfg, sim, windows, end, now, days)
    return load.LoadSummary(load.SIMULATOR, events, len(windows), end)


def _days_done(
    windows: list[Window], announce: Callable[[float], None], progress: load.Progress | None
) -> load.Progress:
    """A progress callback (windows done of all) that also announces the
    simulated days done in the store's progress file (`store.filling`)."""

    def update(done: int, total: int) -> None:
        announce(sum((w.end - w.start for w in windows[:done]), timedelta()) / DAY)
        if progress:
            progress(done, total)

    return update


def _demo_into(
    path: Path,
    cfg: Config,
    sim: Simulator,
    windows: list[Window],
    end: datetime,
    now: datetime,
    progress: load.Progress | None,
) -> int:
    """The demo's writes, into the store at `path` (the copy aside)."""
    with store_db.writer(path, now, publish=False) as con:
        ingest_write.drop_source(con, load.SIMULATOR)
        events = load.feed(con, cfg, sim, windows, now, progress)
        # The alert history of the old data would describe traffic that is
        # gone: evaluate the new span instead, without notifying anyone.
        alerts_evaluate.reset(con)
        ran = {"alerts": alerts_evaluate.backfill(con, cfg, windows[0].start, end)}
        # Likewise the daily jobs' results, so every page has something to show.
        results.reset(con)
        daily_at = next(s.at for s in runner_runs.schedule(cfg) if s.name == "experiments")
        ran["experiments"] = results.backfill(
            con, cfg.experiments, windows[0].start, end, cfg.pricing, daily_at, cfg.costs.r2_flow
        )
        day = report.report_day(end)
        if windows[0].start <= datetime(day.year, day.month, day.day, tzinfo=UTC):
            report.save(con, report.build(con, cfg, day, now))
            ran["report"] = 1
        _record_runs(con, ran, now)
    return events


def _record_runs(con: duckdb.DuckDBPyConnection, ran: dict[str, int], now: datetime) -> None:
    """A run-log row (the runner's record) for each job the demo did the
    work of, with what it wrote, so the Jobs page shows their last run.
    Ingest is left out: its runs are the runner's heartbeat (`selfcheck`),
    and a demo is not a running runner. Nor is a job with nothing done, nor
    one already recorded at `now` (the same demo again makes the same store)."""
    for job, rows in ran.items():
        if rows and not runner_runs.ran_at(con, job, now):
            runner_runs.record_run(
                con, runner_runs.RunRecord(job, now, now, runner_runs.Outcome.OK, None, 1, rows)
            )
