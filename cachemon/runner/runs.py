"""The job runner's logic: schedules in UTC, due jobs, guarded runs, run log,
catch-up of missed slots, one instance per store.

`python -m jobs` is the shell: it drives `Runner.tick(now)` from the
`schedule` library's loop and owns signals. Everything that decides when a
job runs lives here, with `now` passed in, so a test runs a day of schedule
in seconds.

Semantics, cron-like but dependable:

* an interval job (every N) has slots at multiples of N since the epoch; a
  daily job (at HH:MM UTC) has one slot a day;
* a job is due when its latest slot is later than its last run's start (all
  runs count, failed ones too, so a failing job is not hammered every tick);
* after downtime or an overrun, a job that missed several slots runs once,
  not once per slot, and the skipped slots are recorded (outcome `skipped`);
* an interval job never run runs at once; a daily job never run waits for
  its first slot (recorded as `scheduled`, so a slot missed after that is
  caught up);
* a job may return the number of rows it wrote, which is recorded;
* a job's exception is logged with its traceback and recorded (outcome
  `error`); the other jobs go on.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from enum import StrEnum
from pathlib import Path

import duckdb

from cachemon.clock import DAY, as_utc, floor_to, format_duration, iso
from cachemon.errors import CachemonError, StoreError
from cachemon.settings import Config

log = logging.getLogger("cachemon.runner")

RECORD_RUN = (
    "INSERT INTO job_runs VALUES ($job, $started, $finished, $outcome, $error, $slots, $rows)"
)
LAST_RUNS = "SELECT job, max(started_at) FROM job_runs WHERE outcome <> 'skipped' GROUP BY job"
RECENT_RUNS = """
SELECT job, started_at, finished_at, outcome, error, slots, rows FROM job_runs
WHERE started_at >= $since ORDER BY started_at DESC, job LIMIT $limit
"""
RUN_AT = "SELECT count(*) FROM job_runs WHERE job = $job AND started_at = $at"
JOB_SUMMARY = """
SELECT job, arg_max(outcome, started_at) FILTER (WHERE outcome IN ('ok', 'error')),
       max(started_at) FILTER (WHERE outcome = 'ok'),
       count(*) FILTER (WHERE outcome = 'error' AND started_at >= $since),
       arg_max(error, started_at) FILTER (WHERE outcome = 'error'),
       max(started_at) FILTER (WHERE outcome = 'error')
