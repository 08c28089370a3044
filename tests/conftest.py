"""Shared fixtures (the helpers they build on are in tests/helpers), and the
reliability results table collected across pytest-xdist workers."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from tests.helpers import ROOT, load, simulate
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
