"""cachemon watching itself: is the job runner still ingesting, and did a
job's last run fail?

Fresh-looking data says nothing about tomorrow: a runner that stopped, or
an alerts job that fails on every run, must show before the data goes
stale. `/healthz` and the dashboard's sidebar both ask `check`, which reads
the run log (`job_runs`) through `runner.status`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb

from cachemon.clock import ahead, iso
from cachemon.runner import runs as runner_runs
from cachemon.settings import Config

# Ingest intervals without a successful ingest before the runner counts as
# stalled: one slow or failed run is normal, three in a row are not.
INGEST_GRACE = 3


@dataclass(frozen=True)
class FailingJob:
    """A job whose last run (ok or error) failed."""

    job: str
    failed_at: datetime
    last_ok: datetime | None


@dataclass(frozen=True)
class RunnerCheck:
    at: datetime
    ingest_every: timedelta
    last_ingest_ok: datetime | None  # start of the last successful ingest run
    failing: tuple[FailingJob, ...]
    clock_skew: timedelta  # [ingest] clock_skew: how far ahead of `at` is still "now"

    @property
    def ingest_from_future(self) -> bool:
        """The last successful ingest is dated ahead of now (beyond clock
        skew): written by a clock that ran ahead (an older runner's fast
        simulated clock). It proves nothing about the runner now."""
        return ahead(self.last_ingest_ok, self.at, self.clock_skew)

    @property
    def ingest_stalled(self) -> bool:
        """No successful ingest within INGEST_GRACE intervals (or ever), or
        none that can be dated (one from the future)."""
        if self.last_ingest_ok is None or self.ingest_from_future:
            return True
        return self.at - self.last_ingest_ok > INGEST_GRACE * self.ingest_every

    @property
    def healthy(self) -> bool:
        return not self.ingest_stalled and not self.failing

    @property
    def ingest_age(self) -> timedelta | None:
        """How long ago ingest last succeeded; None when never, or when its
        time is in the future (an age of 0 would read as fresh)."""
        if self.last_ingest_ok is None or self.ingest_from_future:
            return None
        return max(self.at - self.last_ingest_ok, timedelta(0))

    def problems(self) -> list[str]:
        """One line per problem, naming the jobs and when (never their error
        text: /healthz is unauthenticated)."""
        out = []
        if self.last_ingest_ok is None:
            out.append(
                "the job runner has never ingested successfully into this store (is `python -m jobs` running?)"
            )
        elif self.ingest_from_future:
            out.append(
                f"the last successful ingest is dated in the future ({iso(self.last_ingest_ok)}, now "
                f"{iso(self.at)}): written by a clock ahead of real time, so it says nothing about the "
                "runner now; only runs dated up to now count"
            )
        elif self.ingest_stalled:
            out.append(
                f"no successful ingest for {rough_age(self.ingest_age)} (last at {iso(self.last_ingest_ok)}, "
                f"expected every {rough_age(self.ingest_every)}; is `python -m jobs` running?)"
            )
        for f in self.failing:
            out.append(
                f"job {f.job} failed at {iso(f.failed_at)} ({rough_age(self.at - f.failed_at)} ago)"
            )
        return out

    def to_json(self) -> dict:
        age = self.ingest_age
        return {
            "lastIngestOk": iso(self.last_ingest_ok) if self.last_ingest_ok else None,
            "lastIngestAgeSeconds": int(age.total_seconds()) if age is not None else None,
            "ingestStalled": self.ingest_stalled,
            "ingestFromFuture": self.ingest_from_future,
            "failingJobs": [
                {
                    "job": f.job,
                    "failedAt": iso(f.failed_at),
                    "lastOk": iso(f.last_ok) if f.last_ok else None,
                }
                for f in self.failing
            ],
        }


def check(con: duckdb.DuckDBPyConnection, cfg: Config, now: datetime) -> RunnerCheck:
    """The runner's state at `now`, from the run log."""
    statuses = runner_runs.status(con, runner_runs.schedule(cfg), now)
    ingest = next(s for s in statuses if s.spec.name == "ingest")
    failing = tuple(
        FailingJob(s.spec.name, s.last_error_at, s.last_ok)
        for s in statuses
        if s.last_outcome == runner_runs.Outcome.ERROR and s.last_error_at is not None
    )
    return RunnerCheck(now, cfg.jobs.ingest_every, ingest.last_ok, failing, cfg.ingest.clock_skew)


def rough_age(d: timedelta | None) -> str:
    """A duration for people: 45 s, 12 min, 5 h, 3 d."""
    if d is None:
        return "never"
    s = max(0, int(d.total_seconds()))
    if s < 120:
        return f"{s} s"
    if s < 2 * 3600:
        return f"{s // 60} min"
    if s < 2 * 86400:
        return f"{s // 3600} h"
    return f"{s // 86400} d"
