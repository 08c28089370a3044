"""`python -m jobs`: the scheduled process that keeps the store filled.

For now it runs the ingest job every minute: the live simulator advancing
in real time, or, with `source = "analytics_engine"` in the config, a pull
from Analytics Engine; later capabilities register their jobs in `JOBS`. Exceptions
are logged with their traceback and the runner goes on; SIGTERM/SIGINT let
the job in progress finish, then the runner exits 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time

import schedule

from cachemon import config as config_mod
from cachemon import pipeline
from cachemon.clock import utcnow
from cachemon.errors import CachemonError

log = logging.getLogger("jobs")


class Runner:
    def __init__(self, cfg):
        self.cfg = cfg
        self.sim = None
        self.stopping = False

    def ingest(self) -> None:
        if self.cfg.source == "analytics_engine":
            summary = self._pull()
        else:
            summary, self.sim = pipeline.simulate_until(self.cfg, utcnow(), self.sim)
        log.info("ingest: %d events in %d windows, store up to %s", summary.events, summary.windows,
                 summary.until.strftime("%Y-%m-%dT%H:%MZ"))

    def _pull(self):
        from cachemon.sources.analytics_engine import Client, Credentials

        client = Client(Credentials.from_env(), self.cfg.analytics_engine)
        try:
            return pipeline.pull(self.cfg, client, utcnow())
        finally:
            client.close()

    def guarded(self, name, fn):
        def run():
            try:
                fn()
            except CachemonError as exc:
                log.error("%s failed: %s", name, exc)
            except Exception:
                log.exception("%s failed", name)
        return run


JOBS = {"ingest": lambda r: r.ingest}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs", description="cachemon job runner")
    parser.add_argument("--once", choices=sorted(JOBS), help="run one job and exit")
    parser.add_argument("--db", help="store file (default: CACHEMON_DB or data/cachemon.duckdb)")
    parser.add_argument("--config", help="TOML config file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.Formatter.converter = time.gmtime
    try:
        cfg = config_mod.load(args.config)
        if args.db:
            cfg = config_mod.with_db(cfg, args.db)
    except CachemonError as exc:
        log.error("%s", exc)
        return 2
    runner = Runner(cfg)
    if args.once:
        try:
            JOBS[args.once](runner)()
            return 0
        except CachemonError as exc:
            log.error("%s failed: %s", args.once, exc)
            return 2

    def stop(signum, frame):
        log.info("signal %d: stopping after the job in progress", signum)
        runner.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    scheduler = schedule.Scheduler()
    job = runner.guarded("ingest", runner.ingest)
    scheduler.every(1).minutes.do(job)
    log.info("runner started on %s", cfg.store.path)
    job()
    while not runner.stopping:
        scheduler.run_pending()
        time.sleep(0.5)
    log.info("runner stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
