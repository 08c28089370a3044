"""`python -m jobs`: the scheduled process that fills the store and runs jobs.

A thin shell: the `schedule` library drives a tick every second and the
signals stop it. The logic is in cachemon: the runner (`cachemon.runner`)
decides in UTC which jobs are due, catches up missed slots, guards and
records every run (`runner.runlog`) and publishes with back-off
(`runner.publishing`); the job bodies are `cachemon.usecases.scheduled`.
One runner per store (a lock file); SIGTERM/SIGINT finish the job in
progress and exit 0.

The runner is the one process that must never exit on its own: a busy store
(another writer's turn, an outside DuckDB process), a full or read-only disk
or a refused publish fail the job or the publish in hand, which is logged,
recorded (now, or with the next record that can be written) and tried again
later; a failed publish is retried with back-off. With CACHEMON_HEARTBEAT_URL
set, each successful ingest and alert evaluation pings that URL
(`cachemon.runner.heartbeat`) once readers can see it: while publishing fails,
readers are frozen, so no ping goes out and the outside service notices.

    python -m jobs                  # run the schedule
    python -m jobs --list           # the schedule with next run times
    python -m jobs --once ingest    # run one job now, exit non-zero on failure
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from cachemon import config
from cachemon.argcheck import finite
from cachemon.clock import as_utc, check_not_future, iso, parse_instant, utcnow
from cachemon.errors import CachemonError, EmptyStoreError
from cachemon.runner import heartbeat
from cachemon.runner import runs as runner_runs
from cachemon.runner.publishing import Publisher
from cachemon.runner.runlog import RunLog, last_runs_at_start, one_line
from cachemon.settings import Config
from cachemon.store import db as store_db
from cachemon.store import snapshots

__all__ = ["build_parser", "main"]  # and Jobs, loaded on first use (__getattr__)

log = logging.getLogger("jobs")
# The job bodies (cachemon.usecases.scheduled) import most of cachemon, and
# pyarrow, numpy and friends with it: they are loaded when a job runs, not
# for `--list`, which needs the schedule only (runner.runs.schedule).
SCHEDULED = "cachemon.usecases.scheduled"


def __getattr__(name: str):
    # `from jobs.__main__ import Jobs` keeps working, loading the bodies then.
    if name == "Jobs":
        return importlib.import_module(SCHEDULED).Jobs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# A simulated clock: up to ~11 days a second (tests run days in seconds).
MAX_CLOCK_SPEED = 1e6


class Shell:
    """One tick of the schedule, guarded: nothing a tick meets ends the
    process. The publisher publishes the reader snapshot once after the
    tick's jobs and their records (with back-off when publishing fails)."""

    def __init__(
        self,
        r: runner_runs.Runner,
        runlog: RunLog,
        publisher: Publisher,
        clock: Callable[[], datetime],
        stopping: list,
    ):
        self.r, self.runlog, self.publisher = r, runlog, publisher
        self.clock, self.stopping = clock, stopping

    def tick(self) -> None:
        try:
            if self.r.tick(self.clock(), stop=lambda: bool(self.stopping)):
                self.publisher.changed()
            self.runlog.flush()
        except CachemonError as exc:
            log.error("tick: %s; the runner goes on and tries again", one_line(exc))
        except Exception:
            log.exception("tick failed; the runner goes on and tries again")
        self.publisher.publish()


def _clock(
    start: str | None,
    speed: float,
    skew: timedelta,
    real: Callable[[], datetime] = utcnow,
):
    """UTC now; or, for tests and demos, a clock from `start` running
    `speed` times faster than real time, but never past real time: the
    runner writes, and anything dated ahead of now (runs, evaluations,
    watermarks) would make the real clock look done and fresh until it
    caught up. A replay of the past catches up, then runs at real speed.
    `start` may be at most `skew` ([ingest] clock_skew) ahead of now."""
    finite(speed, "--clock-speed", 0, MAX_CLOCK_SPEED)
    if start is None and speed == 1.0:
        return real
    # The runner writes: a clock may be started in the past, never ahead.
    t0 = (
        check_not_future(parse_instant(start, "--clock-start"), real(), "--clock-start", skew)
        if start
        else real()
    )
    m0 = time.monotonic()
    return lambda: min(
        as_utc(t0 + timedelta(seconds=(time.monotonic() - m0) * speed)), as_utc(real())
    )


