"""The command line: real processes, exit codes, messages, nothing lost."""

import hashlib
import json
import subprocess
import sys

import pytest

from cachemon.store import db as store_db
from tests.helpers import ROOT, T0


def run(env, *args, check_code=None):
    p = subprocess.run(
        [sys.executable, "-m", "cachemon", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check_code is not None:
        assert p.returncode == check_code, p.stderr
    return p


@pytest.fixture(scope="module")
def demo_env(tmp_path_factory):
    import os

    db = tmp_path_factory.mktemp("cli") / "demo.duckdb"
    env = dict(os.environ, CACHEMON_DB=str(db), PYTHONPATH=str(ROOT))
    env.pop("CACHEMON_CONFIG", None)
    p = run(
        env,
        "demo",
        "--days",
        "0.25",
        "--seed",
        "3",
        "--until",
        "2026-11-19T12:00:00Z",
        check_code=0,
    )
    assert "simulated" in p.stderr
    return env, db


@pytest.mark.parametrize("command", ["demo", "import", "metrics"])
def test_help(env, command):
    p = run(env, command, "--help", check_code=0)
    assert "usage: python -m cachemon " + command in p.stdout


def test_metrics_json(demo_env):
    env, _ = demo_env
    p = run(env, "metrics", "--period", "1h", "--at", "2026-11-19T12:00:00Z", check_code=0)
    out = json.loads(p.stdout)
    assert out["period"] == "1h" and out["window"]["start"] == "2026-11-19T11:00:00Z"
    assert 50 < out["hitRates"]["combined"] <= 100
    assert out["volume"]["total_requests"] > 50_000
    assert len(out["topKeys"]) == 10


def test_metrics_is_reproducible_with_at(demo_env):
    env, _ = demo_env
    a = run(env, "metrics", "--period", "15m", "--at", "2026-11-19T10:07:00Z", check_code=0).stdout
    b = run(env, "metrics", "--period", "15m", "--at", "2026-11-19T10:07:30Z", check_code=0).stdout
    assert a == b


@pytest.mark.parametrize(
    "args,message",
    [
        (["metrics", "--period", "2h"], "unknown period '2h': use one of 15m, 1h, 24h, 7d"),
        (["metrics", "--format", "xml"], "unknown format 'xml'"),
        (["metrics", "--at", "noon"], "--at: 'noon' is not an ISO 8601 time"),
        (
            ["metrics", "--at", "2020-01-01T00:00:00Z"],
            "no requests in [2019-12-31T23:00:00Z, 2020-01-01T00:00:00Z)",
        ),
        (["demo", "--days", "0"], "--days must be positive"),
        (["import", "nothing.ndjson"], "nothing.ndjson: no such file"),
    ],
)
def test_bad_input_exit_2_with_one_clear_line(demo_env, args, message):
    env, db = demo_env
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    p = run(env, *args)
    assert p.returncode == 2 and message in p.stderr, p.stderr
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


def test_missing_store(env):
    p = run(env, "metrics")
    assert p.returncode == 2 and "no store at" in p.stderr and "cachemon demo" in p.stderr


def test_corrupt_store_is_reported_and_left_untouched(env, db):
    db.write_bytes(b"this is not a database" * 100)
    p = run(env, "metrics")
    assert p.returncode == 2 and "not a readable DuckDB database" in p.stderr
    good = db.parent / "ok.ndjson"
    good.write_text(
        '{"timestamp": "2026-11-19T08:00:00Z", "tier": "edge", "key": "k", "endpoint": "title", "latency_ms": 3}\n'
    )
    p = run(env, "import", str(good))
    assert p.returncode == 2 and "not a readable DuckDB database" in p.stderr
    assert db.read_bytes() == b"this is not a database" * 100


def test_empty_store(env, db):
    with store_db.writer(db, T0):
        pass
    p = run(env, "metrics")
    assert p.returncode == 2 and "no request data yet" in p.stderr


def test_bad_config(env, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[simulator]\nseed = 'x'\n")
    p = run(env, "--config", str(cfg), "metrics")
    assert p.returncode == 2 and "[simulator] seed must be int, got 'x'" in p.stderr
    cfg.write_text("[store]\nkey_compaction_lag = 'soon'\n")
    assert "not a duration" in run(env, "--config", str(cfg), "metrics").stderr
    cfg.write_text("[colums]\n")
    assert "unknown section or key 'colums'" in run(env, "--config", str(cfg), "metrics").stderr
    cfg.write_text("[columns]\ntier = 'index1; DROP'\n")
    assert "is not a column name" in run(env, "--config", str(cfg), "metrics").stderr
    cfg.write_text("x = = 1")
    assert "not valid TOML" in run(env, "--config", str(cfg), "metrics").stderr
