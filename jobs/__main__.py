"""`python -m jobs`: the scheduled process that fills the store and runs jobs.

A thin shell over `cachemon.runner`: the `schedule` library drives a tick
every second; the runner decides in UTC which jobs are due, catches up
missed slots, guards and records every run. One runner per store (a lock
file); SIGTERM/SIGINT finish the job in progress and exit 0.

The runner is the one process that must never exit on its own: a busy store
(another writer's turn, an outside DuckDB process), a full or read-only disk
or a refused publish fail the job or the publish in hand, which is logged,
recorded (now, or with the next record that can be written) and tried again
later; a failed publish is retried with back-off. With CACHEMON_HEARTBEAT_URL
set, each successful ingest and alert evaluation pings that URL
(`cachemon.heartbeat`) once readers can see it: while publishing fails,
readers are frozen, so no ping goes out and the outside service notices.

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
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import schedule

from cachemon import config as config_mod
from cachemon.alerts import evaluate as alerts
from cachemon.alerts.lifecycle import State
from cachemon.argcheck import finite
from cachemon.clock import CLOCK_SKEW, as_utc, check_not_future, iso, parse_instant, utcnow
from cachemon.costs import report
from cachemon.errors import CachemonError, ConfigError, StoreBusyError, StoreDiskError, StoreError
from cachemon.ingest import load as pipeline
from cachemon.notify import outbox as notify
from cachemon.notify.transports import Transports
from cachemon.runner import heartbeat
from cachemon.runner import runs as runner
from cachemon.settings import Config
from cachemon.store import connection, snapshots
from cachemon.store import db as store
from cachemon.store import lock as store_lock
from cachemon.tuning import promote

log = logging.getLogger("jobs")
# Where the store's data ends, whatever the source.
LATEST_WATERMARK = "SELECT max(until) FROM watermarks"
# A simulated clock: up to ~11 days a second (tests run days in seconds).
MAX_CLOCK_SPEED = 1e6


class Jobs:
    """The job bodies: each is one call into cachemon. They leave the reader
    snapshot to `Shell.tick`, which publishes once after the tick's jobs and
    their run records are written."""

    def __init__(self, cfg: Config, config_path: str | None = None):
        self.cfg = cfg
        self.config_path = config_path
        self.sim = None
        self.email_problem = ""

    def ingest(self, now: datetime) -> int:
        if self.cfg.source == "analytics_engine":
            from cachemon.sources.analytics_engine import Client

            with Client.from_env(self.cfg.analytics_engine) as client:
                summary = pipeline.pull(self.cfg, client, now, publish=False)
        else:
            summary, self.sim = pipeline.simulate_until(self.cfg, now, self.sim, publish=False)
        log.info(
            "ingest: %d events in %d windows, store up to %s",
            summary.events,
            summary.windows,
            iso(summary.until),
        )
        if not summary.events:
            self._not_ahead(now)
        return summary.events

    def _not_ahead(self, now: datetime) -> None:
        """An ingest that found nothing: fail if it is because the store's data
        runs past now (a clock ahead of real time wrote it): a success would
        read as fresh while nothing new can be stored until real time passes it."""
        with store.writer(self.cfg.store.path, now, publish=False) as con:
            until = connection.first_row(con, LATEST_WATERMARK)[0]
        if until is not None and as_utc(until) - now > CLOCK_SKEW:
            raise StoreError(
                f"the store's data runs to {iso(as_utc(until))}, after now ({iso(now)}): written by "
                "a clock ahead of real time; no new data is ingested until then"
            )

    def compact(self, now: datetime) -> int:
        with store.writer(self.cfg.store.path, now, publish=False) as con:
            n, kept = pipeline.compact(con, self.cfg, now)
        log.info(
            "compact: %d source(s) compacted; retention removed %d minute and %d hourly rows "
            "(minutes kept from %s, hours from %s)",
            n,
            kept.minute_rows,
            kept.hour_rows,
            iso(kept.horizons.minute),
            iso(kept.horizons.hour),
        )
        return n + kept.minute_rows + kept.hour_rows

    def alerts(self, now: datetime) -> int:
        transports = self._transports()
        with store.writer(self.cfg.store.path, now, publish=False) as con:
            if not alerts.due(con, now):
                last = alerts.last_evaluation(con, None)
                if last is not None and as_utc(last) - now > CLOCK_SKEW:
                    # Written by a clock ahead of real time: "already evaluated" would hide
                    # that no alert is evaluated until real time passes it.
                    raise StoreError(
                        f"the last alert evaluation is dated {iso(as_utc(last))}, after now "
                        f"({iso(now)}): written by a clock ahead of real time; alerts are not "
                        "evaluated until then"
                    )
                log.info("alerts: %s already evaluated", iso(now))
                return 0
            result = alerts.run(con, self.cfg, now, transports)
        firing = [s.rule for s in result.evaluation.states if s.state == State.FIRING]
        log.info(
            "alerts: %d instances, firing: %s; %d notification(s) queued, %d delivered",
            len(result.evaluation.states),
            ", ".join(firing) or "none",
            len(result.outbox),
            result.flush.sent,
        )
        return len(result.outbox)

    def deliver(self, now: datetime) -> int:
        transports = self._transports()
        with store.writer(self.cfg.store.path, now, publish=False) as con:
            sent = notify.flush(con, self.cfg.notify, transports, now)
        if sent.deliveries:
            log.info("deliver: %d sent, %d failed", sent.sent, sent.failed)
        return sent.sent

    def report(self, now: datetime) -> int:
        transports = self._transports()
        day = report.report_day(now)
        with store.writer(self.cfg.store.path, now, publish=False) as con:
            r = report.build(con, self.cfg, day, now)
            channels = report.send(con, r, self.cfg, transports, now).channels
        log.info(
            "report %s: %d recommendation(s), saving %.4f USD/day; queued for %s",
            day,
            len(r.recommendations),
            r.saving_per_day,
            ", ".join(channels) or "no channel",
        )
        return len(channels)

    def experiments(self, now: datetime) -> int:
        transports = self._transports()
        try:  # re-read: the experiments may have been edited since the runner started
            cfg = config_mod.with_db(config_mod.load(self.config_path), self.cfg.store.path)
        except CachemonError as exc:
            with store.writer(self.cfg.store.path, now, publish=False) as con:
                run = promote.on_bad_config(con, self.cfg, str(exc), os.environ, transports, now)
            log.error(
                "experiments: config unreadable (%s); %s",
                exc,
                run.actions[0].detail if run else "KV not configured",
            )
            raise
        with store.writer(cfg.store.path, now, publish=False) as con:
            run = promote.daily(con, cfg, now, now, os.environ, transports)
        for a in run.analyses:
            log.info(
                "experiment %s: %s (%s keys)",
                a.experiment,
                a.decision,
                ", ".join(f"{c} {n}" for c, n in a.units),
            )
        for act in run.actions:
            log.warning("%s: %s", act.action, act.detail)
        return len(run.analyses)

    def _transports(self) -> Transports:
        # Lenient: a bad email setting leaves email out (recorded below as the
        # job's failure) instead of stopping evaluation and the chat channels.
        t = Transports.from_env(os.environ, strict=False)
        self.email_problem = t.email_problem
        return t

    def _guarded(self, fn: Callable[[datetime], int]) -> Callable[[datetime], int]:
        def run(now: datetime) -> int:
            self.email_problem = ""
            rows = fn(now)
            if self.email_problem:
                raise ConfigError(
                    f"email left out: {self.email_problem}; the rest of the job "
                    "(evaluation, chat channels) was done"
                )
            return rows

        return run

    def registry(self) -> list[tuple[runner.JobSpec, Callable[[datetime], int]]]:
        return [
            (spec, self._guarded(getattr(self, spec.name))) for spec in runner.schedule(self.cfg)
        ]


# Jobs whose success means "cachemon is alive and watching": the heartbeat's pings.
HEARTBEAT_JOBS = ("ingest", "alerts")
# Records kept in memory while the store refuses them; beyond this the oldest go (said in the log).
MAX_PENDING_RECORDS = 1000
# A record waits less for the store than a job does: it is kept and written later anyway.
RECORD_WAIT_S = 10.0
STARTUP_RETRY_MAX_S = 60.0
# A failed publish copies the whole store again on retry: back off.
PUBLISH_RETRY_MIN_S = 2.0
PUBLISH_RETRY_MAX_S = 300.0


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class RunLog:
    """Records every run in job_runs, in its own short write. A record the
    store refuses now (busy, disk full, read-only) is kept and written with
    the next one: the runner never stops over its log, and loses no record
    unless more than MAX_PENDING_RECORDS pile up (said in the log)."""

    def __init__(self, cfg: Config, now_fn, pinger: heartbeat.Pinger | None = None):
        self.cfg, self.now_fn, self.pinger = cfg, now_fn, pinger
        self.pending: list[runner.RunRecord] = []
        self.alive = False  # a heartbeat job succeeded since the last ping

    def __call__(self, rec: runner.RunRecord) -> None:
        if rec.outcome == "ok" and rec.job in HEARTBEAT_JOBS:
            self.alive = True
        self.pending.append(rec)
        if len(self.pending) > MAX_PENDING_RECORDS:
            dropped = len(self.pending) - MAX_PENDING_RECORDS
            del self.pending[:dropped]
            log.error(
                "run log: %d unrecorded run(s) dropped (the store refused writes for too long)",
                dropped,
            )
        self.flush()

    def flush(self) -> bool:
        """Write the waiting records; False (logged) when the store refuses."""
        if not self.pending:
            return True
        written = False
        try:
            with store.writer(
                self.cfg.store.path,
                self.now_fn(),
                publish=False,
                wait=min(RECORD_WAIT_S, store_lock.write_wait()),
            ) as con:
                with connection.transaction(con):
                    for rec in self.pending:
                        runner.record_run(con, rec)
                written = True
        except Exception as exc:
            if not written:
                log.error(
                    "run log: could not record %s's run (%s); %d run(s) kept to record later",
                    self.pending[-1].job,
                    _one_line(exc),
                    len(self.pending),
                )
                return False
            log.warning("run log: recorded, but closing the store failed: %s", _one_line(exc))
        self.pending.clear()
        return True

    def published(self) -> None:
        """Readers now see the runs so far: ping if a heartbeat job
        succeeded (never before: a runner whose publishes fail is frozen
        to every reader, however well its jobs run)."""
        if self.pinger and self.alive:
            self.pinger.ping()
        self.alive = False


class Shell:
    """One tick of the schedule, guarded: nothing a tick meets ends the
    process. Publishes the reader snapshot once after the tick's jobs and
    their records; a failed publish (a full disk: a whole copy of the store
    each time) is retried with back-off, PUBLISH_RETRY_MIN_S doubling to
    PUBLISH_RETRY_MAX_S, while the jobs go on."""

    def __init__(
        self,
        cfg: Config,
        r: runner.Runner,
        runlog: RunLog,
        clock,
        stopping: list,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.cfg, self.r, self.runlog, self.clock, self.stopping = cfg, r, runlog, clock, stopping
        self.monotonic = monotonic
        self.unpublished = True  # the first tick publishes what the store holds
        self.retry_at = 0.0
        self.retry_delay = PUBLISH_RETRY_MIN_S

    def tick(self) -> None:
        try:
            ran = self.r.tick(self.clock(), stop=lambda: bool(self.stopping))
            self.runlog.flush()
            self.unpublished = self.unpublished or bool(ran)
        except CachemonError as exc:
            log.error("tick: %s; the runner goes on and tries again", _one_line(exc))
        except Exception:
            log.exception("tick failed; the runner goes on and tries again")
        self.publish()

    def publish(self) -> None:
        if not self.unpublished or self.monotonic() < self.retry_at:
            return
        try:
            snapshots.publish_snapshot(self.cfg.store.path)
        except Exception as exc:  # a CachemonError is one line; anything else keeps its traceback
            log.error(
                "publish: %s; readers see the previous snapshot and no heartbeat is sent; "
                "trying again in %g s",
                _one_line(exc),
                self.retry_delay,
                exc_info=not isinstance(exc, CachemonError),
            )
            self.retry_at = self.monotonic() + self.retry_delay
            self.retry_delay = min(2 * self.retry_delay, PUBLISH_RETRY_MAX_S)
            return
        self.unpublished, self.retry_at, self.retry_delay = False, 0.0, PUBLISH_RETRY_MIN_S
        self.runlog.published()


def _clock(start: str | None, speed: float, real: Callable[[], datetime] = utcnow):
    """UTC now; or, for tests and demos, a clock from `start` running
    `speed` times faster than real time, but never past real time: the
    runner writes, and anything dated ahead of now (runs, evaluations,
    watermarks) would make the real clock look done and fresh until it
    caught up. A replay of the past catches up, then runs at real speed."""
    finite(speed, "--clock-speed", 0, MAX_CLOCK_SPEED)
    if start is None and speed == 1.0:
        return real
    # The runner writes: a clock may be started in the past, never ahead.
    t0 = (
        check_not_future(parse_instant(start, "--clock-start"), real(), "--clock-start")
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
        cfg = config_mod.load(args.config)
        if args.db is not None:
            cfg = config_mod.with_db(cfg, args.db)
        clock = _clock(args.clock_start, args.clock_speed)
        jobs = Jobs(cfg, args.config)
        registry = jobs.registry()
        target = heartbeat.Target.from_env(os.environ)
        pinger = heartbeat.Pinger(target) if target else None
        if args.once:
            return _once(cfg, registry, args.once, clock, pinger)
        if args.list:
            return _list(cfg, registry, clock)
        lock = runner.InstanceLock(cfg.store.path).acquire(clock())
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
    runlog = RunLog(cfg, clock, pinger)
    r = runner.Runner(registry, runlog, clock=clock)
    rec = r.run_now(name, clock())
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


def _list(cfg: Config, registry, clock) -> int:
    now = clock()
    with store.writer(cfg.store.path, now) as con:
        last = runner.last_runs(con)
    for spec, at in runner.Runner(registry, lambda rec: None, last, clock).plan(now):
        print(f"{spec.name:10} {spec.describe():28} next {iso(at)}")
    return 0


def _last_runs(cfg: Config, clock, stopping: list) -> dict | None:
    """Open (create, migrate) the store and read the run log; while the
    store is busy or the disk refuses, say so and try again (a runner
    started during a long import waits for it). None: stopped. Publishing
    is the first tick's (`Shell`): a disk with no room for a snapshot copy
    blocks only the publish, never the jobs."""
    delay = 1.0
    while not stopping:
        try:
            with store.writer(cfg.store.path, clock(), publish=False) as con:
                return _past_runs(runner.last_runs(con), clock())
        except (StoreBusyError, StoreDiskError) as exc:
            log.error("starting: %s; trying again in %g s", _one_line(exc), delay)
        _sleep(delay, stopping)
        delay = min(2 * delay, STARTUP_RETRY_MAX_S)
    return None


def _past_runs(last: dict[str, datetime], now: datetime) -> dict[str, datetime]:
    """The run log's last runs, without those dated after now (beyond clock
    skew): a clock ahead of real time wrote them, and believing them would
    keep the job from running until real time caught up, in silence."""
    future = {job: t for job, t in last.items() if t - now > CLOCK_SKEW}
    for job, t in future.items():
        log.warning(
            "run log: %s's last run is dated %s, after now (%s): written by a clock ahead of real "
            "time; it runs as if it never ran",
            job,
            iso(t),
            iso(now),
        )
    return {job: t for job, t in last.items() if job not in future}


def _sleep(seconds: float, stopping: list) -> None:
    end = time.monotonic() + seconds
    while not stopping and time.monotonic() < end:
        time.sleep(0.1)


def _serve(cfg: Config, registry, clock, pinger=None) -> int:
    stopping = []

    def stop(signum, frame):
        log.info("signal %d: stopping after the job in progress", signum)
        stopping.append(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    last = _last_runs(cfg, clock, stopping)
    if last is None:
        log.info("runner stopped")
        return 0
    runlog = RunLog(cfg, clock, pinger)
    shell = Shell(cfg, runner.Runner(registry, runlog, last, clock), runlog, clock, stopping)
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
