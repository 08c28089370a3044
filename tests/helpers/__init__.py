"""Shared test helpers: a small simulator, raw events as pandas truth, stores,
the config snippets many tests use. Plain functions and constants; the
fixtures built on them live in tests/conftest.py. Import them as
`from tests.helpers import …` (pytest puts the repository root on sys.path)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from cachemon import config
from cachemon.clock import HOUR, Window
from cachemon.errors import ConfigError
from cachemon.events import EventFrame
from cachemon.ingest import write as ingest_write
from cachemon.settings import SimulatorConfig
from cachemon.sources.simulator import Simulator
from cachemon.store import db as store_db
from cachemon.tuning.experiments import example_toml

# The repository root: the cwd and PYTHONPATH of every subprocess a test starts.
ROOT = Path(__file__).resolve().parents[2]
# A Thursday, so the 09:00 origin slowdown falls in the default test span.
T0 = datetime(2026, 11, 19, 8, 0, tzinfo=UTC)
# The simulator's built-in experiment (the seed's), as a config file; format with start=.
EXPERIMENT_TOML = example_toml(start="{start}", description=None)
# Alert rules as config: the p99 rule the Thursday slowdown breaks, and one always firing.
P99_RULE = """
[alerts]
builtin_rules = false
[[alerts.rules]]
name = "p99_latency"
metric = "p99_latency"
threshold = 500
severity = "critical"
for = "30m"
"""
ALWAYS_RULE = """
[alerts]
builtin_rules = false
[[alerts.rules]]
name = "busy"
metric = "requests"
op = ">"
threshold = 0
severity = "warning"
"""
SMALL = SimulatorConfig(
    seed=7, requests_per_hour=6000, catalog_keys=3000, sample_threshold_per_minute=30
)


def small_sim(**overrides) -> Simulator:
    """The small test simulator, with `overrides` of its SimulatorConfig fields."""
    return Simulator(replace(SMALL, **overrides))


def simulate(
    hours: float = 3, start: datetime = T0, step: timedelta = HOUR, sim: Simulator | None = None
):
    """(list of (window, frame), truth DataFrame of all events)."""
    sim = sim or small_sim()
    parts = []
    for w in Window(start, start + timedelta(hours=hours)).split(step):
        parts.append((w, sim.generate(w)))
    return parts, to_pandas(*[f for _, f in parts])


def to_pandas(*frames: EventFrame) -> pd.DataFrame:
    """The events of `frames` as one DataFrame, enum-like columns as str."""
    table = (
        pa.concat_tables([f.table.cast(frames[0].table.schema) for f in frames]) if frames else None
    )
    df = table.to_pandas()
    for col in ("tier", "key", "endpoint", "experiment", "cohort", "status", "kind"):
        df[col] = df[col].astype(str)
    return df


# Busy small traffic: sampled (weights above 1) in the busy minutes, as
# Analytics Engine does, with more keys than a top-key summary list holds.
BUSY_SIM = dict(requests_per_hour=30_000, sample_threshold_per_minute=40, colos=30)


def two_span_store(path, start: datetime, later: datetime, now: datetime):
    """Two hours of busy traffic from `start` and two from `later`, loaded
    into the store at `path`: (path, truth DataFrame of all their events)."""
    early, df1 = simulate(2, start=start, sim=small_sim(**BUSY_SIM))
    late, df2 = simulate(2, start=later, sim=small_sim(**BUSY_SIM))
    load(path, early + late, now=now)
    return path, pd.concat([df1, df2])


def load(path, parts, source="simulator", now=T0) -> None:
    """Ingest `parts` (as `simulate` returns them) into the store at `path`."""
    with store_db.writer(path, now) as con:
        for w, frame in parts:
            ingest_write.replace_window(con, frame, source, w, now)


def weighted_quantile(values, weights, q) -> float:
    """Independent truth: numpy's inverted-CDF weighted quantile."""
    return float(
        np.quantile(np.asarray(values), q, weights=np.asarray(weights), method="inverted_cdf")
    )


def config_error(tmp_path, text: str) -> tuple[str, Path]:
    """Load `text` as a config file that must be refused: the error's text
    and the file's path."""
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as err:
        config.load(p, env={})
    return str(err.value), p


def cachemon_cli(db, config_file, *args: str, timeout: float = 60) -> str:
    """Run `python -m cachemon ARGS` on a store and config in a child
    process, as a user would; asserts exit 0 and returns its stdout."""
    env = dict(
        os.environ, CACHEMON_DB=str(db), CACHEMON_CONFIG=str(config_file), PYTHONPATH=str(ROOT)
    )
    p = subprocess.run(
        [sys.executable, "-m", "cachemon", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert p.returncode == 0, p.stderr
    return p.stdout
