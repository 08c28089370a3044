"""The DuckDB store: schema, migrations, and the concurrency design.

DuckDB allows one read-write process or many read-only ones, never both; a
reader that keeps its connection open would lock the writer out. So:

* the job runner (or a CLI command that writes) is the only writer; it opens
  the main file, writes one transaction per job, checkpoints and closes;
* after each write it publishes a read-only snapshot: a copy of the closed
  file written beside it and renamed over `<name>.snapshot.duckdb`. The
  rename is atomic, and a reader that holds the old snapshot open keeps
  reading its (unlinked) inode undisturbed;
* readers (dashboard, `cachemon metrics`, analysts) open the snapshot
  read-only. The writer never opens the snapshot, so no reader can block it.

All connections use UTC as their session time zone.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import duckdb

from . import analyst
from .errors import EmptyStoreError, StoreError

SCHEMA_VERSION = 8

_ROLLUP_COLUMNS = """
    source VARCHAR NOT NULL, {time} TIMESTAMPTZ NOT NULL,
    tier VARCHAR NOT NULL, endpoint VARCHAR NOT NULL,
    experiment VARCHAR NOT NULL, cohort VARCHAR NOT NULL,
    requests DOUBLE NOT NULL, errors DOUBLE NOT NULL, bytes DOUBLE NOT NULL,
    latency_sum DOUBLE NOT NULL, latency_min DOUBLE NOT NULL, latency_max DOUBLE NOT NULL,
    events BIGINT NOT NULL
"""
_LATENCY_COLUMNS = """
    source VARCHAR NOT NULL, {time} TIMESTAMPTZ NOT NULL,
    tier VARCHAR NOT NULL, endpoint VARCHAR NOT NULL,
    experiment VARCHAR NOT NULL, cohort VARCHAR NOT NULL,
    bucket INTEGER NOT NULL, weight DOUBLE NOT NULL
"""
_GAUGE_COLUMNS = """
    source VARCHAR NOT NULL, {time} TIMESTAMPTZ NOT NULL, name VARCHAR NOT NULL,
    value_sum DOUBLE NOT NULL, samples BIGINT NOT NULL,
    value_min DOUBLE NOT NULL, value_max DOUBLE NOT NULL, value_last DOUBLE NOT NULL
"""
_KEY_COLUMNS = """
    source VARCHAR NOT NULL, {time} TIMESTAMPTZ NOT NULL, key_id INTEGER NOT NULL,
    edge DOUBLE NOT NULL, kv DOUBLE NOT NULL, r2 DOUBLE NOT NULL, api DOUBLE NOT NULL,
    errors DOUBLE NOT NULL, first_seen TIMESTAMPTZ NOT NULL, last_seen TIMESTAMPTZ NOT NULL
