"""An hour (simulated) of Analytics Engine faults: the loopback emulator
answers 500s, 429s with Retry-After, timeouts, truncated JSON and 422s, and
goes down for a quarter of an hour. cachemon pulls every minute as the
runner would, retries as specified, serves the last good data marked stale,
then catches up fully: the store equals a direct import of the same events."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from datetime import timedelta

import pandas as pd

from cachemon import config, settings
from cachemon.clock import HOUR, MINUTE, Window
from cachemon.errors import SourceError
from cachemon.ingest import load as ingest_load
from cachemon.metrics import window as metrics_window
from cachemon.sources.analytics_engine import Client, Credentials
from cachemon.store import db as store_db
from cachemon.testing.ae_emulator import Emulator, Fault
from tests.helpers import T0, load, small_sim

TOKEN = "reliability-ae-token"
TIMEOUT = timedelta(seconds=0.4)
OUTAGE = range(20, 35)  # minutes of the hour when every request fails
FAULTS = {
    "500": lambda: [Fault(status=500)],
    "429": lambda: [Fault(status=429, retry_after=3)],
    "timeout": lambda: [Fault(delay=TIMEOUT.total_seconds() + 0.3)],
    "truncated": lambda: [Fault(truncate=True)],
    "422": lambda: [Fault(status=422, body='{"errors": [{"message": "injected"}]}')],
}
SQL = "SELECT minute, tier, endpoint, requests, errors FROM v1.requests_minute ORDER BY ALL"


def test_an_hour_of_source_faults_then_a_full_catch_up(tmp_path, results):
    sim, frames = small_sim(), []
    cfg = config.with_db(settings.Config(), str(tmp_path / "ae.duckdb"))
    cfg = replace(
        cfg, analytics_engine=replace(cfg.analytics_engine, timeout=TIMEOUT, backfill=HOUR)
    )
    sleeps, rng = [], random.Random(4)
    injected, failed, stale_checks, max_age = Counter(), Counter(), [], timedelta(0)
    with Emulator(TOKEN) as emu:
        client = Client(
            Credentials(emu.account, TOKEN, emu.base),
            cfg.analytics_engine,
            sleep=sleeps.append,
            jitter=lambda: 0.5,
        )

        def minute_of_traffic(now):
            frames.append(sim.generate(Window(now - MINUTE, now)))
            emu.add(frames[-1])

        for m in range(-59, 1):
            minute_of_traffic(T0 + m * MINUTE)
        ingest_load.pull(cfg, client, T0)
        for m in range(1, 71):  # the faulty hour, then ten quiet minutes
            now = T0 + m * MINUTE
            minute_of_traffic(now)
            if m in OUTAGE:
                kind, faults = "outage", [Fault(status=503)] * (cfg.analytics_engine.retries + 1)
            elif m <= 60:
                kind = rng.choice(sorted(FAULTS))
                faults = FAULTS[kind]()
            else:
                kind, faults = "none", []
            injected[kind] += 1
            emu.faults.clear()
            emu.faults.extend(faults)
            before = _watermark(cfg)
            try:
                ingest_load.pull(cfg, client, now)
            except SourceError:
                failed[kind] += 1
                assert _watermark(cfg) == before  # a failed pull writes nothing
            with store_db.reader(cfg.store.path) as con:
                shown = metrics_window.compute(
                    con, Window.ending(now, 15 * MINUTE), "15m", latest=True
                )
            age = shown.at - shown.data_until
            max_age = max(max_age, age)
            stale_checks.append(
                metrics_window.is_stale(shown, cfg.metrics.stale_after)
                == (age > cfg.metrics.stale_after)
            )
        end = T0 + 70 * MINUTE
        assert _watermark(cfg) == end
    # Retries as specified: 500 and timeouts retried (backoff from 0.5 s), 429 waits Retry-After,
    # truncated JSON and 422 not retried, the outage gives up after retries + 1 attempts.
    assert failed["500"] == failed["429"] == failed["timeout"] == 0
    assert failed["truncated"] == injected["truncated"] and failed["422"] == injected["422"]
    assert failed["outage"] == len(OUTAGE)
    assert (
        sleeps.count(3.0) == injected["429"]
        and sleeps.count(0.5) >= injected["500"] + injected["timeout"]
    )
    assert all(stale_checks) and max_age >= timedelta(minutes=15)
    # Caught up fully: every minute equals a direct import of the same events.
    ref = tmp_path / "ref.duckdb"
    load(ref, [(Window(T0 - HOUR, end), _concat(frames))])
    with store_db.reader(cfg.store.path) as a, store_db.reader(ref) as b:
        got, want = a.execute(SQL).df(), b.execute(SQL).df()
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-12)
    assert got.minute.nunique() == 130

    kinds = ", ".join(f"{injected[k]}× {k}" for k in ("500", "429", "timeout", "truncated", "422"))
    results(
        "Analytics Engine faults (an hour, simulated)",
        f"{kinds}, then a {len(OUTAGE)}-minute outage (503 on every attempt)",
        "70 pulls, a minute apart",
        f"retried as specified ({len(sleeps)} waits); {sum(failed.values())} pulls failed and wrote nothing; "
        f"readers saw the last good data marked stale (age up to {max_age // MINUTE} min); "
        f"the next good pull caught up: 130 minutes equal to a direct import",
    )


def _watermark(cfg):
    from cachemon.ingest import write as ingest_write

    with store_db.writer(cfg.store.path, T0, publish=False) as con:
        return ingest_write.watermark(con, ingest_load.ANALYTICS_ENGINE)


def _concat(frames):
    import pyarrow as pa

    from cachemon.events import EventFrame

    return EventFrame(pa.concat_tables([f.table for f in frames]))
