"""Clocks and sleeps are parameters of the logic (with real defaults, as
prometheus_client's `handler=`): the write lock's wait and a pull's
publish timing run on fakes here, in no real time."""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from cachemon import config, settings
from cachemon.errors import StoreBusyError
from cachemon.ingest import load as ingest_load
from cachemon.sources.analytics_engine import Client, Credentials
from cachemon.store import db as store_db
from cachemon.store import lock as store_lock
from cachemon.testing.ae_emulator import Emulator

T0 = datetime(2026, 3, 2, tzinfo=UTC)
TOKEN = "t0ken-for-the-emulator"


class FakeTime:
    """A monotonic clock that moves only when slept on (or by `step` a read)."""

    def __init__(self, step: float = 0.0):
        self.t, self.step, self.slept = 0.0, step, []

    def monotonic(self) -> float:
        self.t += self.step
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds


def test_the_write_lock_waits_on_the_clock_and_sleep_it_is_given(tmp_path):
    db = tmp_path / "l.duckdb"
    with store_db.writer(db, T0):
        pass
    outsider = os.open(store_lock.lock_path(db), os.O_RDWR)
    fcntl.flock(outsider, fcntl.LOCK_EX)  # another open file: another writer
    fake = FakeTime()
    start = time.monotonic()
    try:
        with pytest.raises(StoreBusyError, match="busy for 30 s"):
            with store_lock.write_lock(db, wait=30.0, monotonic=fake.monotonic, sleep=fake.sleep):
                pass
    finally:
        os.close(outsider)
    assert sum(fake.slept) >= 30.0 and time.monotonic() - start < 5  # 30 s waited, none real


def test_a_long_pull_publishes_on_the_monotonic_clock_it_is_given(tmp_path, monkeypatch):
    published = []
    monkeypatch.setattr(
        ingest_load.snapshots, "publish_open", lambda con, path: published.append(path)
    )
    cfg = config.with_db(settings.Config(), str(tmp_path / "p.duckdb"))
    with Emulator(TOKEN) as emu:
        ae = replace(settings.AnalyticsEngineConfig(), timeout=timedelta(seconds=5))
        client = Client(Credentials(emu.account, TOKEN, emu.base), ae, sleep=lambda s: None)
        until = T0 + timedelta(hours=3)
        slow = FakeTime(step=ingest_load.PUBLISH_EVERY_S + 1)  # every window takes longer
        summary = ingest_load.pull(
            cfg, client, until, since=T0, until=until, monotonic=slow.monotonic
        )
        fast = FakeTime()  # no time passes: nothing published along the way
        ingest_load.pull(cfg, client, until, since=T0, until=until, monotonic=fast.monotonic)
    assert summary.windows > 1 and len(published) == summary.windows
