"""Loading data into the store: the simulator (demo and live) and files.

Each function opens the store as the single writer, feeds events through
`ingest`, and publishes the reader snapshot when done.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cachemon.alerts import evaluate as alerts
from cachemon.argcheck import bounded
from cachemon.clock import HOUR, MINUTE, Window, days_span, floor_to
from cachemon.costs import report
from cachemon.ingest import retention
from cachemon.ingest import write as ingest
from cachemon.runner import runs as runner
from cachemon.settings import Config
from cachemon.sources import files
from cachemon.sources.simulator import SimState, Simulator
from cachemon.store import db as store
from cachemon.tuning import analysis as tuning

PUBLISH_EVERY_S = 30.0
SIMULATOR = "simulator"
ANALYTICS_ENGINE = "analytics_engine"
Progress = Callable[[int, int], None]
# Demo windows: long enough to amortise per-statement costs, short enough
# for a progress bar and bounded memory (~2 M events a day).
DEMO_CHUNK = timedelta(hours=24)
# The longest demo: a year and a month covers every retention and report view.
DEMO_MAX_DAYS = 400
SEED_MAX = 2**32 - 1  # numpy's seed range


@dataclass(frozen=True)
class LoadSummary:
    source: str
    events: int
    windows: int
    until: datetime | None


def demo(
    cfg: Config,
    days: float,
    now: datetime,
    seed: int | None = None,
    progress: Progress | None = None,
) -> LoadSummary:
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
    with store.rebuilt(cfg.store.path, now) as aside:
        events = _demo_into(aside, cfg, sim, windows, end, now, progress)
    return LoadSummary(SIMULATOR, events, len(windows), end)


def _demo_into(
    path: Path,
    cfg: Config,
    sim: Simulator,
    windows: list[Window],
    end: datetime,
    now: datetime,
    progress: Progress | None,
) -> int:
    """The demo's writes, into the store at `path` (the copy aside)."""
    with store.writer(path, now, publish=False) as con:
        ingest.drop_source(con, SIMULATOR)
        events = _feed(con, cfg, sim, windows, now, progress)
        # The alert history of the old data would describe traffic that is
        # gone: evaluate the new span instead, without notifying anyone.
        alerts.reset(con)
        alerts.backfill(con, cfg, windows[0].start, end)
        # Likewise the daily jobs' results, so every page has something to show.
        tuning.reset(con)
        daily_at = next(s.at for s in runner.schedule(cfg) if s.name == "experiments")
        tuning.backfill(con, cfg.experiments, windows[0].start, end, cfg.pricing, daily_at)
        day = report.report_day(end)
        if windows[0].start <= datetime(day.year, day.month, day.day, tzinfo=UTC):
            report.save(con, report.build(con, cfg, day, now))
    return events


def simulate_until(
    cfg: Config,
    now: datetime,
    sim: Simulator | None = None,
    max_catch_up: timedelta = timedelta(days=7),
    publish: bool = True,
) -> tuple[LoadSummary, Simulator]:
    """Advance the live simulator from its watermark to `now` (the job
    runner's ingest job in demo mode). Returns the simulator to reuse.
    `publish=False` leaves the reader snapshot to the caller (the runner
    publishes once per tick)."""
    end = floor_to(now, MINUTE)
    with store.writer(cfg.store.path, now, publish=publish) as con:
        start = ingest.state_clock(con, SIMULATOR)
        if start is None:
            start = end - HOUR
            sim = sim if sim and sim.clock == start else Simulator(cfg.simulator)
        elif sim is None or sim.clock != start:
            # Only a simulator that is not where the store is needs the saved
            # state (a few MB to decompress): at start, or after a crash.
            blob = ingest.load_state(con, SIMULATOR)[0]
            sim = Simulator(dataclasses.replace(cfg.simulator, seed=SimState.from_bytes(blob).seed))
            sim.restore(blob)
        if end - start > max_catch_up:
            # A long outage: jump ahead rather than replay weeks; the gap shows.
            start = end - max_catch_up
            sim = Simulator(sim.cfg)
        windows = Window(start, end).split(HOUR) if end > start else []
        events = _feed(con, cfg, sim, windows, now, None, save_each=True)
    return LoadSummary(SIMULATOR, events, len(windows), end), sim


