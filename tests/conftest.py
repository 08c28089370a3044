"""Shared fixtures: a small simulator, raw events as pandas truth, stores."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cachemon import config
from cachemon.clock import DAY, HOUR, Window, floor_to, utcnow
from cachemon.costs import report
from cachemon.errors import ConfigError
from cachemon.events import EventFrame
from cachemon.ingest import write as ingest
from cachemon.settings import SimulatorConfig
from cachemon.sources.simulator import Simulator
from cachemon.store import db as store
from cachemon.usecases import demo

# A Thursday, so the 09:00 origin slowdown falls in the default test span.
T0 = datetime(2026, 11, 19, 8, 0, tzinfo=UTC)
# The simulator's built-in experiment (the seed's), as a config file; format with start=.
EXPERIMENT_TOML = """
[[experiments]]
name = "extended-title-ttl"
endpoint = "title"
scheme = "seed-sha256-byte"
start = "{start}"
duration = "14d"
[[experiments.cohorts]]
name = "control"
ttl = "24h"
weight = 0.5
[[experiments.cohorts]]
name = "treatment"
ttl = "48h"
weight = 0.5
"""
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
    from dataclasses import replace

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
    table = (
        pa.concat_tables([f.table.cast(frames[0].table.schema) for f in frames]) if frames else None
    )
    df = table.to_pandas()
    for col in ("tier", "key", "endpoint", "experiment", "cohort", "status", "kind"):
        df[col] = df[col].astype(str)
    return df


def load(path, parts, source="simulator", now=T0):
    with store.writer(path, now) as con:
        for w, frame in parts:
            ingest.replace_window(con, frame, source, w, now)


def weighted_quantile(values, weights, q) -> float:
    """Independent truth: numpy's inverted-CDF weighted quantile."""
    return float(
        np.quantile(np.asarray(values), q, weights=np.asarray(weights), method="inverted_cdf")
    )


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "cachemon.duckdb"


@pytest.fixture(scope="session")
def loaded_store(tmp_path_factory):
    """Three hours of small simulated traffic, ingested in hourly windows."""
    path = tmp_path_factory.mktemp("store") / "cachemon.duckdb"
    parts, truth = simulate(3)
    load(path, parts)
    return path, truth


@pytest.fixture
def env(db):
    e = dict(os.environ)
    e["CACHEMON_DB"] = str(db)
    e.pop("CACHEMON_CONFIG", None)
    e["PYTHONPATH"] = str(ROOT)
    return e


def config_error(tmp_path, text: str) -> tuple[str, Path]:
    """Load `text` as a config file that must be refused: the error's text
    and the file's path."""
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as err:
        config.load(p, env={})
    return str(err.value), p


@pytest.fixture(scope="session")
def results():
    """The reliability suite's table: call with (scenario, injected, count, result)."""
    from reliability.suite import write_table

    rows = []
    yield lambda scenario, injected, count, result: rows.append(
        {"scenario": scenario, "injected": injected, "count": count, "result": result}
    )
    if rows:
        write_table(rows)


@pytest.fixture(scope="session")
def docs_store(tmp_path_factory) -> str:
    """The store the docs' SQL runs on (tests/test_analyst_docs.py, tests/test_docs.py): three
    days of small demo traffic ending now, with the daily jobs' products, compacted."""
    tmp = tmp_path_factory.mktemp("docs")
    now = utcnow()
    cfg_file = tmp / "demo.toml"
    cfg_file.write_text(
        "[simulator]\nrequests_per_hour = 6000\ncatalog_keys = 3000\n"
        + EXPERIMENT_TOML.format(
            start=(floor_to(now, DAY) - 3 * DAY).strftime("%Y-%m-%dT%H:%M:%SZ")
        )
    )
    cfg = config.with_db(config.load(cfg_file, env={}), str(tmp / "demo.duckdb"))
    demo.demo(cfg, 3, now)
    with store.writer(cfg.store.path, now) as con:  # the daily cost reports of the whole days
        for back in (2, 3):
            report.save(con, report.build(con, cfg, (now - back * DAY).date(), now))
    env = {
        "CACHEMON_DB": cfg.store.path,
        "CACHEMON_CONFIG": str(cfg_file),
        "PYTHONPATH": str(ROOT),
        "PATH": "",
    }
    run = subprocess.run(
        [sys.executable, "-m", "jobs", "--once", "compact"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    return cfg.store.path
