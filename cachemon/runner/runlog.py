"""The runner's own log: every run recorded in `job_runs`, whatever the
store says, and the last runs read back at start.

A record the store refuses now (busy, disk full, read-only) is kept and
written with the next one: the runner never stops over its log, and loses
no record unless more than MAX_PENDING_RECORDS pile up (said in the log).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime

from cachemon.clock import ahead, iso
from cachemon.errors import StoreBusyError, StoreDiskError
from cachemon.runner import heartbeat
from cachemon.runner import runs as runner_runs
from cachemon.settings import Config
from cachemon.store import connection
from cachemon.store import db as store_db
from cachemon.store import lock as store_lock

log = logging.getLogger("cachemon.runner")

# Records kept in memory while the store refuses them; beyond this the oldest go (said in the log).
MAX_PENDING_RECORDS = 1000
# A record waits less for the store than a job does: it is kept and written later anyway.
RECORD_WAIT_S = 10.0
# Opening the store at start: a busy or full store is retried, the wait doubling up to this.
STARTUP_RETRY_MAX_S = 60.0


def one_line(exc: BaseException) -> str:
    """An error in one line, for the runner's log."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class RunLog:
    """Records every run in job_runs, in its own short write (see the module
    docstring), and pings the heartbeat once readers can see a success of a
    heartbeat job (`JobSpec.heartbeat`)."""

    def __init__(
        self,
        cfg: Config,
        specs: Iterable[runner_runs.JobSpec],
        now_fn: Callable[[], datetime],
        pinger: heartbeat.Pinger | None = None,
    ):
        self.cfg, self.now_fn, self.pinger = cfg, now_fn, pinger
        self.heartbeat_jobs = frozenset(s.name for s in specs if s.heartbeat)
        self.pending: list[runner_runs.RunRecord] = []
        self.alive = False  # a heartbeat job succeeded since the last ping

    def __call__(self, rec: runner_runs.RunRecord) -> None:
        if rec.outcome == "ok" and rec.job in self.heartbeat_jobs:
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
            with store_db.writer(
                self.cfg.store.path,
                self.now_fn(),
                publish=False,
                wait=min(RECORD_WAIT_S, store_lock.write_wait()),
            ) as con:
                with connection.transaction(con):
                    for rec in self.pending:
                        runner_runs.record_run(con, rec)
                written = True
        except Exception as exc:
            if not written:
                log.error(
                    "run log: could not record %s's run (%s); %d run(s) kept to record later",
                    self.pending[-1].job,
                    one_line(exc),
                    len(self.pending),
                )
                return False
            log.warning("run log: recorded, but closing the store failed: %s", one_line(exc))
        self.pending.clear()
        return True

    def published(self) -> None:
        """Readers now see the runs so far: ping if a heartbeat job
        succeeded (never before: a runner whose publishes fail is frozen
        to every reader, however well its jobs run)."""
        if self.pinger and self.alive:
            self.pinger.ping()
        self.alive = False


def last_runs_at_start(
    cfg: Config,
    clock: Callable[[], datetime],
    stopped: Callable[[], bool],
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, datetime] | None:
    """Open (create, migrate) the store and read the run log; while the
    store is busy or the disk refuses, say so and try again, the wait
    doubling up to STARTUP_RETRY_MAX_S (a runner started during a long
    import waits for it). None: `stopped` meanwhile. Publishing is left to
    the first tick: a disk with no room for a snapshot copy blocks only the
    publish, never the jobs. `sleep` should return early once stopped."""
    delay = 1.0
    while not stopped():
        try:
            with store_db.writer(cfg.store.path, clock(), publish=False) as con:
                return past_runs(runner_runs.last_runs(con), clock(), cfg.ingest.clock_skew)
        except (StoreBusyError, StoreDiskError) as exc:
            log.error("starting: %s; trying again in %g s", one_line(exc), delay)
        sleep(delay)
        delay = min(2 * delay, STARTUP_RETRY_MAX_S)
    return None


def past_runs(last: dict[str, datetime], now: datetime, skew) -> dict[str, datetime]:
    """The run log's last runs, without those dated after now beyond `skew`
    ([ingest] clock_skew): a clock ahead of real time wrote them, and
    believing them would keep the job from running until real time caught
    up, in silence."""
    future = {job: t for job, t in last.items() if ahead(t, now, skew)}
    for job, t in future.items():
        log.warning(
            "run log: %s's last run is dated %s, after now (%s): written by a clock ahead of real "
            "time; it runs as if it never ran",
            job,
            iso(t),
            iso(now),
        )
    return {job: t for job, t in last.items() if job not in future}
