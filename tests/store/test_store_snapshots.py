"""The store's snapshots and its writers' turns: every publish is a new
version a long-lived reader sees at once; a truncated or corrupt main file
is never published; a failing copy leaves no temporary file and says what
the disk said; writers wait their turn and a busy store is one clear line;
a store written by a newer cachemon is one clear line on every read path."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
import threading
from datetime import timedelta

import pytest

from cachemon.errors import StoreBusyError, StoreDiskError, StoreError
from cachemon.store import db as store_db
from cachemon.store import lock as store_lock
from cachemon.store import queries, schema, snapshots
from tests.helpers import ROOT, T0, load, simulate


def _until(db):
    with store_db.reader(db) as con:
        return queries.data_span(con)[1]


def _files(db):
    return sorted(f.name for f in db.parent.iterdir())


@pytest.fixture
def two_hours(tmp_path):
    db = tmp_path / "s.duckdb"
    parts, _ = simulate(2)
    load(db, parts[:1])
    return db, parts


def test_a_long_lived_reader_sees_every_publish(two_hours):
    """The API's shared reader and a held reader: DuckDB hands back the
    already-open database for a path, so each publish must be a new path."""
    db, parts = two_hours
    held = store_db.reader(db)
    con = held.__enter__()  # an open reader (as a dashboard thread has) while data moves on
    try:
        with store_db.shared_reader(db) as cur:
            first = queries.data_span(cur)[1]
        assert first == T0 + timedelta(hours=1)
        load(db, parts[1:])
        with store_db.shared_reader(db) as cur:
            assert queries.data_span(cur)[1] == T0 + timedelta(hours=2)
        with store_db.reader(db) as fresh:
            assert queries.data_span(fresh)[1] == T0 + timedelta(hours=2)
        assert queries.data_span(con)[1] == first  # the held one reads its own version, undisturbed
    finally:
        held.__exit__(None, None, None)
    assert (
        os.readlink(snapshots.snapshot_path(db)) == snapshots.version_path(db, 2).name
    )  # analysts' name: a symlink


def test_old_versions_are_pruned_and_numbers_only_grow(two_hours):
    db, _ = two_hours
    for _ in range(5):
        snapshots.publish_snapshot(db)
    assert [n for n, _ in snapshots.versions(db)] == [4, 5, 6]
    assert snapshots.current_snapshot(db) == snapshots.version_path(db, 6)
    assert not [f for f in _files(db) if f.endswith((".tmp", ".link"))]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "not cachemon"])
def test_a_damaged_main_file_is_never_published(two_hours, damage, results):
    import duckdb

    db, _ = two_hours
    before, snap = _until(db), snapshots.current_snapshot(db)
    good = db.read_bytes()
    if damage == "truncated":
        db.write_bytes(good[: len(good) - 4096])  # only the end is gone: it still opens
        expected = "is truncated"
    elif damage == "garbage":
        db.write_bytes(b"\0" * 5000)
        expected = "not a readable DuckDB database"
    else:
        db.unlink()
        duckdb.connect(str(db)).execute("CREATE TABLE t (x INT)").close()
        expected = "not a cachemon store"
    with pytest.raises(StoreError, match=expected) as err:
        snapshots.publish_snapshot(db)
    assert "last good snapshot stays" in str(err.value) and "\n" not in str(err.value)
    assert snapshots.current_snapshot(db) == snap and _until(db) == before
    assert not [f for f in _files(db) if f.endswith((".tmp", ".link"))]
    results(
        f"{damage} main file at publish",
        f"main store file {damage}",
        1,
        "publish refused in one line; the last good snapshot still answers; no temporary file",
    )


def test_a_disk_full_copy_says_so_and_leaves_no_temporary_file(two_hours):
    """ENOSPC injected through the copy function (the real disk-full run is
    tests/reliability/test_disk.py): half a file is written, then the disk
    refuses."""
    db, parts = two_hours
    before, snap = _until(db), snapshots.current_snapshot(db)

    def full_disk(src, dst):
        dst.write_bytes(src.read_bytes()[:100_000])
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    with pytest.raises(StoreDiskError, match="no space left on device") as err:
        snapshots.publish_snapshot(db, copy=full_disk)
    assert "\n" not in str(err.value)
    assert snapshots.current_snapshot(db) == snap and _until(db) == before
    assert not [f for f in _files(db) if f.endswith((".tmp", ".link"))]
    snapshots.publish_snapshot(db)  # the disk has room again: the next publish works
    assert snapshots.current_snapshot(db) != snap


def test_a_publisher_that_died_mid_copy_leaves_nothing_behind(two_hours):
    db, _ = two_hours
    dead = db.with_name(f".{snapshots.version_path(db, 9).name}.99999.tmp")
    dead.write_bytes(b"half a copy")
    snapshots.publish_snapshot(db)
    assert not dead.exists()


def _cli(db, *args, **env):
    return subprocess.run(
        [sys.executable, "-m", "cachemon", "--db", str(db), *args],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _silences(db):
    with store_db.reader(db) as con:
        return con.execute("SELECT count(*) FROM silences").fetchall()[0][0]


def test_writers_take_turns_and_a_busy_store_is_one_line(two_hours, results):
    db, _ = two_hours
    held, release = threading.Event(), threading.Event()

    def hold():
        with store_db.writer(db, T0):  # another writer's long turn (an import)
            held.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(10)
    try:
        busy = _cli(
            db,
            "alerts",
            "silence",
            "p99_latency",
            "--for",
            "1h",
            "--reason",
            "deploy",
            CACHEMON_WRITE_WAIT_SECONDS="0.5",
        )
        # A writer that waits long enough gets its turn when the holder is done.
        threading.Timer(1.0, release.set).start()
        waited = _cli(
            db,
            "alerts",
            "silence",
            "p99_latency",
            "--for",
            "1h",
            "--reason",
            "deploy",
            CACHEMON_WRITE_WAIT_SECONDS="60",
        )
    finally:
        release.set()
        t.join()
    assert busy.returncode == 2, busy.stderr
    line = busy.stderr.strip()
    assert line.startswith("cachemon: error: store s.duckdb busy for 0.5 s") and "\n" not in line
    assert f"pid {os.getpid()}" in line  # who holds it
    assert waited.returncode == 0, waited.stderr
    assert _silences(db) == 1  # only the one that got its turn wrote
    results(
        "store busy beyond the wait",
        "`alerts silence` while another writer holds the store",
        2,
        "the short wait: one `busy for 0.5 s` line naming the holder, nothing written; the long wait: written",
    )


def test_the_write_lock_waits_in_another_thread_and_names_its_holder(two_hours):
    db, _ = two_hours
    errors = []
    with store_lock.write_lock(db):
        with store_lock.write_lock(db):  # re-entrant in the holding thread
            pass

        def other():
            try:
                with store_lock.write_lock(db, wait=0.2):
                    pass
            except StoreBusyError as exc:
                errors.append(str(exc))

        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert len(errors) == 1 and f"pid {os.getpid()}" in errors[0]


def test_a_store_from_an_older_cachemon_is_one_line_until_a_write_migrates_it(two_hours):
    """After an upgrade, a reader of the old schema's snapshot got a catalog
    error (a traceback) from the first query on a new table. It says what
    happened and what to do, and the next write migrates the store."""
    import duckdb

    db, _ = two_hours
    with store_db.reader(db) as con:
        truth = con.execute("SELECT sum(requests) FROM rollup_minute").fetchall()[0][0]
    # What the previous cachemon left: the store without the last migration
    # (its tables dropped; a later migration of another kind must teach this).
    last = schema.MIGRATIONS[schema.SCHEMA_VERSION]
    tables = [re.match(r"\s*CREATE TABLE (\w+)", sql) for sql in last]
    assert all(tables), "undo the last migration here: it is not only CREATE TABLE"
    con = duckdb.connect(str(db))
    for t in tables:
        con.execute(f"DROP TABLE {t[1]}")
    con.execute("DELETE FROM schema_version WHERE version = ?", [schema.SCHEMA_VERSION])
    con.close()
    older = snapshots.version_path(db, 7)
    shutil.copyfile(db, older)
    snapshots.snapshot_path(db).unlink()
    snapshots.snapshot_path(db).symlink_to(older.name)
    with pytest.raises(StoreError, match="older than this cachemon.*cachemon compact"):
        with store_db.reader(db):
            pass
    p = _cli(db, "metrics", "--at", "2026-11-19T09:00:00Z")
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith("cachemon: error: ") and "older than this cachemon" in p.stderr
    p = _cli(db, "compact")  # a write: migrates and publishes
    assert p.returncode == 0, p.stderr
    with store_db.reader(db) as con:
        assert schema.schema_version(con) == schema.SCHEMA_VERSION
        assert con.execute("SELECT sum(requests) FROM rollup_minute").fetchall()[0][0] == truth
    p = _cli(db, "metrics", "--at", "2026-11-19T09:00:00Z")
    assert p.returncode == 0, p.stderr


def test_a_store_from_a_newer_cachemon_is_one_line_on_every_read_path(two_hours, results):
    import duckdb
    from streamlit.testing.v1 import AppTest

    db, _ = two_hours
    con = duckdb.connect(
        str(db)
    )  # what a newer cachemon leaves: its store, published as its next version
    con.execute("INSERT INTO schema_version VALUES (?, ?)", [schema.SCHEMA_VERSION + 1, T0])
    con.close()
    newer = snapshots.version_path(db, 7)
    shutil.copyfile(db, newer)
    snapshots.snapshot_path(db).unlink()
    snapshots.snapshot_path(db).symlink_to(newer.name)
    before = db.read_bytes()
    with pytest.raises(StoreError, match="newer than this cachemon"):
        with store_db.reader(db):
            pass
    with pytest.raises(StoreError, match="newer than this cachemon"):
        with store_db.shared_reader(db):
            pass
    for args in (
        ["metrics", "--at", "2026-11-19T10:00:00Z"],
        ["alerts", "check"],
        ["alerts", "silences"],
        ["alerts", "silence", "p99_latency", "--for", "1h", "--reason", "deploy"],
    ):
        p = _cli(db, *args)
        assert p.returncode == 2 and "Traceback" not in p.stderr, (args, p.stderr)
        assert (
            p.stderr.startswith("cachemon: error: ") and "newer than this cachemon" in p.stderr
        ), (args, p.stderr)
    assert db.read_bytes() == before  # nothing stored changed
    os.environ["CACHEMON_DB"], old = str(db), os.environ.get("CACHEMON_DB")
    try:
        for page in (
            "overview",
            "keys",
            "trends",
            "costs",
            "alerts",
            "jobs",
            "experiments",
            "ttl",
        ):
            at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
            at.switch_page(f"pages/{page}.py")
            at.run()
            assert not at.exception, (page, at.exception)
            if page != "experiments":  # with no experiment configured it reads nothing
                assert any("newer than this cachemon" in e.value for e in at.error), page
    finally:
        if old is None:
            os.environ.pop("CACHEMON_DB")
        else:
            os.environ["CACHEMON_DB"] = old
    results(
        "store from a newer cachemon",
        "schema_version 9 published",
        4 + 8,
        "4 CLI commands: one line, exit 2, nothing changed; 8 dashboard pages: a message, no traceback",
    )