FROM job_runs GROUP BY job
"""


@dataclass(frozen=True)
class JobSpec:
    """A job: its name, when it runs (`every`, an interval, or `at`, daily
    UTC), what it is for, and whether its success pings the heartbeat
    (`heartbeat`: it means "cachemon is alive and watching")."""

    name: str
    every: timedelta | None = None
    at: time | None = None
    purpose: str = ""
    heartbeat: bool = False

    def __post_init__(self):
        if (self.every is None) == (self.at is None):
            raise CachemonError(f"job {self.name}: give exactly one of every/at")
        if self.every is not None and self.every <= timedelta(0):
            raise CachemonError(f"job {self.name}: interval must be positive")

    def latest_slot(self, now: datetime) -> datetime:
        """The most recent slot at or before `now`."""
        if self.every is not None:
            return floor_to(now, self.every)
        day = floor_to(now, DAY)
        slot = day + timedelta(hours=self.at.hour, minutes=self.at.minute)
        return slot if slot <= now else slot - DAY

    def next_slot(self, now: datetime) -> datetime:
        return self.latest_slot(now) + (self.every or DAY)

    def slots_between(self, after: datetime, now: datetime) -> int:
        """Number of slots in (after, now]."""
        return max(0, (self.latest_slot(now) - self.latest_slot(after)) // (self.every or DAY))

    def is_due(self, last: datetime | None, now: datetime) -> bool:
        """Due at `now` given its last run: a slot has passed since, or an
        interval job that never ran (a daily one waits for its first slot)."""
        return self.every is not None if last is None else self.latest_slot(now) > last

    def next_run(self, last: datetime | None, now: datetime) -> datetime:
        """`now` if due, else its next slot."""
        return now if self.is_due(last, now) else self.next_slot(now)

    def describe(self) -> str:
        return (
            f"every {format_duration(self.every)}"
            if self.every
            else f"daily at {self.at.strftime('%H:%M')} UTC"
        )


class Outcome(StrEnum):
    """How a run-log row ended; the value is the stored `outcome`."""

    OK = "ok"
    ERROR = "error"
    SKIPPED = "skipped"  # missed slots, recorded when the run that catches up starts
    SCHEDULED = "scheduled"  # a daily job's first sighting: it waits for its slot


@dataclass(frozen=True)
class RunRecord:
    job: str
    started_at: datetime
    finished_at: datetime
    outcome: Outcome
    error: str | None
    slots: int  # slots this run covers (missed ones included)
    rows: int | None = None  # what the job reports it wrote


class Runner:
    """Runs due jobs on `tick(now)`; records every run through `record`."""

    def __init__(
        self,
        jobs: list[tuple[JobSpec, Callable[[datetime], None]]],
        record: Callable[[RunRecord], None],
        last_runs: dict[str, datetime] | None = None,
        clock: Callable[[], datetime] | None = None,
    ):
        names = [spec.name for spec, _ in jobs]
        if len(set(names)) != len(names):
            raise CachemonError(f"duplicate job names in {names}")
        self.jobs = jobs
        self.record = record
        self.last = dict(last_runs or {})
        self.clock = clock

    def due(self, now: datetime) -> list[JobSpec]:
        return [spec for spec, _ in self.jobs if spec.is_due(self.last.get(spec.name), now)]

    def tick(self, now: datetime, stop: Callable[[], bool] = lambda: False) -> list[RunRecord]:
        """Run every due job once, in registry order; returns their records."""
        done = []
        for spec, fn in self.jobs:
            if stop():
                break
            if spec.name not in self.last and spec.at is not None:
                # A daily job first runs at its first slot, as cron would; the
                # record makes a slot missed from here on be caught up.
                self._note(RunRecord(spec.name, now, now, Outcome.SCHEDULED, None, 0))
                continue
            if not spec.is_due(self.last.get(spec.name), now):
                continue
            done.append(self._run(spec, fn, now))
        return done

    def run_now(self, name: str, now: datetime) -> RunRecord:
        """Run one job now, whatever its schedule (`jobs --once`), recorded
        like a scheduled run."""
        for spec, fn in self.jobs:
            if spec.name == name:
                return self._run(spec, fn, now)
        raise CachemonError(
            f"unknown job {name!r}: jobs are {', '.join(s.name for s, _ in self.jobs)}"
        )

    def _note(self, rec: RunRecord) -> None:
        self.last[rec.job] = rec.started_at
        self.record(rec)

    def _run(self, spec: JobSpec, fn, now: datetime) -> RunRecord:
        previous = self.last.get(spec.name)
        missed = spec.slots_between(previous, now) - 1 if previous else 0
        if missed > 0:
            self.record(
                RunRecord(
                    spec.name,
                    now,
                    now,
                    Outcome.SKIPPED,
                    f"{missed} slot(s) missed since {iso(previous)}",
                    missed,
                )
            )
        error, outcome, rows = None, Outcome.OK, None
        log.debug("%s started for %s", spec.name, iso(now))
        try:
            rows = fn(now)
        except CachemonError as exc:
            error, outcome = str(exc), Outcome.ERROR
            log.error("%s failed: %s", spec.name, exc)
        except Exception:
            error, outcome = traceback.format_exc(limit=20), Outcome.ERROR
            log.exception("%s failed", spec.name)
        finished = as_utc(self.clock()) if self.clock else now
        self.last[spec.name] = now
        rec = RunRecord(
            spec.name,
            now,
            max(finished, now),
            outcome,
            error,
            1,
            rows if isinstance(rows, int) else None,
        )
        self.record(rec)
        return rec

    def plan(self, now: datetime) -> list[tuple[JobSpec, datetime]]:
        """Each job with its next run time (now if due)."""
        return [(spec, spec.next_run(self.last.get(spec.name), now)) for spec, _ in self.jobs]


def schedule(cfg: Config) -> list[JobSpec]:
    """The runner's jobs and when they run, from the configuration."""
    j = cfg.jobs
    daily = lambda text: time(*map(int, text.split(":")))  # noqa: E731 (validated HH:MM)
    return [
        JobSpec(
            "ingest",
            every=j.ingest_every,
            purpose="advances the source (simulator or Analytics Engine pull) into the store",
            heartbeat=True,
        ),
        JobSpec(
            "alerts",
            every=cfg.alerts.evaluate_every,
            purpose="evaluates the alert rules and queues notifications",
            heartbeat=True,
        ),
        JobSpec(
            "deliver",
            every=timedelta(minutes=1),
            purpose="sends queued notifications, retrying failed ones",
        ),
        JobSpec(
            "compact",
            at=daily(j.compact_at),
            purpose="merges per-key minute rows into hours, applies retention",
        ),
        JobSpec(
            "report",
            at=daily(cfg.costs.report_at),
            purpose="builds and mails the daily cost report for yesterday",
        ),
        JobSpec(
            "experiments",
            at=time(4, 0),
            purpose="analyses experiments, checks the KV TTL config, promotes winners",
        ),
    ]


