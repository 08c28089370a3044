"""The DuckDB store: schema, migrations, and the concurrency design.

DuckDB allows one read-write process or many read-only ones, never both; a
reader that keeps its connection open would lock the writer out. So:

* writers (the job runner per job, a CLI command that writes, the
  dashboard's Silence form) take turns: each takes an advisory lock on
  `<store>.write.lock` before DuckDB opens the file, waiting a bounded time
  (`CACHEMON_WRITE_WAIT_SECONDS`, default 60) and then failing with "store
  busy ... held by <who>", never with DuckDB's lock error;
* after each write a writer publishes a read-only snapshot: a copy of the
  closed (checkpointed) file, verified to be a whole cachemon store, renamed
  to a new version `<stem>.snapshot.<N>.duckdb`; then the symlink
  `<stem>.snapshot.duckdb` is atomically pointed at it and versions older
  than the last SNAPSHOT_KEEP are deleted. A reader that holds an old
  version keeps reading its (unlinked) inode undisturbed;
* readers (dashboard, API, CLI, analysts) resolve the symlink and open the
  version file it names read-only. Every version has its own path, so a
  long-lived process gets a new database for each publish: DuckDB's
  in-process instance cache hands back the already-open database for a path
  it has open, which made a reader that reopened one fixed name keep showing
  the first snapshot. Version files never change once published, so an open
  never races a rename; one that races a prune resolves again.

All connections use UTC as their session time zone.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import math
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from cachemon.errors import (
    CachemonError,
    EmptyStoreError,
    StoreBusyError,
    StoreDiskError,
    StoreError,
    StoreUnpublishedError,
)
from cachemon.store import views as analyst

log = logging.getLogger("cachemon.store")

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


# How many published versions stay on disk: a reader resolves the pointer
# and then opens the version, so a version must outlive a few publishes.
SNAPSHOT_KEEP = 3
# A reader that finds its version pruned between resolving and opening it
# resolves again; this many times in a row means something else is wrong.
SNAPSHOT_RESOLVE_ATTEMPTS = 5
# DuckDB's file layout: three 4 KiB headers, then `total_blocks` blocks.
_DUCKDB_HEADERS = 3 * 4096
# The file may end before `total_blocks` (free blocks at its end are cut off), so what
# must be in it is every used block: at least `used_blocks`, and the highest data block.
DATABASE_SIZE = "SELECT block_size, used_blocks FROM pragma_database_size() WHERE database_name = current_database()"
TABLES = "SELECT schema_name, table_name FROM duckdb_tables()"
MAX_BLOCK = "SELECT coalesce(max(block_id), -1) FROM pragma_storage_info($t)"
DEFAULT_WRITE_WAIT_S = 60.0
# An hour: a writer that waits longer is stuck, not patient.
MAX_WRITE_WAIT_S = 3600.0
# Errors of the disk rather than of cachemon: said as themselves, retried by the runner.
_DISK_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EROFS: "read-only file system",
    errno.EDQUOT: "disk quota exceeded",
    errno.EIO: "I/O error",
}
_DISK_TEXTS = {
    "no space left on device": "no space left on device",
    "read-only file system": "read-only file system",
    "disk quota exceeded": "disk quota exceeded",
}


def snapshot_path(path: str | os.PathLike) -> Path:
    """The name readers open: a symlink to the newest published version
    (`<stem>.snapshot.duckdb` beside the store)."""
    p = Path(path)
    return p.with_name(p.stem + ".snapshot" + (p.suffix or ".duckdb"))


def version_path(path: str | os.PathLike, n: int) -> Path:
    """Where version `n` of the snapshot of the store at `path` lives."""
    p = Path(path)
    return p.with_name(f"{p.stem}.snapshot.{n}{p.suffix or '.duckdb'}")


def _version_of(path: Path, name: str) -> int | None:
    m = re.fullmatch(
        re.escape(path.stem) + r"\.snapshot\.(\d+)" + re.escape(path.suffix or ".duckdb"), name
    )
    return int(m.group(1)) if m else None


def versions(path: str | os.PathLike) -> list[tuple[int, Path]]:
    """The published versions on disk, oldest first."""
    p = Path(path)
    if not p.parent.is_dir():
        return []
    found = ((_version_of(p, f.name), f) for f in p.parent.iterdir())
    return sorted((n, f) for n, f in found if n is not None)


def current_snapshot(path: str | os.PathLike) -> Path | None:
    """The file readers open now: the version the pointer names, or the
    pointer itself when it is a plain file (a copy, or an older cachemon's
    snapshot); None when nothing is published."""
    snap = snapshot_path(path)
    try:
        return snap.parent / os.readlink(snap)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # a plain file, not a symlink
            return snap
        raise _disk_error(exc, snap) or StoreError(f"cannot read {snap}: {exc.strerror}") from None


def snapshot_version(path: str | os.PathLike) -> str:
    """An identity of the current snapshot that changes with every publish
    (for caches keyed on the data they read)."""
    snap = current_snapshot(reader_path(path))
    if snap is None:
        return ""
    try:
        st = snap.stat()
    except OSError:
        return str(snap)
    return f"{snap.name}:{st.st_ino}:{st.st_mtime_ns}"


def _disk_error(
    exc: BaseException,
    path: Path,
    tail: str = "nothing half-written was published (free space or fix the disk, then try again)",
) -> StoreDiskError | None:
    """The disk's error as one line, or None when `exc` is not one."""
    reason = _DISK_ERRNOS.get(getattr(exc, "errno", None))
    if reason is None and isinstance(exc, duckdb.Error):
        text = str(exc).lower()
        reason = next((r for t, r in _DISK_TEXTS.items() if t in text), None)
    if reason is None:
        cause = exc.__cause__ or exc.__context__
        return _disk_error(cause, path, tail) if cause is not None and cause is not exc else None
    return StoreDiskError(f"cannot write {path}: {reason}; {tail}")


