"""Shared fixtures (the helpers they build on are in tests/helpers), and the
reliability results table collected across pytest-xdist workers."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cachemon import config
from cachemon.clock import DAY, floor_to, utcnow
from cachemon.costs import report
from cachemon.store import db as store_db
from cachemon.usecases import demo
from tests.helpers import EXPERIMENT_TOML, ROOT, load, simulate
from tests.helpers.suite import write_table

# The reliability rows of this process (a worker's, or the whole run's without xdist).
ROWS = pytest.StashKey[list]()
# The key of a worker's rows in the output it hands to the xdist controller.
WORKER_ROWS = "reliability_rows"


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "cachemon.duckdb"


@pytest.fixture(scope="session")
def loaded_store(tmp_path_factory):
    """Three hours of small simulated traffic, ingested in hourly windows
    (built once per xdist worker, in that worker's own temporary folder)."""
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


@pytest.fixture
def results(request):
    """The reliability suite's table: call with (scenario, injected, count, result)."""
    rows = request.config.stash[ROWS]
    file, line, _ = request.node.location
    seq = itertools.count()

    def add(scenario, injected, count, result) -> None:
        rows.append(
            {
                "scenario": scenario,
                "injected": injected,
                "count": count,
                "result": result,
                "file": file,
                "line": line or 0,
                "test": request.node.nodeid,
                "seq": next(seq),
            }
        )

    return add


def pytest_configure(config):
    config.stash[ROWS] = []


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """xdist controller: a worker finished; keep the rows it collected."""
    node.config.stash[ROWS].extend(getattr(node, "workeroutput", {}).get(WORKER_ROWS, []))


def pytest_sessionfinish(session):
    rows = session.config.stash[ROWS]
    if hasattr(session.config, "workeroutput"):  # an xdist worker: the controller writes
        session.config.workeroutput[WORKER_ROWS] = rows
    elif rows:
        write_table(rows)


@pytest.fixture(scope="session")
def docs_store(tmp_path_factory) -> str:
    """The store the docs' SQL runs on (tests/store/test_analyst_docs.py, tests/test_docs.py): three
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
    with store_db.writer(cfg.store.path, now) as con:  # the daily cost reports of the whole days
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
