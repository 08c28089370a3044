"""The DuckDB store: the writer's and the readers' connections.

DuckDB allows one read-write process or many read-only ones, never both; a
reader that keeps its connection open would lock the writer out. So:

* writers (the job runner per job, a CLI command that writes, the
  dashboard's Silence form) take turns (`cachemon.store.lock`), migrate the
  schema (`cachemon.store.schema`), and after each write publish a
  read-only snapshot (`cachemon.store.snapshots`);
* readers (dashboard, API, CLI, analysts) open the current published
  snapshot version read-only, never the main file.

Connections, one-row queries and transactions: `cachemon.store.connection`.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import duckdb

from cachemon.errors import CachemonError, EmptyStoreError, StoreError, StoreUnpublishedError
from cachemon.store.connection import connect, disk_error, first_line
from cachemon.store.lock import lock_path, write_lock
from cachemon.store.schema import migrate
from cachemon.store.snapshots import (
    current_snapshot,
    open_snapshot,
    publish_snapshot,
    reader_path,
    snapshot_main,
)

log = logging.getLogger("cachemon.store")


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


# DuckDB's own memory for the one writer (its default is 80 % of RAM): a
# day of demo ingestion then peaks under 1 GiB; a write needing more spills
# to disk (`<store>.tmp`) rather than failing.
WRITER_MEMORY_LIMIT = "512MB"


@contextmanager
def writer(
    path: str | os.PathLike,
    now: datetime,
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
            raise disk_error(exc, p.parent) or StoreError(
                f"cannot create {p.parent}: {exc.strerror}"
            ) from None
    with write_lock(p, wait):
        con = connect(p, read_only=False)
        con.execute(f"SET memory_limit = '{WRITER_MEMORY_LIMIT}'")
        opened, failed = False, False
        try:
            migrate(con, now)
            opened = True
            yield con
        except BaseException as exc:
            failed = True
            disk = disk_error(exc, p)
            if disk:
                raise disk from None
            raise
        finally:
            _close(con, p, opened, publish and opened, quiet=failed)


def _close(
    con: duckdb.DuckDBPyConnection, p: Path, checkpoint: bool, publish: bool, quiet: bool
) -> None:
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
            # The error itself, or the disk's error in its place (chained to it on purpose).
            raise exc if isinstance(exc, CachemonError) else (disk_error(exc, p) or exc)  # noqa: B904
        # INFO: the runner's log shows it; a CLI shows only the body's error.
        log.info("after a failed write, closing %s failed too: %s", p.name, first_line(str(exc)))
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
                "after a failed write, publishing %s failed too: %s", p.name, first_line(str(exc))
            )
            return
        raise StoreUnpublishedError(
            f"the change was STORED in {p}, but the readers' snapshot is not yet published ({exc}); "
            "readers show the previous data until a publish succeeds (the job runner's next run, or any "
            "later write, publishes it): do not repeat the command"
        ) from None


@contextmanager
def rebuilt(path: str | os.PathLike, now: datetime) -> Iterator[Path]:
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
            raise disk_error(exc, p) or StoreError(
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
            snap, con = open_snapshot(p)
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


@contextmanager
def reader(path: str | os.PathLike) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection to the current snapshot version, for one
    render or command. Readers never open the main file: a reader there,
    however brief, would lock the writer out."""
    _, con = open_snapshot(Path(path))
    try:
        yield con
    finally:
        con.close()