def write_wait() -> float:
    """How long a writer waits for another writer (CACHEMON_WRITE_WAIT_SECONDS):
    a finite number of seconds from 0 to MAX_WRITE_WAIT_S, or one clear error
    (nan, a negative wait or inf would silently mean "never" or "forever")."""
    text = os.environ.get("CACHEMON_WRITE_WAIT_SECONDS", "")
    if not text.strip():
        return DEFAULT_WRITE_WAIT_S
    try:
        wait = float(text)
    except ValueError:
        wait = math.nan
    if not (math.isfinite(wait) and 0 <= wait <= MAX_WRITE_WAIT_S):
        raise StoreError(
            f"CACHEMON_WRITE_WAIT_SECONDS must be a number of seconds from 0 to "
            f"{MAX_WRITE_WAIT_S:g}, got {text!r}"
        )
    return wait


LOCK_SUFFIX = ".write.lock"


def lock_path(path: str | os.PathLike) -> Path:
    return Path(str(path) + LOCK_SUFFIX)


_HELD = threading.local()  # the lock files this thread holds (a writer may publish inside its turn)


def _who() -> str:
    argv = getattr(sys, "orig_argv", sys.argv)
    words = [Path(argv[0]).name, *argv[1:4]] if argv else ["python"]
    return f"pid {os.getpid()} ({' '.join(words)[:80]})"


@contextmanager
def write_lock(path: str | os.PathLike, wait: float | None = None) -> Iterator[None]:
    """This process's turn to write the store at `path`: an exclusive flock
    on `<store>.write.lock`, waited for at most `wait` seconds (default
    `write_wait()`), then StoreBusyError naming the holder. The kernel drops
    it when the holder dies, so a crash never leaves the store locked.
    Re-entrant within a thread."""
    lock = lock_path(path)
    held = getattr(_HELD, "paths", None)
    if held is None:
        held = _HELD.paths = set()
    if lock in held:
        yield
        return
    wait = write_wait() if wait is None else wait
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise _disk_error(exc, lock) or StoreError(
            f"cannot open the write lock {lock}: {exc.strerror}"
        ) from None
    try:
        _acquire(fd, lock, wait)
        held.add(lock)
        try:
            yield
        finally:
            held.discard(lock)
            _release_note(fd)
    finally:
        os.close(fd)  # releases the flock