"""

# Each migration is a list of statements, applied in one transaction.
MIGRATIONS: dict[int, list[str]] = {
    1: [
        f"CREATE TABLE rollup_minute ({_ROLLUP_COLUMNS.format(time='minute')})",
        f"CREATE TABLE rollup_hour ({_ROLLUP_COLUMNS.format(time='hour')})",
        f"CREATE TABLE latency_minute ({_LATENCY_COLUMNS.format(time='minute')})",
        f"CREATE TABLE latency_hour ({_LATENCY_COLUMNS.format(time='hour')})",
        f"CREATE TABLE gauge_minute ({_GAUGE_COLUMNS.format(time='minute')})",
        "CREATE SEQUENCE key_ids START 1",
        """CREATE TABLE cache_keys (
            key_id INTEGER PRIMARY KEY, key VARCHAR NOT NULL, endpoint VARCHAR NOT NULL)""",
        f"CREATE TABLE key_hour ({_KEY_COLUMNS.format(time='hour')})",
        f"CREATE TABLE key_minute ({_KEY_COLUMNS.format(time='minute')})",
        f"CREATE TABLE key_day ({_KEY_COLUMNS.format(time='day')})",
        """CREATE TABLE key_top (
            part VARCHAR NOT NULL, t TIMESTAMPTZ NOT NULL, key_id INTEGER NOT NULL,
            edge DOUBLE NOT NULL, kv DOUBLE NOT NULL, r2 DOUBLE NOT NULL, api DOUBLE NOT NULL,
            errors DOUBLE NOT NULL, requests DOUBLE NOT NULL)""",
        """CREATE TABLE key_top_cutoff (part VARCHAR NOT NULL, t TIMESTAMPTZ NOT NULL, cutoff DOUBLE NOT NULL)""",
        """CREATE TABLE watermarks (
            source VARCHAR PRIMARY KEY, until TIMESTAMPTZ NOT NULL, updated_at TIMESTAMPTZ NOT NULL)""",
        """CREATE TABLE imports (
            sha256 VARCHAR PRIMARY KEY, source VARCHAR NOT NULL, file VARCHAR NOT NULL,
            events BIGINT NOT NULL, first_event TIMESTAMPTZ, last_event TIMESTAMPTZ,
            imported_at TIMESTAMPTZ NOT NULL)""",
        """CREATE TABLE source_state (
            source VARCHAR PRIMARY KEY, state BLOB NOT NULL, clock TIMESTAMPTZ NOT NULL)""",
    ],
}


MIGRATIONS[2] = [
    """CREATE TABLE job_runs (
        job VARCHAR NOT NULL, started_at TIMESTAMPTZ NOT NULL, finished_at TIMESTAMPTZ NOT NULL,
        outcome VARCHAR NOT NULL, error VARCHAR, slots INTEGER NOT NULL, rows BIGINT)""",
]


# Alerts: instance states, their history, evaluations, dedup groups, the
# notification outbox with every delivery attempt, and silences.
MIGRATIONS[3] = [
    """CREATE TABLE alert_state (
        rule VARCHAR NOT NULL, endpoint VARCHAR NOT NULL, type VARCHAR NOT NULL, severity VARCHAR NOT NULL,
        state VARCHAR NOT NULL, since TIMESTAMPTZ NOT NULL, evaluated_at TIMESTAMPTZ NOT NULL,
        value DOUBLE, threshold DOUBLE, message VARCHAR NOT NULL, pending_since TIMESTAMPTZ,
        firing_since TIMESTAMPTZ, last_breach TIMESTAMPTZ, clear_since TIMESTAMPTZ)""",
    """CREATE TABLE alert_history (
        changed_at TIMESTAMPTZ NOT NULL, rule VARCHAR NOT NULL, endpoint VARCHAR NOT NULL, type VARCHAR NOT NULL,
        severity VARCHAR NOT NULL, from_state VARCHAR NOT NULL, to_state VARCHAR NOT NULL,
        value DOUBLE, threshold DOUBLE, message VARCHAR NOT NULL, firing_since TIMESTAMPTZ)""",
    """CREATE TABLE alert_evaluations (
        evaluated_at TIMESTAMPTZ NOT NULL, data_until TIMESTAMPTZ, instances INTEGER NOT NULL, firing INTEGER NOT NULL,
        notifications INTEGER NOT NULL, backfill BOOLEAN NOT NULL)""",
    "CREATE TABLE notify_groups (channel VARCHAR PRIMARY KEY, members VARCHAR NOT NULL, sent_at TIMESTAMPTZ)",
    "CREATE SEQUENCE notification_ids START 1",
    """CREATE TABLE notifications (
        id BIGINT NOT NULL, created_at TIMESTAMPTZ NOT NULL, channel VARCHAR NOT NULL, kind VARCHAR NOT NULL,
        subject VARCHAR NOT NULL, members VARCHAR NOT NULL, payload VARCHAR NOT NULL, status VARCHAR NOT NULL,
        attempts INTEGER NOT NULL, next_attempt_at TIMESTAMPTZ NOT NULL, last_error VARCHAR,
        sent_at TIMESTAMPTZ)""",
    """CREATE TABLE deliveries (
        notification_id BIGINT NOT NULL, attempted_at TIMESTAMPTZ NOT NULL, ok BOOLEAN NOT NULL,
        detail VARCHAR NOT NULL)""",
    "CREATE SEQUENCE silence_ids START 1",
    """CREATE TABLE silences (
        id BIGINT NOT NULL, matcher VARCHAR NOT NULL, endpoint VARCHAR NOT NULL, starts_at TIMESTAMPTZ NOT NULL,
        ends_at TIMESTAMPTZ NOT NULL, reason VARCHAR NOT NULL, created_at TIMESTAMPTZ NOT NULL,
        created_by VARCHAR NOT NULL, expired_at TIMESTAMPTZ)""",
]


# Daily cost reports, one per UTC day (re-running a day replaces it).
MIGRATIONS[4] = [
    """CREATE TABLE cost_reports (
        day DATE PRIMARY KEY, created_at TIMESTAMPTZ NOT NULL, payload VARCHAR NOT NULL, sent BOOLEAN NOT NULL)""",
]


# The experiment cohort each key was served under, as the events say.
MIGRATIONS[5] = [
    "CREATE TABLE key_cohorts (key_id INTEGER NOT NULL, experiment VARCHAR NOT NULL, cohort VARCHAR NOT NULL)",
]


# Every analysis of every experiment (the history of its decisions).
MIGRATIONS[6] = [
    """CREATE TABLE experiment_results (
        experiment VARCHAR NOT NULL, analyzed_at TIMESTAMPTZ NOT NULL, decision VARCHAR NOT NULL,
        payload VARCHAR NOT NULL)""",
]


# TTL promotions and rollbacks written to Workers KV.
MIGRATIONS[7] = [
    """CREATE TABLE promotions (
        done_at TIMESTAMPTZ NOT NULL, action VARCHAR NOT NULL, experiment VARCHAR NOT NULL,
        old_config VARCHAR, new_config VARCHAR, detail VARCHAR NOT NULL)""",
]


# Retention: coarser tables that receive what retention compacts (rollup_hour
# and key_day are kept up to date by every write; these only by retention),
# the horizons before which finer rows are gone, and the analysts' views.
MIGRATIONS[8] = [
    f"CREATE TABLE rollup_day ({_ROLLUP_COLUMNS.format(time='day')})",
    f"CREATE TABLE latency_day ({_LATENCY_COLUMNS.format(time='day')})",
    f"CREATE TABLE gauge_hour ({_GAUGE_COLUMNS.format(time='hour')})",
    "CREATE TABLE retention_state (name VARCHAR PRIMARY KEY, horizon TIMESTAMPTZ NOT NULL)",
    *analyst.VIEWS,
]


def snapshot_path(path: str | os.PathLike) -> Path:
    """Where readers find the published snapshot of the store at `path`."""
    p = Path(path)
    return p.with_name(p.stem + ".snapshot" + (p.suffix or ".duckdb"))


# DuckDB reads the path more than once while opening it, so an open that
# races a publish can see parts of two snapshots and fail (about 1 in 400
# opens with a publish every few milliseconds). Each file is whole, so
# opening again is right.
SNAPSHOT_OPEN_ATTEMPTS = 4


def _connect(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    for attempt in range(1, SNAPSHOT_OPEN_ATTEMPTS + 1):
        try:
            return _connect_once(path, read_only)
        except duckdb.Error as exc:
            if not read_only or "lock" in str(exc).lower() or attempt == SNAPSHOT_OPEN_ATTEMPTS:
                _raise_open_error(path, exc)
            time.sleep(0.05 * attempt)


def _connect_once(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(path), read_only=read_only)
    con.execute("SET TimeZone = 'UTC'")
    return con


def _raise_open_error(path: Path, exc: duckdb.Error):
    text = str(exc)
    if not isinstance(exc, duckdb.IOException):
        raise StoreError(f"cannot open store {path}: {_first_line(text)}") from None
    if "lock" in text.lower():
        raise StoreError(f"store {path} is locked by another process: {_first_line(text)}") from None
    raise StoreError(f"{path} is not a readable DuckDB database (corrupt or another format): {_first_line(text)}") from None


def first_row(con: duckdb.DuckDBPyConnection, sql: str, params=None) -> tuple | None:
    """The first row of a query, or None. Fetches the whole (small) result:
    DuckDB 2 keeps a partly fetched result open and refuses further work on
    the connection until it is drained."""
    rows = con.execute(sql, params or []).fetchall()
    return rows[0] if rows else None


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def schema_version(con: duckdb.DuckDBPyConnection) -> int:
    """The schema version of an open store (0 for a new, empty file)."""
    has = first_row(con, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'")[0]
    if not has:
        return 0
    return first_row(con, "SELECT coalesce(max(version), 0) FROM schema_version")[0]


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """BEGIN, then COMMIT, or ROLLBACK if the block raises (and re-raise)."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def migrate(con: duckdb.DuckDBPyConnection, now: datetime) -> int:
    """Bring the schema up to SCHEMA_VERSION; returns the version found."""
    found = schema_version(con)
    if found > SCHEMA_VERSION:
        raise StoreError(f"store schema version {found} is newer than this cachemon ({SCHEMA_VERSION}); upgrade cachemon")
    if found == 0:
        tables = first_row(con, "SELECT count(*) FROM information_schema.tables")[0]
        if tables:
            raise StoreError("database has tables but no cachemon schema_version: not a cachemon store")
    with transaction(con):
        con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)")
        for version in range(found + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[version]:
                con.execute(statement)
            con.execute("INSERT INTO schema_version VALUES (?, ?)", [version, now])
    return found


@contextmanager
def writer(path: str | os.PathLike, now: datetime | None = None, publish: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
    """The single writer's connection: creates and migrates the store, and on
    exit checkpoints, closes and publishes the reader snapshot. It publishes
    after a failure too: what was committed before it is good data, and the
    failed transaction was rolled back."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    con = _connect(p, read_only=False)
    opened = False
    try:
        migrate(con, now or datetime.now(timezone.utc))
        opened = True
        yield con
    finally:
        try:
            if opened:
                con.execute("CHECKPOINT")
        finally:
            con.close()
            if publish and opened:
                publish_snapshot(p)


def publish_open(con: duckdb.DuckDBPyConnection, path: str | os.PathLike) -> Path:
    """Publish a snapshot while the writer keeps its connection: after a
    checkpoint the file is whole, and nothing writes until we do."""
    con.execute("CHECKPOINT")
    return publish_snapshot(path)


def publish_snapshot(path: str | os.PathLike) -> Path:
    """Copy the closed store to a temporary file and rename it over the
    snapshot, so readers see either the old or the new snapshot, whole."""
    p = Path(path)
    snap = snapshot_path(p)
    tmp = snap.with_name(f".{snap.name}.{os.getpid()}.tmp")
    shutil.copyfile(p, tmp)
    os.replace(tmp, snap)
    return snap


_SHARED: dict[Path, tuple[int, duckdb.DuckDBPyConnection]] = {}
_SHARED_LOCK = threading.Lock()


@contextmanager
def shared_reader(path: str | os.PathLike) -> Iterator[duckdb.DuckDBPyConnection]:
    """Like `reader`, for long-running readers (the API server): one
    read-only connection per published snapshot is kept open and reused
    (a cursor per use, so threads are safe), and replaced when the writer
    publishes a new snapshot. Holding it never blocks the writer, which
    never opens the snapshot; an old one is closed once no cursor uses it."""
    p = Path(path)
    snap = snapshot_path(p)
    try:
        inode = snap.stat().st_ino
    except FileNotFoundError:
        with reader(p) as con:  # raises the right "no store" / "not yet" message
            yield con
        return
    with _SHARED_LOCK:
        cached = _SHARED.get(p)
        if cached is None or cached[0] != inode:
            con = _connect(snap, read_only=True)
            if schema_version(con) == 0:
                con.close()
                raise StoreError(f"{snap} is not a cachemon store (no schema_version table)")
            _SHARED[p] = (inode, con)
        cur = _SHARED[p][1].cursor()
    try:
        cur.execute("SET TimeZone = 'UTC'")
        yield cur
    finally:
        cur.close()


def _looks_like_duckdb(p: Path) -> bool:
    """DuckDB files carry the magic bytes 'DUCK' at offset 8."""
    try:
        with p.open("rb") as f:
            return f.read(12)[8:12] == b"DUCK"
    except OSError:  # a directory, or unreadable: not a store either way
        return False


@contextmanager
def reader(path: str | os.PathLike) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection to the published snapshot, for one render or
    command. Readers never open the main file: a reader there, however
    brief, would lock the writer out."""
    p = Path(path)
    snap = snapshot_path(p)
    if not snap.exists():
        if p.exists() and not _looks_like_duckdb(p):
            raise StoreError(f"{p} is not a readable DuckDB database (corrupt or another format)")
        if p.exists():
            raise EmptyStoreError(
                f"store {p} has no published snapshot yet: a writer is filling it for the first time "
                "(or stopped before publishing); try again shortly"
            )
        raise EmptyStoreError(f"no store at {p}: run `python -m cachemon demo` or `python -m cachemon import FILE` first")
    con = _connect(snap, read_only=True)
    try:
        if schema_version(con) == 0:
            raise StoreError(f"{snap} is not a cachemon store (no schema_version table)")
        yield con
    finally:
        con.close()
