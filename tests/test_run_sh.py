"""`./run.sh` as a user runs it: it starts the dashboard, the job runner and
the metrics API (`cachemon serve` on 127.0.0.1, the port `[metrics] api_url`
names), and Ctrl-C (SIGINT to its process group, as a terminal sends it)
stops every one of them.

The script runs from a copy of the repository's entry points (its own
directory is where it works), with a `.venv` whose python is this test's
and marked as installed, so no package is fetched."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.helpers import ROOT
from tests.helpers.servers import free_port

LINKED = ("app.py", "cachemon", "pages", "jobs", ".streamlit")


def _checkout(tmp: Path) -> Path:
    """run.sh and scripts/setup.sh copied, the code linked, a ready .venv."""
    (tmp / "scripts").mkdir()
    shutil.copy2(ROOT / "run.sh", tmp / "run.sh")
    shutil.copy2(ROOT / "scripts" / "setup.sh", tmp / "scripts" / "setup.sh")
    reqs = sorted(ROOT.glob("requirements*.txt"))
    for r in reqs:
        shutil.copy2(r, tmp / r.name)
    for name in LINKED:
        (tmp / name).symlink_to(ROOT / name)
    bin_dir = tmp / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    python = bin_dir / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    # setup.sh's stamp: `cat requirements*.txt | sha256sum | cut -c1-16`.
    digest = hashlib.sha256(b"".join(r.read_bytes() for r in reqs)).hexdigest()[:16]
    (tmp / ".venv" / f".installed-{digest}-requirements.txt").touch()
    return tmp


def _answers(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=1)
    except httpx.HTTPError:
        return None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_run_sh_starts_the_api_and_ctrl_c_stops_everything(tmp_path):
    tree = _checkout(tmp_path)
    api_port, web_port = free_port(), free_port()
    (tree / "cachemon.toml").write_text(
        f'[metrics]\napi_url = "http://127.0.0.1:{api_port}"\n'
        "[simulator]\nrequests_per_hour = 6000.0\ncatalog_keys = 3000\n"
        "sample_threshold_per_minute = 30.0\nexperiment = false\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CACHEMON_", "STREAMLIT_"))} | {
        "CACHEMON_CONFIG": str(tree / "cachemon.toml"),
        "CACHEMON_DB": str(tree / "data" / "cachemon.duckdb"),
        "DEMO_DAYS": "0.1",
        "STREAMLIT_SERVER_PORT": str(web_port),
        "PYTHON": sys.executable,
    }
    (tree / "data").mkdir()
    log = tree / "run.log"
    proc = subprocess.Popen(
        ["bash", "run.sh"],
        cwd=tree,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, as a terminal's job
    )
    api, web = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{web_port}"
    try:
        deadline = time.time() + 180
        # Everything up: the banner comes after the demo, once the runner starts.
        while "dashboard on" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.time() < deadline, log.read_text()
            time.sleep(0.5)
        while not (_answers(web + "/_stcore/health") and _answers(api + "/healthz")):
            assert time.time() < deadline, log.read_text()
            time.sleep(0.5)
        health = _answers(api + "/healthz")
        assert health.json()["status"] in {"ok", "degraded", "stale", "error"}, health.text
        metrics = httpx.get(api + "/metrics", timeout=10)
        assert metrics.status_code == 200 and "hitRate" in metrics.text, metrics.text[:300]
        assert f"metrics API on {api}" in log.read_text()
        assert (tree / "data" / "serve.log").exists()
        # Ctrl-C: SIGINT to the whole foreground group.
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
        deadline = time.time() + 30
        while _group_alive(proc.pid):
            assert time.time() < deadline, "a process of run.sh outlived Ctrl-C"
            time.sleep(0.2)
        assert _answers(api + "/healthz") is None
        assert _answers(web + "/_stcore/health") is None
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