def _acquire(fd: int, lock: Path, wait: float) -> None:
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise StoreBusyError(
                    f"store {lock.name[: -len('.write.lock')]} busy for {wait:g} s: another writer "
                    f"holds it ({_holder(fd)}); try again when it is done"
                ) from None
            time.sleep(0.02)
    try:  # who holds it, for the message of whoever waits (best effort: a full disk refuses it)
        os.ftruncate(fd, 0)
        os.pwrite(
            fd, f"{_who()} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}".encode(), 0
        )
    except OSError:
        pass


def _holder(fd: int) -> str:
    """Who holds the lock, as far as can be known: cachemon writers name
    themselves in the lock file and clear it when they let go, so a text is
    theirs only while its pid runs; anything else is an outside process."""
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    m = re.match(r"pid (\d+) ", text)
    if m and _running(int(m.group(1))):
        return text
    if m:
        return (
            f"not a cachemon writer: the lock file still names {text}, which is no longer running; "
            f"look for another program holding {LOCK_SUFFIX}, e.g. with `fuser`"
        )
    return (
        f"a process that is not a cachemon writer; find it with `fuser` on the {LOCK_SUFFIX} file"
    )


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, under another user
    return True


def _release_note(fd: int) -> None:
    """Clear our name from the lock file while still holding it, so no
    later holder is reported as us."""
    try:
        os.ftruncate(fd, 0)
    except OSError:
        pass


def _connect(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    try:
        con = duckdb.connect(str(path), read_only=read_only)
    except duckdb.Error as exc:
        _raise_open_error(path, exc)
    con.execute("SET TimeZone = 'UTC'")
    return con


def _raise_open_error(path: Path, exc: duckdb.Error):
    text = str(exc)
    disk = _disk_error(exc, path)
    if disk:
        raise disk from None
    if not isinstance(exc, duckdb.IOException):
        raise StoreError(f"cannot open store {path}: {_first_line(text)}") from None
    if "lock" in text.lower():
        raise StoreBusyError(
            f"store {path} is locked by another process: {_first_line(text)}"
        ) from None
    raise StoreError(
        f"{path} is not a readable DuckDB database (corrupt or another format): {_first_line(text)}"
    ) from None


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
    has = first_row(
        con, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'"
    )[0]
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
        raise StoreError(
            f"store schema version {found} is newer than this cachemon ({SCHEMA_VERSION}); upgrade cachemon"
        )
    if found == 0:
        tables = first_row(con, "SELECT count(*) FROM information_schema.tables")[0]
        if tables:
            raise StoreError(
                "database has tables but no cachemon schema_version: not a cachemon store"
            )
    with transaction(con):
        con.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)"
        )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[version]:
                con.execute(statement)
            con.execute("INSERT INTO schema_version VALUES (?, ?)", [version, now])
    return found


_SNAPSHOT_NAME = re.compile(r"(?P<stem>.+)\.snapshot(?:\.\d+)?(?P<suffix>\.[^.]+)")


def snapshot_main(path: str | os.PathLike) -> Path | None:
    """The main store a snapshot pointer or version belongs to, when `path`
    is one (by its name, or by the name a symlink at `path` points to);
    None for any other path."""
    p = Path(path)
    candidates = [p]
    if p.is_symlink():
        candidates.append(Path(os.path.realpath(p)))
    for c in candidates:
        m = _SNAPSHOT_NAME.fullmatch(c.name)
        if m:
            return c.with_name(m["stem"] + m["suffix"])
    return None


def check_writer_path(path: str | os.PathLike, create: bool) -> Path:
    """The store path a writer may open, or one clear StoreError: never a
    published snapshot (versions must never change, and a write there is
    lost to the runner), never an empty path, and, for commands that only
    change a store (`create` False), never a store that does not exist: a
    typo would make a new store the runner never sees."""
    if not str(path).strip():
        raise StoreError("the store path is empty (--db or CACHEMON_DB): name the store file")
    p = Path(path)
    main = snapshot_main(p)
    if main is not None:
        raise StoreError(
            f"{p} is a published read-only snapshot, not the store: writing it would change what "
            f"readers see and be lost; use the main store {main} instead"
        )
    if not create and not p.exists():
        raise EmptyStoreError(
            f"no store at {p}: this command changes an existing store and never creates one "
            "(check --db or CACHEMON_DB; `demo`, `import`, `pull` or the job runner create one)"
        )
    return p


