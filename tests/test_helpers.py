"""The test suite's own machinery under pytest-xdist: ports that two workers
can never both be handed, and one reliability table holding every worker's
rows in the same order whatever the number of workers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT, servers

INNER_CONFTEST = 'pytest_plugins = ["tests.conftest"]\n'
INNER_TESTS = {
    "test_a.py": """
import pytest

@pytest.mark.parametrize("i", range(6))
def test_a(results, i):
    results(f"a{i}", "injected a", i, "ok")
""",
    "test_b.py": """
def test_b1(results):
    results("b1 first", "injected b", 1, "ok")
    results("b1 second", "injected b", 2, "ok")

def test_b2(results):
    results("b2", "injected b", 3, "ok")

def test_b3_without_rows():
    pass
""",
}


def _ephemeral_low() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def test_two_workers_get_disjoint_ports_below_the_ephemeral_range(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    bands = []
    for worker in ("gw0", "gw1"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        bands.append(servers._port_band())
        ports = {servers.free_port() for _ in range(20)}
        assert len(ports) == 20 and ports <= set(bands[-1])
        with socket.socket() as s:
            s.bind(("127.0.0.1", ports.pop()))  # free indeed
    assert not set(bands[0]) & set(bands[1])
    assert max(bands[1]) < _ephemeral_low()


def _run_inner(tmp_path: Path, name: str, *args: str) -> list[dict]:
    """Run the inner suite with our conftest; the reliability rows it wrote."""
    suite, artifacts = tmp_path / "suite", tmp_path / name
    suite.mkdir(exist_ok=True)
    (suite / "conftest.py").write_text(INNER_CONFTEST)
    for file, text in INNER_TESTS.items():
        (suite / file).write_text(text)
    env = dict(os.environ, PYTHONPATH=str(ROOT), CACHEMON_ARTIFACTS=str(artifacts))
    for var in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_ADDOPTS"):
        env.pop(var, None)
    p = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", ".", *args],
        cwd=suite,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    md = (artifacts / "reliability.md").read_text().splitlines()
    rows = json.loads((artifacts / "reliability.json").read_text())
    assert len(md) == 2 + len(rows)
    return rows


def test_the_reliability_table_holds_every_workers_rows_in_one_order(tmp_path):
    serial = _run_inner(tmp_path, "serial", "-p", "no:xdist")
    parallel = _run_inner(tmp_path, "parallel", "-n", "3", "--dist", "worksteal")
    assert [r["scenario"] for r in serial] == [f"a{i}" for i in range(6)] + [
        "b1 first",
        "b1 second",
        "b2",
    ]
    assert parallel == serial
