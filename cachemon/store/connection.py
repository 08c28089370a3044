"""Connections to a DuckDB file: opening one, one-row queries, transactions,
and the disk's own errors said as themselves.

The bottom of the store package: the schema, the write lock, the snapshots
and the writer all build on it. All connections use UTC as their session
time zone.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from cachemon.errors import StoreBusyError, StoreDiskError, StoreError

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


def connect(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    """A connection to the DuckDB file at `path` in UTC, or one clear StoreError."""
    try:
        con = duckdb.connect(str(path), read_only=read_only)
    except duckdb.Error as exc:
        raise_open_error(path, exc)
    con.execute("SET TimeZone = 'UTC'")
    return con


def raise_open_error(path: Path, exc: duckdb.Error):
    """Raise DuckDB's failure to open `path` as one line: the disk's error,
    a lock held by another process, or a file that is not a store."""
    text = str(exc)
    disk = disk_error(exc, path)
    if disk:
        raise disk from None
    if not isinstance(exc, duckdb.IOException):
        raise StoreError(f"cannot open store {path}: {first_line(text)}") from None
    if "lock" in text.lower():
        raise StoreBusyError(
            f"store {path} is locked by another process: {first_line(text)}"
        ) from None
    raise StoreError(
        f"{path} is not a readable DuckDB database (corrupt or another format): {first_line(text)}"
    ) from None


def disk_error(
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
        return disk_error(cause, path, tail) if cause is not None and cause is not exc else None
    return StoreDiskError(f"cannot write {path}: {reason}; {tail}")


def first_row(con: duckdb.DuckDBPyConnection, sql: str, params=None) -> tuple | None:
    """The first row of a query, or None. Fetches the whole (small) result:
    DuckDB 2 keeps a partly fetched result open and refuses further work on
    the connection until it is drained."""
    rows = con.execute(sql, params or []).fetchall()
    return rows[0] if rows else None


def first_line(text: str) -> str:
    """The first line of an error text (DuckDB's run on with hints)."""
    return text.strip().splitlines()[0] if text.strip() else text


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
