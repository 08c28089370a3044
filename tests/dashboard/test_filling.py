"""While the first demo fills the store, the pages show its progress: a real
`cachemon demo` in a child process keeps `<db>.filling.json` beside the
store (removed once the store is published), and the dashboard's helper
draws it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from streamlit.testing.v1 import AppTest

from cachemon.errors import EmptyStoreError, StoreError
from cachemon.store import db as store_db
from cachemon.store import filling
from cachemon.store.queries import data_span
from tests.helpers import ROOT

DAYS = 2


def _app(monkeypatch, db) -> AppTest:
    """The dashboard (app.py, the Overview) on `db`."""
    monkeypatch.setenv("CACHEMON_DB", str(db))
    monkeypatch.delenv("CACHEMON_CONFIG", raising=False)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_a_first_demo_shows_its_progress_until_the_store_is_published(tmp_path, monkeypatch):
    db = tmp_path / "cachemon.duckdb"
    cfg_file = tmp_path / "empty.toml"
    cfg_file.write_text("")
    env = dict(os.environ, CACHEMON_DB=str(db), CACHEMON_CONFIG=str(cfg_file), PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "cachemon", "demo", "--days", str(DAYS), "--quiet"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[filling.Filling] = []
    shown = None
    try:
        deadline = time.time() + 300
        while proc.poll() is None:
            assert time.time() < deadline, "the demo did not end"
            f = filling.read(db)
            if f is not None:
                seen.append(f)
                if shown is None:
                    # Nothing published yet: readers find an empty store...
                    with pytest.raises(EmptyStoreError):
                        with store_db.reader(db) as con:
                            data_span(con)
                    # ...and the page shows the demo's progress instead.
                    at = _app(monkeypatch, db)
                    shown = (filling.read(db), at.get("progress"), at.caption)
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == 0, proc.stderr.read()
    assert seen, "no progress file while the demo ran"
    # The file names the demo's process and the whole span, and only grows.
    assert {f.pid for f in seen} == {proc.pid}
    assert {f.total_days for f in seen} == {float(DAYS)}
    done = [f.done_days for f in seen]
    assert done == sorted(done) and 0 <= done[0] and done[-1] <= DAYS
    assert len({f.started for f in seen}) == 1
    # The progress as drawn: the bar's value and its text.
    f_then, bars, captions = shown
    assert f_then is not None and len(bars) == 1
    pct = round(100 * f_then.done_days / DAYS)
    assert abs(bars[0].value - pct) <= 1
    assert bars[0].proto.text.startswith(
        f"Filling the store with {DAYS} days of simulated traffic: "
    )
    assert any(f"process {proc.pid}" in c.value for c in captions)
    # Once published: no progress file, the data is there, the page says nothing of filling.
    assert not filling.progress_path(db).exists()
    with store_db.reader(db) as con:
        assert data_span(con) is not None
    after = _app(monkeypatch, db)
    assert not after.get("progress") and not any("Filling" in c.value for c in after.caption)
    assert after.metric, "the Overview shows the data"


def test_a_progress_file_whose_process_is_gone_is_stale(tmp_path, monkeypatch):
    db = tmp_path / "s.duckdb"
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(gone.stdout)
    started = datetime(2026, 12, 1, 14, 15, tzinfo=UTC)
    filling.write(db, filling.Filling(started, 1.0, 7.0, dead_pid))
    assert filling.read(db) is None
    after = _app(monkeypatch, db)
    assert not after.get("progress") and any("The store is empty" in i.value for i in after.info)
    # The same file naming a live process is a filling in progress.
    filling.write(db, filling.Filling(started, 1.0, 7.0, os.getpid()))
    assert filling.read(db) == filling.Filling(started, 1.0, 7.0, os.getpid())
    bars = _app(monkeypatch, db).get("progress")
    assert bars[0].value == 14  # 1 of 7 days
    assert bars[0].proto.text == "Filling the store with 7 days of simulated traffic: 14%"


def test_the_file_goes_whatever_ends_the_fill(tmp_path):
    db = tmp_path / "k.duckdb"
    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    with pytest.raises(RuntimeError):
        with filling.announced(db, 3.0, clock=lambda: t0) as update:
            update(1.0)
            assert filling.read(db) == filling.Filling(t0, 1.0, 3.0, os.getpid())
            raise RuntimeError("the demo failed")
    assert not filling.progress_path(db).exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left either


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("{", "is not JSON"),
        ("[1]", "not a JSON object"),
        ('{"started": "2026-12-01T00:00Z", "done_days": 1, "total_days": 2}', "no 'pid'"),
        (
            '{"started": "2026-12-01T00:00Z", "done_days": 3, "total_days": 2, "pid": 1}',
            "done_days",
        ),
        (
            '{"started": "2026-12-01T00:00Z", "done_days": 1, "total_days": 0, "pid": 1}',
            "total_days",
        ),
        ('{"started": "2026-12-01T00:00Z", "done_days": 1, "total_days": 2, "pid": -4}', "pid"),
        ('{"started": "2026-12-01T00:00Z", "done_days": 1, "total_days": 2, "pid": true}', "pid"),
        ('{"started": "yesterday", "done_days": 1, "total_days": 2, "pid": 1}', "started"),
    ],
)
def test_a_file_that_is_not_a_progress_file_is_named(tmp_path, monkeypatch, body, problem):
    db = tmp_path / "m.duckdb"
    filling.progress_path(db).write_text(body)
    with pytest.raises(StoreError, match=problem) as err:
        filling.read(db)
    assert str(filling.progress_path(db)) in str(err.value)
    at = _app(monkeypatch, db)
    assert not at.get("progress") and any("The store is empty" in i.value for i in at.info)
    assert any(problem in c.value for c in at.caption)


@given(
    done=st.floats(0, 400, allow_nan=False),
    extra=st.floats(0.001, 400, allow_nan=False),
    minutes=st.integers(0, 10**6),
)
def test_a_progress_file_reads_back_as_written(tmp_path_factory, done, extra, minutes):
    db = tmp_path_factory.mktemp("p") / "h.duckdb"
    started = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes)
    f = filling.Filling(started, done, done + extra, os.getpid())
    filling.write(db, f)
    assert filling.read(db) == f
    assert json.loads(filling.progress_path(db).read_text())["pid"] == os.getpid()
    assert 0 <= f.fraction <= 1