@dataclass(frozen=True)
class JobStatus:
    """What the run log says of one scheduled job at `now`."""

    spec: JobSpec
    last_run: datetime | None
    last_outcome: Outcome | None  # ok or error (None: never ran)
    last_ok: datetime | None
    errors_24h: int
    last_error: str | None
    last_error_at: datetime | None
    next_run: datetime

    @property
    def purpose(self) -> str:
        """What the job is for (its spec says)."""
        return self.spec.purpose

    @property
    def overdue(self) -> bool:
        """A slot passed more than one interval ago without a run (the runner is down)."""
        return (
            self.last_run is not None and self.spec.slots_between(self.last_run, self.next_run) > 1
        )


def status(con: duckdb.DuckDBPyConnection, specs: list[JobSpec], now: datetime) -> list[JobStatus]:
    """Each job's last run, last success, recent failures and next run."""
    last = last_runs(con)
    rows = {r[0]: r[1:] for r in con.execute(JOB_SUMMARY, {"since": now - DAY}).fetchall()}
    out = []
    for spec in specs:
        outcome, ok_at, errors, error, error_at = rows.get(spec.name, (None, None, 0, None, None))
        prev = last.get(spec.name)
        out.append(
            JobStatus(
                spec,
                prev,
                Outcome(outcome) if outcome is not None else None,
                _utc(ok_at),
                int(errors),
                error,
                _utc(error_at),
                spec.next_run(prev, now),
            )
        )
    return out


def recent_runs(
    con: duckdb.DuckDBPyConnection, since: datetime, limit: int = 200
) -> list[RunRecord]:
    """Runs started since `since`, newest first."""
    return [
        RunRecord(job, as_utc(s), as_utc(f), Outcome(outcome), error, slots, rows)
        for job, s, f, outcome, error, slots, rows in con.execute(
            RECENT_RUNS, {"since": since, "limit": limit}
        ).fetchall()
    ]


def ran_at(con: duckdb.DuckDBPyConnection, job: str, at: datetime) -> bool:
    """Whether the run log holds a run of `job` started at `at`."""
    return con.execute(RUN_AT, {"job": job, "at": at}).fetchall()[0][0] > 0


def _utc(t: datetime | None) -> datetime | None:
    return as_utc(t) if t is not None else None


def record_run(con: duckdb.DuckDBPyConnection, rec: RunRecord) -> None:
    con.execute(
        RECORD_RUN,
        {
            "job": rec.job,
            "started": rec.started_at,
            "finished": rec.finished_at,
            "outcome": rec.outcome,
            "error": rec.error,
            "slots": rec.slots,
            "rows": rec.rows,
        },
    )


def last_runs(con: duckdb.DuckDBPyConnection) -> dict[str, datetime]:
    """Start of each job's last run (ok or error), from the run log."""
    return {job: as_utc(t) for job, t in con.execute(LAST_RUNS).fetchall()}


class InstanceLock:
    """One runner per store: an exclusive flock on `<store>.runner.lock`.
    The kernel drops it when the process dies, so a crash never leaves it
    stuck; the file says who holds it."""

    def __init__(self, store_path: str | os.PathLike):
        self.path = Path(str(store_path) + ".runner.lock")
        self.fd = None

    def acquire(self, now: datetime) -> InstanceLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # a read-only or full disk: one line, not a traceback
            raise StoreError(
                f"cannot open the runner lock {self.path}: {exc.strerror.lower()}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise StoreError(
                f"another job runner is already running on this store ({holder}); "
                f"stop it first (lock file {self.path})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {iso(now)}".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
