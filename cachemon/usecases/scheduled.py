"""The job runner's jobs: one method per job, each one composition of the
domain packages, so `python -m jobs` holds only the schedule loop, signals
and the registry (`Jobs.registry`, one entry per `runner.schedule` spec).

The bodies leave the reader snapshot to the runner's publisher, which
publishes once after a tick's jobs and their run records are written.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from datetime import datetime

from cachemon.alerts import evaluate as alerts_evaluate
from cachemon.alerts.lifecycle import State
from cachemon.clock import ahead, as_utc, iso
from cachemon.costs import report
from cachemon.errors import CachemonError, ConfigError, StoreError
from cachemon.ingest import load as ingest_load
from cachemon.ingest import retention
from cachemon.notify import outbox as notify_outbox
from cachemon.notify.transports import Transports
from cachemon.runner import runs as runner_runs
from cachemon.settings import Config
from cachemon.sources.analytics_engine import Client
from cachemon.store import db as store_db
from cachemon.tuning import promote

# "cachemon.jobs: <job>: ..." in the runner's log says which job a line is about.
log = logging.getLogger("cachemon.jobs")


class Jobs:
    """The job bodies, over one configuration. `reload` reads the
    configuration again (the experiments job re-reads it: experiments may
    have been edited since the runner started); by default the same one."""

    def __init__(
        self,
        cfg: Config,
        reload: Callable[[], Config] | None = None,
        env: Mapping[str, str] = os.environ,
    ):
        self.cfg = cfg
        self.reload = reload or (lambda: cfg)
        self.env = env
        self.sim = None
        self.email_problem = ""

    def ingest(self, now: datetime) -> int:
        """Advance the source into the store; an ingest that finds nothing
        because the store's data runs ahead of now fails (see `_not_ahead`)."""
        if self.cfg.source == "analytics_engine":
            with Client.from_env(self.cfg.analytics_engine, self.env) as client:
                summary = ingest_load.pull(self.cfg, client, now, publish=False)
        else:
            summary, self.sim = ingest_load.simulate_until(self.cfg, now, self.sim, publish=False)
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
        with store_db.writer(self.cfg.store.path, now, publish=False) as con:
            until = retention.latest_watermark(con)
        if ahead(until, now, self.cfg.ingest.clock_skew):
            raise StoreError(
                f"the store's data runs to {iso(as_utc(until))}, after now ({iso(now)}): written by "
                "a clock ahead of real time; no new data is ingested until then"
            )

    def compact(self, now: datetime) -> int:
        """Per-key compaction and retention."""
        with store_db.writer(self.cfg.store.path, now, publish=False) as con:
            kept = ingest_load.compact(con, self.cfg, now)
        log.info(
            "compact: %d per-key minute rows merged into hours; retention removed %d minute and "
            "%d hourly rows (minutes kept from %s, hours from %s) and %d sample rows",
            kept.key_minute_rows,
            kept.minute_rows,
            kept.hour_rows,
            iso(kept.horizons.minute),
            iso(kept.horizons.hour),
            kept.sample_rows,
        )
        return kept.key_minute_rows + kept.minute_rows + kept.hour_rows + kept.sample_rows

    def alerts(self, now: datetime) -> int:
        """Evaluate the rules once per minute slot, queue and deliver."""
        transports = self._transports()
        with store_db.writer(self.cfg.store.path, now, publish=False) as con:
            if not alerts_evaluate.due(con, now):
                last = alerts_evaluate.last_evaluation(con, None)
                if ahead(last, now, self.cfg.ingest.clock_skew):
                    # Written by a clock ahead of real time: "already evaluated" would hide
                    # that no alert is evaluated until real time passes it.
                    raise StoreError(
                        f"the last alert evaluation is dated {iso(as_utc(last))}, after now "
                        f"({iso(now)}): written by a clock ahead of real time; alerts are not "
                        "evaluated until then"
                    )
                log.info("alerts: %s already evaluated", iso(now))
                return 0
            result = alerts_evaluate.run(con, self.cfg, now, transports)
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
        """Send what is due in the outbox."""
        transports = self._transports()
        with store_db.writer(self.cfg.store.path, now, publish=False) as con:
            sent = notify_outbox.flush(con, self.cfg.notify, transports, now)
        if sent.deliveries:
            log.info("deliver: %d sent, %d failed", sent.sent, sent.failed)
        return sent.sent

    def report(self, now: datetime) -> int:
        """Build yesterday's cost report, queue and deliver it."""
        transports = self._transports()
        day = report.report_day(now)
        with store_db.writer(self.cfg.store.path, now, publish=False) as con:
            r = report.build(con, self.cfg, day, now)
            sent = report.send(con, r, self.cfg, transports, now)
        channels = sent.channels
        log.info(
            "report %s: %d recommendation(s), saving %.4f USD/day; queued for %s",
            day,
            len(r.recommendations),
            r.saving_per_day,
            ", ".join(channels) or "no channel",
        )
        for line in sent.flush.lines:
            log.info("report: %s", line)
        return len(channels)

    def experiments(self, now: datetime) -> int:
        """The tuning engine's daily run on a fresh read of the configuration;
        an unreadable one restores the default TTLs (`promote.on_bad_config`)."""
        transports = self._transports()
        try:
            cfg = self.reload()
        except CachemonError as exc:
            with store_db.writer(self.cfg.store.path, now, publish=False) as con:
                run = promote.on_bad_config(con, self.cfg, str(exc), self.env, transports, now)
            log.error(
                "experiments: config unreadable (%s); %s",
                exc,
                run.actions[0].detail if run else "KV not configured",
            )
            raise
        with store_db.writer(cfg.store.path, now, publish=False) as con:
            run = promote.daily(con, cfg, now, now, self.env, transports)
        for a in run.analyses:
            log.info(
                "experiment %s: %s (%s keys)",
                a.experiment,
                a.decision,
                ", ".join(f"{c} {n}" for c, n in a.units),
            )
        for act in run.actions:
            log.warning("%s: %s", act.action, act.detail)
        for line in run.flush.lines:  # the same delivery lines as `experiments analyze` prints
            log.info("experiments: %s", line)
        return len(run.analyses)

    def _transports(self) -> Transports:
        # Lenient: a bad email setting leaves email out (recorded below as the
        # job's failure) instead of stopping evaluation and the chat channels.
        t = Transports.from_env(self.env, strict=False)
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

    def registry(self) -> list[tuple[runner_runs.JobSpec, Callable[[datetime], int]]]:
        """Each scheduled job's spec with its body (the method of its name)."""
        return [
            (spec, self._guarded(getattr(self, spec.name)))
            for spec in runner_runs.schedule(self.cfg)
        ]