@contextmanager
def writer(
    path: str | os.PathLike,
    now: datetime | None = None,
    publish: bool = True,
    wait: float | None = None,
    create: bool = True,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """The writer's connection, in this process's turn (`write_lock`):
    migrates the store (creates it only when `create`: the commands that
    fill a store), and on exit checkpoints, closes and publishes the reader
    snapshot. It publishes after a failure too: what was committed before
    it is good data, and the failed transaction was rolled back. A failure
    while closing never hides the body's own error; a publish that fails
    after a good write is StoreUnpublishedError (the write is kept)."""
    p = check_writer_path(path, create)
    if create:
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _disk_error(exc, p.parent) or StoreError(
                f"cannot create {p.parent}: {exc.strerror}"
            ) from None
    with write_lock(p, wait):
        con = _connect(p, read_only=False)
        opened, failed = False, False
        try:
            migrate(con, now or datetime.now(UTC))
            opened = True
            yield con
        except BaseException as exc:
            failed = True
            disk = _disk_error(exc, p)
            if disk:
                raise disk from None
            raise
        finally:
            _close(con, p, opened, publish and opened, quiet=failed)


def _close(con, p: Path, checkpoint: bool, publish: bool, quiet: bool) -> None:
    """Checkpoint, close, publish. `quiet` (the body failed): a failure
    here is logged, so the body's error is the one raised."""
    try:
        try:
            if checkpoint:
                con.execute("CHECKPOINT")
        finally:
            con.close()
    except Exception as exc:
        if not quiet:
            # exc itself, or its one-line translation (whose context is exc already)
            raise exc if isinstance(exc, CachemonError) else (_disk_error(exc, p) or exc)  # noqa: B904
        # INFO: the runner's log shows it; a CLI shows only the body's error.
        log.info("after a failed write, closing %s failed too: %s", p.name, _first_line(str(exc)))
        return
    if publish:
        _publish_after_write(p, quiet)


def _publish_after_write(p: Path, quiet: bool = False) -> None:
    """Publish after a committed write. A failure must not read as "nothing
    was done": the write is stored, only readers lag behind."""
    try:
        publish_snapshot(p)
    except CachemonError as exc:
        if quiet:
            log.info(
                "after a failed write, publishing %s failed too: %s", p.name, _first_line(str(exc))
            )
            return
        raise StoreUnpublishedError(
            f"the change was STORED in {p}, but the readers' snapshot is not yet published ({exc}); "
            "readers show the previous data until a publish succeeds (the job runner's next run, or any "
            "later write, publishes it): do not repeat the command"
        ) from None


@contextmanager
def rebuilt(path: str | os.PathLike, now: datetime | None = None) -> Iterator[Path]:
    """Build a replacement of the store at `path` aside and swap it in only
    when the block completes: yields the path of a copy of the store to
    write; on success the copy atomically replaces the store and is
    published, on any failure (or a kill) the store is as it was. The write
    turn is held throughout, so no other write is lost in the swap, and no
    connection is open on the file the rename replaces. A copy left by a
    killed build is removed by the next."""
    p = Path(path)
    aside = p.with_name(f".{p.name}.rebuild.tmp")
    with write_lock(p):
        try:
            _remove_store_files(aside)
            with writer(p, now, publish=False):
                pass  # creates or migrates the store; closing checkpoints it whole
            shutil.copyfile(p, aside)
            yield aside
            os.replace(aside, p)
        except OSError as exc:
            raise _disk_error(exc, p) or StoreError(
                f"cannot rebuild {p}: {exc.strerror or exc}"
            ) from None
        finally:
            try:
                _remove_store_files(aside)
            except OSError:
                pass  # a read-only or failing disk: the next build removes it
        _publish_after_write(p)


def _remove_store_files(path: Path) -> None:
    for f in (path, path.with_name(path.name + ".wal"), lock_path(path)):
        f.unlink(missing_ok=True)


def publish_open(con: duckdb.DuckDBPyConnection, path: str | os.PathLike) -> Path:
    """Publish a snapshot while the writer keeps its connection: after a
    checkpoint the file is whole, and nothing writes until we do."""
    con.execute("CHECKPOINT")
    return publish_snapshot(path)


def publish_snapshot(
    path: str | os.PathLike,
    copy: Callable[[Path, Path], object] = shutil.copyfile,
    wait: float | None = None,
) -> Path:
    """Publish the closed store at `path` as a new snapshot version and
    point `<stem>.snapshot.duckdb` at it, in this process's write turn.
    The copy is verified to be a whole cachemon store first: a truncated or
    corrupt main file is refused (StoreError) and the last good snapshot
    stays. Temporary files never outlive a failure. `copy` is the copy
    function (a test injects a failing disk through it)."""
    p = Path(path)
    with write_lock(p, wait):
        _remove_leftovers(p)
        n = max([v for v, _ in versions(p)] + [_pointed_version(p)], default=0) + 1
        final = version_path(p, n)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        try:
            copy(p, tmp)
            _verify_whole(tmp, p)
            os.replace(tmp, final)
            _point(p, final)
        except OSError as exc:
            raise _disk_error(exc, snapshot_path(p), "the last good snapshot stays") or StoreError(
                f"cannot publish the snapshot of {p}: {exc.strerror or exc}"
            ) from None
        finally:
            tmp.unlink(missing_ok=True)
        _prune(p)
    return snapshot_path(p)


def _pointed_version(p: Path) -> int:
    snap = current_snapshot(p)
    return (_version_of(p, snap.name) or 0) if snap else 0


def _verify_whole(copy: Path, main: Path) -> None:
    """Refuse to publish what is not a whole cachemon store: DuckDB must
    open it, its blocks must all be in the file (a truncated copy opens and
    answers until a query reaches a missing block), and it must have a
    schema this cachemon reads."""
    refuse = f"not publishing {main.name}: the last good snapshot stays; {main.name}"
    try:
        con = duckdb.connect(str(copy), read_only=True)
    except duckdb.Error as exc:
        if _disk_error(exc, copy):
            raise _disk_error(exc, snapshot_path(main), "the last good snapshot stays") from None
        raise StoreError(
            f"{refuse} is not a readable DuckDB database (truncated or corrupt): "
            f"{_first_line(str(exc))}"
        ) from None
    try:
        block_size, used = first_row(con, DATABASE_SIZE)
        highest = max(
            [
                first_row(con, MAX_BLOCK, {"t": f'"{s}"."{t}"'})[0]
                for s, t in con.execute(TABLES).fetchall()
            ],
            default=-1,
        )
        version = schema_version(con)
    except duckdb.Error as exc:
        raise StoreError(f"{refuse} cannot be read (corrupt): {_first_line(str(exc))}") from None
    finally:
        con.close()
    size, need = copy.stat().st_size, _DUCKDB_HEADERS + max(used, highest + 1) * block_size
    if size < need:
        raise StoreError(f"{refuse} is truncated ({size} bytes, its blocks need {need})")
    if version == 0:
        raise StoreError(f"{refuse} is not a cachemon store (no schema_version table)")
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{refuse} has schema version {version}, newer than this cachemon ({SCHEMA_VERSION}); "
            "upgrade cachemon"
        )


