"""`python -m jobs`: the scheduled process that fills the store and runs jobs.

A thin shell over `cachemon.runner`: the `schedule` library drives a tick
every second; the runner decides in UTC which jobs are due, catches up
missed slots, guards and records every run. One runner per store (a lock
file); SIGTERM/SIGINT finish the job in progress and exit 0.

    python -m jobs                  # run the schedule
    python -m jobs --list           # the schedule with next run times
    python -m jobs --once ingest    # run one job now, exit non-zero on failure
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable

import schedule

from cachemon import config as config_mod
from cachemon import alerts, notify, pipeline, report, runner, store
from cachemon.argcheck import finite
from cachemon.clock import as_utc, check_not_future, iso, parse_instant, utcnow
from cachemon.errors import CachemonError

log = logging.getLogger("jobs")
# A simulated clock: up to ~11 days a second (tests run days in seconds).
MAX_CLOCK_SPEED = 1e6


class Jobs:
    """The job bodies: each is one call into cachemon. They leave the reader
    snapshot to `_tick`, which publishes once after the tick's jobs and
    their run records are written."""

    def __init__(self, cfg, config_path: str | None = None):
        self.cfg = cfg
        self.config_path = config_path
        self.sim = None

    def ingest(self, now: datetime) -> int:
        if self.cfg.source == "analytics_engine":
            from cachemon.sources.analytics_engine import Client

            with Client.from_env(self.cfg.analytics_engine) as client:
                summary = pipeline.pull(self.cfg, client, now, publish=False)
        else:
            summary, self.sim = pipeline.simulate_until(self.cfg, now, self.sim, publish=False)
        log.info("ingest: %d events in %d windows, store up to %s", summary.events, summary.windows,
                 iso(summary.until))
        return summary.events

    def compact(self, now: datetime) -> int:
        with store.writer(self.cfg.store.path, now, publish=False) as con:
            n, kept = pipeline.compact(con, self.cfg, now)
        log.info("compact: %d source(s) compacted; retention removed %d minute and %d hourly rows "
                 "(minutes kept from %s, hours from %s)", n, kept.minute_rows, kept.hour_rows,
                 iso(kept.horizons.minute), iso(kept.horizons.hour))
        return n + kept.minute_rows + kept.hour_rows

    def alerts(self, now: datetime) -> int:
        transports = notify.Transports.from_env(os.environ)
        with store.writer(self.cfg.store.path, now, publish=False) as con:
            if not alerts.due(con, now):
                log.info("alerts: %s already evaluated", iso(now))
                return 0
            result = alerts.run(con, self.cfg, now, transports)
        firing = [s.rule for s in result.evaluation.states if s.state == "firing"]
        log.info("alerts: %d instances, firing: %s; %d notification(s) queued, %d delivered",
                 len(result.evaluation.states), ", ".join(firing) or "none", len(result.outbox),
                 sum(d.ok for d in result.deliveries))
        return len(result.outbox)

    def deliver(self, now: datetime) -> int:
        transports = notify.Transports.from_env(os.environ)
        with store.writer(self.cfg.store.path, now, publish=False) as con:
            results = notify.deliver(con, transports, self.cfg.notify, now)
        if results:
            log.info("deliver: %d sent, %d failed", sum(d.ok for d in results), sum(not d.ok for d in results))
        return sum(d.ok for d in results)

    def report(self, now: datetime) -> int:
        transports = notify.Transports.from_env(os.environ)
        day = report.report_day(now)
        with store.writer(self.cfg.store.path, now, publish=False) as con:
            r = report.build(con, self.cfg, day, now)
            channels = report.queue(con, r, self.cfg, transports)
            notify.deliver(con, transports, self.cfg.notify, now)
        log.info("report %s: %d recommendation(s), saving %.4f USD/day; queued for %s", day,
                 len(r.recommendations), r.saving_per_day, ", ".join(channels) or "no channel")
        return len(channels)

    def experiments(self, now: datetime) -> int:
        from cachemon import promote

        transports = notify.Transports.from_env(os.environ)
        try:  # re-read: the experiments may have been edited since the runner started
            cfg = config_mod.with_db(config_mod.load(self.config_path), self.cfg.store.path)
        except CachemonError as exc:
            with store.writer(self.cfg.store.path, now, publish=False) as con:
                act = promote.on_bad_config(con, self.cfg, str(exc), os.environ, transports, now)
                notify.deliver(con, transports, self.cfg.notify, now)
            log.error("experiments: config unreadable (%s); %s", exc, act.detail if act else "KV not configured")
            raise
        with store.writer(cfg.store.path, now, publish=False) as con:
            analyses, actions = promote.daily(con, cfg, now, os.environ, transports)
            notify.deliver(con, transports, cfg.notify, now)
        for a in analyses:
            log.info("experiment %s: %s (%s keys)", a.experiment, a.decision, ", ".join(f"{c} {n}" for c, n in a.units))
        for act in actions:
            log.warning("%s: %s", act.action, act.detail)
        return len(analyses)

    def registry(self) -> list[tuple[runner.JobSpec, Callable[[datetime], int]]]:
        return [(spec, getattr(self, spec.name)) for spec in runner.schedule(self.cfg)]


def _recorder(cfg, now_fn):
    def record(rec: runner.RunRecord) -> None:
        # Logged in its own short write; `_tick` publishes once per tick.
        with store.writer(cfg.store.path, now_fn(), publish=False) as con:
            runner.record_run(con, rec)
    return record


def _tick(cfg, r: runner.Runner, clock, stopping) -> None:
    if r.tick(clock(), stop=lambda: bool(stopping)):
        store.publish_snapshot(cfg.store.path)


def _clock(start: str | None, speed: float):
    """UTC now; or, for tests and demos, a clock from `start` running
    `speed` times faster than real time."""
    finite(speed, "--clock-speed", 0, MAX_CLOCK_SPEED)
    if start is None and speed == 1.0:
        return utcnow
    # The runner writes: a clock may be started in the past, never ahead.
    t0 = check_not_future(parse_instant(start, "--clock-start"), utcnow(), "--clock-start") if start else utcnow()
    m0 = time.monotonic()
    return lambda: as_utc(t0 + timedelta(seconds=(time.monotonic() - m0) * speed))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs", description="cachemon job runner")
    parser.add_argument("--once", help="run one job now and exit (non-zero on failure)")
    parser.add_argument("--list", action="store_true", help="print the schedule with next run times")
    parser.add_argument("--db", help="store file (default: CACHEMON_DB or data/cachemon.duckdb)")
    parser.add_argument("--config", help="TOML config file")
    parser.add_argument("--clock-start", help="start a simulated clock here (ISO 8601 UTC)")
    parser.add_argument("--clock-speed", type=float, default=1.0, help="simulated seconds per second")
    parser.add_argument("--verbose", action="store_true", help="also log each job's start")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.Formatter.converter = time.gmtime
    if args.verbose:  # cachemon's own loggers only: others may log URLs that hold secrets
        logging.getLogger("cachemon").setLevel(logging.DEBUG)
    try:
        cfg = config_mod.load(args.config)
        if args.db:
            cfg = config_mod.with_db(cfg, args.db)
        clock = _clock(args.clock_start, args.clock_speed)
        jobs = Jobs(cfg, args.config)
        registry = jobs.registry()
        if args.once:
            return _once(cfg, registry, args.once, clock)
        if args.list:
            return _serve(cfg, registry, clock, list_only=True)
        lock = runner.InstanceLock(cfg.store.path).acquire(clock())
    except CachemonError as exc:
        log.error("%s", exc)
        return 2
    try:
        return _serve(cfg, registry, clock, list_only=False)
    except CachemonError as exc:
        log.error("%s", exc)
        return 2
    finally:
        lock.release()


def _once(cfg, registry, name: str, clock) -> int:
    """Run one job now; it is recorded in job_runs, and a failure exits 1."""
    r = runner.Runner(registry, _recorder(cfg, clock), clock=clock)
    try:
        rec = r.run_now(name, clock())
    finally:
        if Path(cfg.store.path).exists():
            store.publish_snapshot(cfg.store.path)
    return 0 if rec.outcome == "ok" else 1


def _serve(cfg, registry, clock, list_only: bool) -> int:
    now = clock()
    with store.writer(cfg.store.path, now) as con:
        last = runner.last_runs(con)
    r = runner.Runner(registry, _recorder(cfg, clock), last, clock)
    if list_only:
        for spec, at in r.plan(now):
            print(f"{spec.name:10} {spec.describe():28} next {iso(at)}")
        return 0
    stopping = []

    def stop(signum, frame):
        log.info("signal %d: stopping after the job in progress", signum)
        stopping.append(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    scheduler = schedule.Scheduler()
    scheduler.every(1).seconds.do(_tick, cfg, r, clock, stopping)
    log.info("runner started on %s", cfg.store.path)
    _tick(cfg, r, clock, stopping)
    while not stopping:
        scheduler.run_pending()
        time.sleep(0.2)
    log.info("runner stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