def build_parser() -> argparse.ArgumentParser:
    """The runner's command line (public: the docs test walks it)."""
    parser = argparse.ArgumentParser(prog="python -m jobs", description="cachemon job runner")
    parser.add_argument("--once", help="run one job now and exit (non-zero on failure)")
    parser.add_argument(
        "--list", action="store_true", help="print the schedule with next run times"
    )
    parser.add_argument("--db", help="store file (default: CACHEMON_DB or data/cachemon.duckdb)")
    parser.add_argument("--config", help="TOML config file")
    parser.add_argument("--clock-start", help="start a simulated clock here (ISO 8601 UTC)")
    parser.add_argument(
        "--clock-speed", type=float, default=1.0, help="simulated seconds per second"
    )
    parser.add_argument("--verbose", action="store_true", help="also log each job's start")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.Formatter.converter = time.gmtime
    if args.verbose:  # cachemon's own loggers only: others may log URLs that hold secrets
        logging.getLogger("cachemon").setLevel(logging.DEBUG)
    try:
        cfg = config.load(args.config)
        if args.db is not None:
            cfg = config.with_db(cfg, args.db)
        clock = _clock(args.clock_start, args.clock_speed, cfg.ingest.clock_skew)
        # A heartbeat URL that can never be pinged is refused by every mode.
        target = heartbeat.Target.from_env(os.environ)
        if args.list and not args.once:
            return _list(cfg, clock)
        # The experiments job re-reads the config: experiments may have been edited since.
        jobs = importlib.import_module(SCHEDULED).Jobs(
            cfg, lambda: config.with_db(config.load(args.config), cfg.store.path)
        )
        registry = jobs.registry()
        pinger = heartbeat.Pinger(target) if target else None
        if args.once:
            return _once(cfg, registry, args.once, clock, pinger)
        lock = runner_runs.InstanceLock(cfg.store.path).acquire(clock())
    except CachemonError as exc:
        log.error("%s", exc)
        return 2
    try:
        return _serve(cfg, registry, clock, pinger)
    except CachemonError as exc:
        log.error("%s", exc)
        return 2
    finally:
        lock.release()


def _once(cfg: Config, registry, name: str, clock, pinger=None) -> int:
    """Run one job now; it is recorded in job_runs, and a failure exits 1."""
    runlog = RunLog(cfg, (spec for spec, _ in registry), clock, pinger)
    rec = runner_runs.Runner(registry, runlog, clock=clock).run_now(name, clock())
    ok = rec.outcome == "ok" and runlog.flush()
    try:
        if Path(cfg.store.path).exists():
            snapshots.publish_snapshot(cfg.store.path)
            runlog.published()
    except CachemonError as exc:
        log.error("publish: %s", exc)
        ok = False
    if pinger:
        pinger.wait(pinger.target.deadline_s + 1)
    return 0 if ok else 1


def _list(cfg: Config, clock) -> int:
    """The schedule with next run times, from the last runs readers see.
    Listing writes nothing: a store not yet made (or published) has no runs."""
    now = clock()
    try:
        with store_db.reader(cfg.store.path) as con:
            last = runner_runs.last_runs(con)
    except EmptyStoreError:
        last = {}
    for spec in runner_runs.schedule(cfg):
        at = spec.next_run(last.get(spec.name), now)
        print(f"{spec.name:10} {spec.describe():28} next {iso(at)}")
    return 0


def _sleep(seconds: float, stopping: list) -> None:
    """Sleep, waking early on a signal."""
    end = time.monotonic() + seconds
    while not stopping and time.monotonic() < end:
        time.sleep(0.1)


def _serve(cfg: Config, registry, clock, pinger=None) -> int:
    import schedule  # only the running schedule needs it: `--list` and `--once` start faster

    stopping = []

    def stop(signum, frame):
        log.info("signal %d: stopping after the job in progress", signum)
        stopping.append(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    last = last_runs_at_start(cfg, clock, lambda: bool(stopping), lambda s: _sleep(s, stopping))
    if last is None:
        log.info("runner stopped")
        return 0
    runlog = RunLog(cfg, (spec for spec, _ in registry), clock, pinger)
    publisher = Publisher(cfg.store.path, runlog.published)
    shell = Shell(
        runner_runs.Runner(registry, runlog, last, clock), runlog, publisher, clock, stopping
    )
    scheduler = schedule.Scheduler()
    scheduler.every(1).seconds.do(shell.tick)
    log.info(
        "runner started on %s%s",
        cfg.store.path,
        f"; heartbeat to {pinger.target.where}" if pinger else "",
    )
    shell.tick()
    while not stopping:
        scheduler.run_pending()
        time.sleep(0.2)
    runlog.flush()
    if pinger:
        pinger.wait(pinger.target.deadline_s + 1)
    log.info("runner stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