def _point(p: Path, final: Path) -> None:
    """Atomically point the snapshot name at `final` (a relative symlink,
    so the directory can move)."""
    snap = snapshot_path(p)
    link = snap.with_name(f".{snap.name}.{os.getpid()}.link")
    link.unlink(missing_ok=True)
    os.symlink(final.name, link)
    try:
        os.replace(link, snap)
    finally:
        link.unlink(missing_ok=True)


def _prune(p: Path) -> None:
    """Delete versions older than the newest SNAPSHOT_KEEP (a reader that
    has one open keeps its inode)."""
    for _, f in versions(p)[:-SNAPSHOT_KEEP]:
        f.unlink(missing_ok=True)


def _remove_leftovers(p: Path) -> None:
    """Temporary files of a publisher that died mid-copy. Publishers take
    turns under the write lock, so none is in progress now."""
    snap = snapshot_path(p)
    for f in p.parent.glob(f".{p.stem}.snapshot*"):
        if f.name.endswith((".tmp", ".link")) and f != snap:
            f.unlink(missing_ok=True)


def reader_path(path: str | os.PathLike) -> Path:
    """The store a reader given `path` reads: a snapshot pointer or version
    (the path the README gives analysts) reads its main store's current
    snapshot, so it follows every publish; any other path is itself."""
    p = Path(path)
    main = snapshot_main(p)
    return main if main is not None and current_snapshot(main) is not None else p