def _feed(
    con,
    cfg: Config,
    sim: Simulator,
    windows: list[Window],
    now: datetime,
    progress: Progress | None,
    save_each: bool = False,
) -> int:
    """Generate and ingest windows in order. The next window is generated in
    a worker thread while DuckDB ingests the current one (both release the
    GIL for most of their work), which nearly halves a long demo.

    With `save_each` (the live runner), every window commits the simulator's
    state with its data, so a crash mid catch-up resumes exactly where the
    data ends: replaying from an older state could not rewrite the hours
    whose per-key rows the later windows have compacted meanwhile."""
    events = 0
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(sim.generate, windows[0]) if windows else None
        for i, w in enumerate(windows):
            frame = pending.result()
            last = i == len(windows) - 1
            # The state must be taken before the next window advances it.
            # Saving costs a compression of the whole cache, so a demo (which
            # starts over after a crash) saves it once, at the end.
            state = sim.state.to_bytes() if last or save_each else None
            pending = None if last else pool.submit(sim.generate, windows[i + 1])
            ingest.replace_window(
                con, frame, SIMULATOR, w, now, cfg.store.key_compaction_lag, state=state
            )
            events += len(frame)
            if progress:
                progress(i + 1, len(windows))
    return events


def pull(
    cfg: Config,
    client,
    now: datetime,
    since: datetime | None = None,
    until: datetime | None = None,
    progress: Progress | None = None,
    publish: bool = True,
) -> LoadSummary:
    """Pull Analytics Engine rollups into the store, window by window.

    From the watermark minus `overlap` (late data is picked up), or `since`
    (floored to the hour, so whole compacted hours are replaced), up to
    `until` (default: now), in windows of `window`. Each window replaces the
    source's data in one transaction; a failure stops the pull with the
    windows before it stored, and the next pull resumes from there.
    """
    from cachemon.sources.analytics_engine import pull_rollups

    ae = cfg.analytics_engine
    end = floor_to(until or now, MINUTE)
    with store.writer(cfg.store.path, now) as con:
        mark = ingest.watermark(con, ANALYTICS_ENGINE)
        if since is not None:
            start = floor_to(since, HOUR)
        elif mark is not None:
            start = floor_to(mark - ae.overlap, MINUTE)
            # Per-key counts of a compacted hour can only be replaced whole.
            if ingest.key_hour_compacted(con, ANALYTICS_ENGINE, floor_to(start, HOUR)):
                start = floor_to(start, HOUR)
        else:
            start = floor_to(end - ae.backfill, HOUR)
    windows = Window(start, end).split(ae.window) if end > start else []
    events, published = 0, time.monotonic()
    with store.writer(cfg.store.path, now, publish=publish) as con:
        for i, w in enumerate(windows):
            data = pull_rollups(client, ae.dataset, cfg.columns, w)
            events += ingest.replace_window(
                con, data, ANALYTICS_ENGINE, w, now, cfg.store.key_compaction_lag
            ).events
            if time.monotonic() - published > PUBLISH_EVERY_S:
                # A long backfill shows its progress to readers as it goes.
                store.publish_open(con, cfg.store.path)
                published = time.monotonic()
            if progress:
                progress(i + 1, len(windows))
    return LoadSummary(ANALYTICS_ENGINE, events, len(windows), end)


@dataclass(frozen=True)
class ImportSummary:
    imported: tuple[ingest.IngestResult, ...]
    skipped: tuple[Path, ...]  # already imported (same content)


def import_files(cfg: Config, paths: Iterable[str | Path], now: datetime) -> ImportSummary:
    """All or nothing: every file is read in bounded batches and validated
    (events after now plus [ingest] clock_skew are refused) before anything
    is written; then all are written in one transaction. A bad file stops
    the command, naming the file, and the store is left as it was."""
    latest = now + cfg.ingest.clock_skew
    paths = [files.check(p) for p in paths]
    aggregated = [_aggregate(p, latest) for p in paths]
    with store.writer(cfg.store.path, now) as con:
        results = ingest.append_imports(con, aggregated, now)
    done = tuple(r for r in results if r)
    skipped = tuple(p for p, r in zip(paths, results) if r is None)
    return ImportSummary(done, skipped)


def _aggregate(path: Path, latest: datetime) -> ingest.ImportFile:
    acc = ingest.ImportAccumulator()
    for frame in files.batches(path, latest):
        acc.add(frame)
    return acc.finish(files.file_sha256(path), path.name)


def compact(con, cfg: Config, now: datetime) -> tuple[int, retention.Result]:
    """The daily sweep: per-key minute rows of finished hours into hours,
    then retention. Returns the sources compacted and what retention did."""
    n = ingest.compact_all(con, floor_to(now - cfg.store.key_compaction_lag, HOUR))
    return n, retention.apply(con, now, cfg.retention)
