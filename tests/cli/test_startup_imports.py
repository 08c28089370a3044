"""Start-up: what the commands import. `python -m cachemon --help` and
`import cachemon.cli.main` import no command group and none of the heavy
libraries; `metrics` imports its own group and what computing metrics needs
(DuckDB; one window's quantiles are plain Python), not numpy, pandas, scipy,
pyarrow, the API server or the senders' libraries, nor prometheus_client
unless it prints the exposition; `python -m jobs --list` imports neither
numpy nor pandas nor scipy nor the scheduler library. Each child process
prints its sorted `sys.modules`; no timings are asserted here (bench/
measures those)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from datetime import timedelta

import pytest

from cachemon.cli import main as cli_main
from cachemon.clock import iso
from cachemon.histogram import ALPHA
from tests.helpers import ROOT, T0, weighted_quantile

# Runs a module as `python -m` does (or a statement), then writes its exit
# code, stdout and sorted sys.modules as JSON to the file named first.
CHILD = """
import contextlib, io, json, runpy, sys
out, kind, target, *argv = sys.argv[1:]
code, buf = 0, io.StringIO()
sys.argv = [target, *argv]
with contextlib.redirect_stdout(buf):
    try:
        if kind == "module":
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            exec(target)
    except SystemExit as exc:
        code = exc.code
with open(out, "w", encoding="utf-8") as f:
    json.dump({"code": code, "stdout": buf.getvalue(), "modules": sorted(sys.modules)}, f)
"""
# Never needed before a command runs, nor by the three start-up paths.
HEAVY = (
    "pandas",
    "scipy",
    "plotly",
    "streamlit",
    "jinja2",
    "httpx",
    "starlette",
    "uvicorn",
    "tqdm",
    "schedule",
)
# Not needed to list the commands or parse the command line.
DATA = ("duckdb", "numpy", "pyarrow", "prometheus_client")
# Not needed to compute and print one window's metrics, nor to list the jobs.
NOT_FOR_ONE_WINDOW = HEAVY + ("numpy", "pyarrow")
GROUP_MODULES = set(cli_main.GROUPS)


def _run(tmp_path, kind: str, target: str, *argv: str, env: dict | None = None) -> dict:
    out = tmp_path / "child.json"
    p = subprocess.run(
        [sys.executable, "-c", CHILD, str(out), kind, target, *argv],
        cwd=ROOT,
        env=dict(env or os.environ, PYTHONPATH=str(ROOT), COLUMNS="100"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    return json.loads(out.read_text(encoding="utf-8")) | {"stderr": p.stderr}


def _loaded(modules: list[str], tops) -> list[str]:
    """The packages of `tops` that `modules` has (the package or a module inside it)."""
    return sorted({m.split(".")[0] for m in modules} & set(tops))


def _groups(modules: list[str]) -> set[str]:
    return {m for m in modules if m in GROUP_MODULES}


@pytest.fixture
def store_env(loaded_store, tmp_path):
    """A copy of the small loaded store and its published snapshot (the
    runner's `--list` opens the store as a writer)."""
    path, _ = loaded_store
    folder = shutil.copytree(path.parent, tmp_path / "store", symlinks=True)
    env = dict(os.environ, CACHEMON_DB=str(folder / path.name))
    env.pop("CACHEMON_CONFIG", None)
    return env


@pytest.mark.parametrize(
    "kind, target, argv",
    [("code", "import cachemon.cli.main", ()), ("module", "cachemon", ("--help",))],
    ids=["import", "help"],
)
def test_the_command_line_starts_without_groups_or_heavy_libraries(tmp_path, kind, target, argv):
    child = _run(tmp_path, kind, target, *argv)
    assert child["code"] in (0, None)
    assert _loaded(child["modules"], HEAVY + DATA) == []
    assert _groups(child["modules"]) == set()
    if argv:
        assert child["stdout"].startswith("usage: python -m cachemon")
        for commands in cli_main.GROUPS.values():
            for name, text in commands.items():
                assert name in child["stdout"] and text.split()[0] in child["stdout"]


@pytest.mark.parametrize("fmt", ["json", "prometheus"])
def test_metrics_imports_its_group_and_no_heavy_library(tmp_path, store_env, loaded_store, fmt):
    at = T0 + timedelta(hours=3)
    argv = ("metrics", "--at", iso(at), "--format", fmt)
    child = _run(tmp_path, "module", "cachemon", *argv, env=store_env)
    assert child["code"] == 0, child["stderr"]
    # The command ran in full: the last hour's requests and p99, from the raw events.
    _, truth = loaded_store
    hour = truth[(truth["timestamp"] >= at - timedelta(hours=1)) & (truth["timestamp"] < at)]
    req = hour[hour["kind"] == "request"]
    requests = req["sample_interval"].sum()
    p99 = weighted_quantile(req["latency_ms"], req["sample_interval"], 0.99)
    if fmt == "json":
        report = json.loads(child["stdout"])
        assert report["period"] == "1h" and report["volume"]["total_requests"] == round(requests)
        assert report["latency"]["p99"] == pytest.approx(p99, rel=ALPHA + 1e-3)
    else:
        samples = dict(
            line.rsplit(" ", 1) for line in child["stdout"].splitlines() if line[0] != "#"
        )
        period = [float(v) for k, v in samples.items() if k.startswith("cachemon_period_requests{")]
        assert sum(period) == pytest.approx(requests, rel=1e-12)
        p99_s = float(samples['cachemon_request_latency_seconds{period="1h",quantile="0.99"}'])
        assert p99_s * 1000 == pytest.approx(p99, rel=ALPHA + 1e-3)
    assert _loaded(child["modules"], NOT_FOR_ONE_WINDOW) == []
    # The exposition library only for the exposition.
    assert _loaded(child["modules"], ("prometheus_client",)) == (
        ["prometheus_client"] if fmt == "prometheus" else []
    )
    assert _groups(child["modules"]) == {"cachemon.cli.metrics"}


def test_the_job_runners_list_imports_no_heavy_library(tmp_path, store_env):
    child = _run(tmp_path, "module", "jobs", "--list", env=store_env)
    assert child["code"] == 0, child["stderr"]
    assert child["stdout"].splitlines()[0].startswith("ingest ")
    assert _loaded(child["modules"], NOT_FOR_ONE_WINDOW) == []
    # The schedule comes from runner.runs; the job bodies load when a job runs.
    assert "cachemon.usecases.scheduled" not in child["modules"]


def _paths(parser: argparse.ArgumentParser, path=()):
    """Every command path of `parser` with its parser, nested ones included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _paths(sub, (*path, name))


@pytest.mark.parametrize("module", sorted(GROUP_MODULES))
def test_a_commands_help_imports_only_its_group_and_says_what_the_whole_parser_says(
    tmp_path, monkeypatch, module
):
    """`<command> --help` (as `main` parses, lazily) prints what the parser
    built at once prints, and imports no other group."""
    monkeypatch.setenv("COLUMNS", "100")  # the child's width: the same wrapping
    whole = dict(_paths(cli_main.build_parser()))
    paths = [p for p in whole if p[0] in cli_main.GROUPS[module]]
    code = (
        "from cachemon.cli.main import main\n"
        f"for path in {paths!r}:\n"
        "    try:\n"
        "        main([*path, '--help'])\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, path\n"
        "    print('\\0', end='')\n"
    )
    child = _run(tmp_path, "code", code)
    assert child["stdout"].split("\0")[:-1] == [whole[p].format_help() for p in paths]
    assert _groups(child["modules"]) == {module}
