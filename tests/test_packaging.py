"""One definition of what the package says about itself: its version, its
scripts, its data files, and the API's listening defaults the CLI shows."""

from __future__ import annotations

import importlib
import tomllib
from datetime import timedelta
from pathlib import Path

import pytest

import cachemon
from cachemon.api import app, server
from cachemon.cli import main as cli_main
from cachemon.settings import API_HOST, API_PORT, MetricsConfig

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").exists())
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_the_version_is_defined_once_in_the_package():
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    attr = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    module, name = attr.rsplit(".", 1)
    assert getattr(importlib.import_module(module), name) == cachemon.__version__
    assert cachemon.__version__.count(".") == 2


def test_every_script_entry_point_exists():
    scripts = PYPROJECT["project"]["scripts"]
    assert scripts["cachemon"] == "cachemon.cli.main:script"
    for target in scripts.values():
        module, name = target.split(":")
        assert callable(getattr(importlib.import_module(module), name)), target


def test_every_package_data_glob_matches_a_file():
    for package, globs in PYPROJECT["tool"]["setuptools"]["package-data"].items():
        for glob in globs:
            assert list((ROOT / package).glob(glob)), f"{package}: {glob} matches nothing"


def test_the_installed_script_names_itself_in_usage(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["/opt/venv/bin/cachemon", "metrics", "--help"])
    with pytest.raises(SystemExit) as exit_:
        cli_main.script()
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage: cachemon metrics")
    # From a checkout (and in-process) the usage line says how to run it there.
    assert cli_main.build_parser().prog == "python -m cachemon"


def test_serve_defaults_are_the_apis_own():
    args = cli_main.build_parser().parse_args(["serve"])
    listen = server.ServeOptions()
    assert (args.host, args.port) == (listen.host, listen.port) == (API_HOST, API_PORT)
    assert args.max_connections == listen.max_connections == server.MAX_CONNECTIONS
    assert args.header_timeout == listen.head_timeout == server.HEAD_TIMEOUT
    assert timedelta(seconds=args.cache_seconds) == app.ApiSettings().cache_for
    assert MetricsConfig().api_url == f"http://{API_HOST}:{API_PORT}"