def _open_snapshot(p: Path) -> tuple[Path, duckdb.DuckDBPyConnection]:
    """Resolve the pointer and open the version it names, read-only; a
    version pruned in between is resolved again. A snapshot file without
    its store beside it (a copy) is opened as it is."""
    if snapshot_main(p) is not None and reader_path(p) == p and p.exists():
        con = _connect(p, read_only=True)
        try:
            check_readable(con, p)
        except BaseException:
            con.close()
            raise
        return p, con
    p = reader_path(p)
    for _ in range(SNAPSHOT_RESOLVE_ATTEMPTS):
        snap = current_snapshot(p)
        if snap is None:
            _raise_missing(p)
        try:
            con = duckdb.connect(str(snap), read_only=True)
        except duckdb.Error as exc:
            if snap.exists():
                _raise_open_error(snap, exc)
            continue
        try:
            con.execute("SET TimeZone = 'UTC'")
            check_readable(con, snap)
        except BaseException:
            con.close()
            raise
        return snap, con
    raise StoreError(
        f"the published snapshot {snapshot_path(p)} names a file that is gone ({snap.name}); "
        "it is replaced by the next publish (run a writing command or the job runner)"
    )


def check_readable(con: duckdb.DuckDBPyConnection, snap: Path) -> None:
    """A snapshot this cachemon can read, or one clear StoreError."""
    try:
        version = schema_version(con)
    except duckdb.Error as exc:
        raise StoreError(f"{snap} cannot be read (corrupt): {_first_line(str(exc))}") from None
    if version == 0:
        raise StoreError(f"{snap} is not a cachemon store (no schema_version table)")
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"store {snap.name} has schema version {version}, newer than this cachemon "
            f"({SCHEMA_VERSION}); upgrade cachemon"
        )


def _raise_missing(p: Path):
    if p.exists() and not _looks_like_duckdb(p):
        raise StoreError(f"{p} is not a readable DuckDB database (corrupt or another format)")
    if p.exists():
        raise EmptyStoreError(
            f"store {p} has no published snapshot yet: a writer is filling it for the first time "
            "(or stopped before publishing); try again shortly"
        )
    raise EmptyStoreError(
        f"no store at {p}: run `python -m cachemon demo` or `python -m cachemon import FILE` first"
    )


_SHARED: dict[Path, tuple[tuple, duckdb.DuckDBPyConnection]] = {}
_SHARED_LOCK = threading.Lock()


@contextmanager
def shared_reader(path: str | os.PathLike) -> Iterator[duckdb.DuckDBPyConnection]:
    """Like `reader`, for long-running readers (the API server): one
    read-only connection per published version is kept open and reused (a
    cursor per use, so threads are safe), and replaced as soon as the
    pointer names a newer version. Holding it never blocks a writer, which
    never opens a snapshot; an old one is closed once no cursor uses it."""
    p = reader_path(path)
    with _SHARED_LOCK:
        cached = _SHARED.get(p)
        if cached is None or cached[0] != _identity(current_snapshot(p)):
            if cached is not None and cached[0][0] == current_snapshot(p):
                # The same name with new content (a plain-file snapshot
                # replaced): DuckDB would hand back the open database.
                _SHARED.pop(p)[1].close()
            snap, con = _open_snapshot(p)
            _SHARED[p] = (_identity(snap), con)
        cur = _SHARED[p][1].cursor()
    try:
        cur.execute("SET TimeZone = 'UTC'")
        yield cur
    finally:
        cur.close()


def _identity(snap: Path | None) -> tuple:
    if snap is None:
        return (None, None)
    try:
        return (snap, snap.stat().st_ino)
    except OSError:
        return (snap, None)


def _looks_like_duckdb(p: Path) -> bool:
    """DuckDB files carry the magic bytes 'DUCK' at offset 8."""
    try:
        with p.open("rb") as f:
            return f.read(12)[8:12] == b"DUCK"
    except OSError:  # a directory, or unreadable: not a store either way
        return False


@contextmanager
def reader(path: str | os.PathLike) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection to the current snapshot version, for one
    render or command. Readers never open the main file: a reader there,
    however brief, would lock the writer out."""
    _, con = _open_snapshot(Path(path))
    try:
        yield con
    finally:
        con.close()
