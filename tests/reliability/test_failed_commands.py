"""A failed command changes nothing: a demo refused up front (bad --days,
--seed, --until, [simulator] setting) or failing midway leaves the store
exactly as the last good demo left it; writing commands refuse instants
beyond now plus CLOCK_SKEW; retention horizons never pass the data's end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from cachemon import config, settings
from cachemon.cli import main as cli_main
from cachemon.clock import CLOCK_SKEW, DAY, EARLIEST, HOUR, Window, floor_to, format_duration, iso
from cachemon.errors import InputError
from cachemon.ingest import retention
from cachemon.ingest import write as ingest_write
from cachemon.store import db as store_db
from cachemon.store import horizons
from cachemon.usecases import demo
from tests.helpers import ROOT, T0, small_sim

NOW = T0 + timedelta(hours=4)
SMALL_TOML = """
[simulator]
seed = 7
requests_per_hour = 6000
catalog_keys = 3000
sample_threshold_per_minute = 30
"""
DEMO = ["demo", "--days", "0.25", "--seed", "3", "--quiet"]
# (argument vector after `demo`, or a [simulator] line; the words the error must name)
REFUSED_DEMOS = [
    (["--days", "nan"], "--days"),
    (["--days", "inf"], "--days"),
    (["--days", "1e9"], "--days"),
    (["--days", "-1"], "--days"),
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2**64)], "--seed"),
    (["--until", "9999-12-31T00:00:00Z"], "--until"),
    (["--until", "0001-01-01"], "--until"),
    (["--until", iso(NOW + CLOCK_SKEW + timedelta(minutes=1))], "in the future"),
    ("catalog_keys = 0", "[simulator] catalog_keys"),
    ("requests_per_hour = nan", "simulator.requests_per_hour = nan is not a finite number"),
    ("colos = -3", "[simulator] colos"),
    ("seed = -1", "[simulator] seed"),
]


def tables(db: Path) -> dict[str, list[tuple]]:
    """Every table's rows, in a fixed order: the store's whole content."""
    with store_db.writer(db, NOW, publish=False) as con:
        names = [
            f'"{s}"."{t}"'
            for s, t in con.execute(
                "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
                "ORDER BY ALL"
            ).fetchall()
        ]
        return {n: con.execute(f"SELECT * FROM {n} ORDER BY ALL").fetchall() for n in names}


def cachemon(capsys, db: Path, cfg: Path, *args: str) -> tuple[int, str]:
    code = cli_main.main(["--db", str(db), "--config", str(cfg), *args], now=NOW)
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def first_demo(tmp_path_factory):
    """A store after one good demo, and its content (the truth every failed
    command must leave in place). Each test copies the store."""
    d = tmp_path_factory.mktemp("failed")
    cfg = d / "small.toml"
    cfg.write_text(SMALL_TOML)
    db = d / "demo.duckdb"
    assert cli_main.main(["--db", str(db), "--config", str(cfg), *DEMO], now=NOW) == 0
    return db, cfg, tables(db)


@pytest.fixture
def demo_copy(first_demo, tmp_path):
    db, cfg, content = first_demo
    copy = tmp_path / "demo.duckdb"
    shutil.copyfile(db, copy)
    return copy, cfg, content


def test_refused_demos_change_nothing(demo_copy, capsys, tmp_path, results):
    db, cfg, before = demo_copy
    for args, named in REFUSED_DEMOS:
        conf = cfg
        if isinstance(args, str):
            conf = tmp_path / "bad.toml"
            key = args.split(" = ")[0]
            conf.write_text(
                "".join(
                    f"{line}\n"
                    for line in SMALL_TOML.splitlines()
                    if not line.startswith(key + " ")
                )
                + args
                + "\n"
            )
            args = []
        code, err = cachemon(capsys, db, conf, *DEMO, *args)
        assert code == 2, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("cachemon: error:") and named in lines[0], (
            args,
            err,
        )
    assert tables(db) == before
    assert not list(tmp_path.glob(".*rebuild.tmp*"))
    results(
        "failed demo refused up front",
        "bad --days (nan, inf, 1e9, -1), --seed, --until (years 1 and 9999, "
        "future), [simulator] settings",
        f"{len(REFUSED_DEMOS)} commands",
        "exit 2 with one line naming the argument; every table equal to the previous demo's",
    )


def test_a_demo_failing_midway_or_killed_changes_nothing(demo_copy, tmp_path, results):
    db, cfg_path, before = demo_copy
    cfg = config.with_db(config.load(cfg_path, env={}), str(db))
    calls = []

    def fail_midway(done: int, total: int) -> None:
        calls.append(done)
        if done == 2:  # two windows of new data written, the old data dropped
            raise RuntimeError("injected failure")

    with pytest.raises(RuntimeError, match="injected"):
        demo.demo(cfg, 3, NOW, seed=5, progress=fail_midway)
    assert calls == [1, 2]
    assert tables(db) == before
    aside = db.with_name(f".{db.name}.rebuild.tmp")
    assert not aside.exists()
    # A demo killed midway leaves its copy aside (here: a torn one); the next
    # demo removes it and the store holds exactly what that demo makes.
    aside.write_bytes(b"torn copy of a killed demo")
    db.with_name(aside.name + ".wal").write_bytes(b"torn wal")
    demo.demo(cfg, 0.25, NOW, seed=3)
    assert not aside.exists() and not db.with_name(aside.name + ".wal").exists()
    assert tables(db) == before  # the same demo again: the same store
    demo.demo(cfg, 0.25, NOW, seed=5)  # another seed: the swap shows, to readers too
    after = tables(db)
    assert after != before
    with store_db.reader(db) as con:
        assert (
            con.execute("SELECT * FROM rollup_minute ORDER BY ALL").fetchall()
            == after['"main"."rollup_minute"']
        )
    results(
        "demo failing midway / killed",
        "an exception after 2 of 3 simulated days; a torn copy left aside",
        "2",
        "every table equal to the previous demo's; the copy aside removed by the next demo",
    )


def test_a_killed_demo_changes_nothing(demo_copy, results):
    """SIGKILL a long demo once it is building its copy: the store is as the
    previous demo left it, and the next demo starts over cleanly."""
    db, cfg, before = demo_copy
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHEMON_")} | {
        "PYTHONPATH": str(ROOT)
    }
    aside = db.with_name(f".{db.name}.rebuild.tmp")
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cachemon",
            "--db",
            str(db),
            "--config",
            str(cfg),
            "demo",
            "--days",
            "30",
            "--seed",
            "9",
            "--quiet",
            "--until",
            iso(NOW),
        ],
        cwd=ROOT,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while not aside.exists() and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.05)
        time.sleep(1.0)  # some simulated days into the copy
        assert p.poll() is None, "the demo ended before it could be killed"
    finally:
        p.kill()
        p.wait()
    assert tables(db) == before
    results(
        "demo killed (SIGKILL)",
        "a 30-day demo killed while building its copy",
        "1",
        "every table equal to the previous demo's",
    )


WRITES_BEYOND_NOW = [
    ["compact", "--at", "2090-01-01T00:00:00Z"],
    ["alerts", "check", "--at", iso(NOW + CLOCK_SKEW + timedelta(seconds=1))],
    ["experiments", "analyze", "--at", "2199-12-31T00:00:00Z"],
    ["costs", "report", "--date", (NOW + DAY).date().isoformat()],
    ["pull", "--until", "2199-01-01T00:00:00Z"],
]


def test_writes_beyond_now_are_refused(demo_copy, capsys, results):
    db, cfg, before = demo_copy
    for args in WRITES_BEYOND_NOW:
        code, err = cachemon(capsys, db, cfg, *args)
        assert (
            code == 2
            and err.startswith("cachemon: error:")
            and "future" in err
            and len(err.splitlines()) == 1
        ), (args, err)
    assert tables(db) == before
    results(
        "writing commands beyond now",
        "compact/alerts check/experiments analyze --at, costs report --date, "
        f"pull --until more than {format_duration(CLOCK_SKEW)} ahead",
        f"{len(WRITES_BEYOND_NOW)} commands",
        "exit 2 naming the instant as in the future; every table unchanged",
    )


def test_a_compact_within_the_skew_is_accepted(demo_copy, capsys):
    db, cfg, _ = demo_copy
    code, err = cachemon(capsys, db, cfg, "compact", "--at", iso(NOW + CLOCK_SKEW))
    assert code == 0, err


def test_horizons_never_pass_the_data_end(demo_copy, results):
    """Retention as of a far future (the library, below the CLI's check)
    keeps the horizons at the day the data ends, so the next hour can still
    be written."""
    db, _, before = demo_copy
    end = max(r[1] for r in before['"main"."watermarks"'])
    far = NOW + timedelta(days=365 * 60)
    with store_db.writer(db, NOW, publish=False) as con:
        kept = retention.apply(con, far, settings.RetentionConfig(minute_days=1, hour_days=2))
        assert kept.horizons == horizons.Horizons(floor_to(end, DAY), floor_to(end, DAY))
        w = Window(floor_to(end, HOUR), floor_to(end, HOUR) + HOUR)
        ingest_write.replace_window(con, small_sim().generate(w), "later", w, NOW)  # not refused
    results(
        "retention as of a far future",
        "retention applied 60 years ahead of the data",
        "1",
        "horizons stop at the day the data ends; the next hour is still writable",
    )


def test_an_empty_store_closes_nothing(tmp_path):
    """With no data, even a compaction far ahead leaves every supported instant writable."""
    with store_db.writer(tmp_path / "empty.duckdb", NOW) as con:
        kept = retention.apply(con, NOW + timedelta(days=365 * 60), settings.RetentionConfig())
        assert kept == retention.Result(horizons.Horizons(EARLIEST, EARLIEST), 0, 0)
        horizons.check_write(con, EARLIEST)  # not refused


def test_check_not_future_is_the_one_rule():
    from cachemon.clock import check_not_future

    assert check_not_future(NOW + CLOCK_SKEW, NOW) == NOW + CLOCK_SKEW
    with pytest.raises(InputError, match="--until: .* is in the future"):
        check_not_future(NOW + CLOCK_SKEW + timedelta(microseconds=1), NOW, "--until")
