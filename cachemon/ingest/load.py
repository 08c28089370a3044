"""Loading data into the store: the live simulator, Analytics Engine and files.

Each function opens the store as the single writer, feeds events through
`ingest`, and publishes the reader snapshot when done. The demo, which also
backfills alerts, reports and experiments, is `cachemon.usecases.demo`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import duckdb

from cachemon.clock import HOUR, MINUTE, Window, floor_to
from cachemon.ingest import imports, keys, retention
from cachemon.ingest import samples as ingest_samples
from cachemon.ingest import write as ingest_write
from cachemon.rollups import Sampling
from cachemon.settings import Config
from cachemon.sources import files
from cachemon.sources.ae_keys import KeyBudget
from cachemon.sources.analytics_engine import pull_rollups
from cachemon.sources.simulator import SimState, Simulator
from cachemon.store import db as store_db
from cachemon.store import snapshots

log = logging.getLogger("cachemon.ingest")
PUBLISH_EVERY_S = 30.0
SIMULATOR = "simulator"
ANALYTICS_ENGINE = "analytics_engine"
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class LoadSummary:
    source: str
    events: int
    windows: int
    until: datetime | None


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
    with store_db.writer(cfg.store.path, now, publish=publish) as con:
        start = ingest_write.state_clock(con, SIMULATOR)
        if start is None:
            start = end - HOUR
            sim = sim if sim and sim.clock == start else Simulator(cfg.simulator)
        elif sim is None or sim.clock != start:
            # Only a simulator that is not where the store is needs the saved
            # state (a few MB to decompress): at start, or after a crash.
            blob = ingest_write.load_state(con, SIMULATOR)[0]
            sim = Simulator(dataclasses.replace(cfg.simulator, seed=SimState.from_bytes(blob).seed))
            sim.restore(blob)
        if end - start > max_catch_up:
            # A long outage: jump ahead rather than replay weeks; the gap shows.
            start = end - max_catch_up
            sim = Simulator(sim.cfg)
        windows = Window(start, end).split(HOUR) if end > start else []
        events = feed(con, cfg, sim, windows, now, None, save_each=True)
    return LoadSummary(SIMULATOR, events, len(windows), end), sim


def feed(
    con: duckdb.DuckDBPyConnection,
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
            ingest_write.replace_window(
                con,
                frame,
                SIMULATOR,
                w,
                now,
                state=state,
                sampling=ingest_samples.sampling(cfg.ttl),
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
    monotonic: Callable[[], float] = time.monotonic,
) -> LoadSummary:
    """Pull Analytics Engine rollups into the store, window by window.

    From the watermark minus `overlap` (late data is picked up), or `since`
    (floored to the hour, so whole compacted hours are replaced), up to
    `until` (default: now), in windows of `window`. Each window replaces the
    source's data in one transaction; a failure stops the pull with the
    windows before it stored, and the next pull resumes from there. A long
    pull publishes to readers every PUBLISH_EVERY_S seconds of `monotonic`
    (a parameter with a real default, as prometheus_client's `handler=`).
    """
    ae = cfg.analytics_engine
    end = floor_to(until or now, MINUTE)
    with store_db.writer(cfg.store.path, now) as con:
        mark = ingest_write.watermark(con, ANALYTICS_ENGINE)
        if since is not None:
            start = floor_to(since, HOUR)
        elif mark is not None:
            start = floor_to(mark - ae.overlap, MINUTE)
            # Per-key counts of a compacted hour can only be replaced whole.
            if keys.key_hour_compacted(con, ANALYTICS_ENGINE, floor_to(start, HOUR)):
                start = floor_to(start, HOUR)
        else:
            start = floor_to(end - ae.backfill, HOUR)
    windows = Window(start, end).split(ae.window) if end > start else []
    budget = KeyBudget(ae.key_budget, ae.heavy_share)
    if not cfg.columns.key_hash:
        log.info(
            "Analytics Engine pull: no [columns] key_hash, so per-key rows are pulled exactly "
            "(their number follows traffic; [analytics_engine] key_budget needs the key hash)"
        )
    events, published = 0, monotonic()
    with store_db.writer(cfg.store.path, now, publish=publish) as con:
        for i, w in enumerate(windows):
            data = pull_rollups(
                client, ae.dataset, cfg.columns, w, ingest_samples.sampling(cfg.ttl), budget
            )
            events += ingest_write.replace_window(con, data, ANALYTICS_ENGINE, w, now).events
            if monotonic() - published > PUBLISH_EVERY_S:
                # A long backfill shows its progress to readers as it goes.
                snapshots.publish_open(con, cfg.store.path)
                published = monotonic()
            if progress:
                progress(i + 1, len(windows))
    return LoadSummary(ANALYTICS_ENGINE, events, len(windows), end)


@dataclass(frozen=True)
class ImportSummary:
    imported: tuple[ingest_write.IngestResult, ...]
    skipped: tuple[Path, ...]  # already imported (same content)


def import_files(cfg: Config, paths: Iterable[str | Path], now: datetime) -> ImportSummary:
    """All or nothing: every file is read in bounded batches and validated
    (events after now plus [ingest] clock_skew are refused) before anything
    is written; then all are written in one transaction. A bad file stops
    the command, naming the file, and the store is left as it was."""
    latest = now + cfg.ingest.clock_skew
    paths = [files.check(p) for p in paths]
    aggregated = [_aggregate(p, latest, ingest_samples.sampling(cfg.ttl)) for p in paths]
    with store_db.writer(cfg.store.path, now) as con:
        results = ingest_write.append_imports(con, aggregated, now)
    done = tuple(r for r in results if r)
    skipped = tuple(p for p, r in zip(paths, results) if r is None)
    return ImportSummary(done, skipped)


def _aggregate(path: Path, latest: datetime, sampling: Sampling) -> imports.ImportFile:
    acc = imports.ImportAccumulator(sampling)
    for frame in files.batches(path, latest):
        acc.add(frame)
    return acc.finish(files.file_sha256(path), path.name)


def compact(con: duckdb.DuckDBPyConnection, cfg: Config, now: datetime) -> retention.Result:
    """The daily sweep: retention (per-key minutes older than the minute
    horizon into hours among the rest). Returns what it did."""
    return retention.apply(con, now, cfg.retention)
