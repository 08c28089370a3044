"""Published read-only snapshots: versions, the pointer, publishing, opening.

After each write a writer publishes a copy of the closed (checkpointed)
file, verified to be a whole cachemon store, renamed to a new version
`<stem>.snapshot.<N>.duckdb`; then the symlink `<stem>.snapshot.duckdb` is
atomically pointed at it and versions older than the last SNAPSHOT_KEEP
are deleted. A reader that holds an old version keeps reading its
(unlinked) inode undisturbed.

Readers resolve the symlink and open the version file it names read-only.
Every version has its own path, so a long-lived process gets a new
database for each publish: DuckDB's in-process instance cache hands back
the already-open database for a path it has open, which made a reader that
reopened one fixed name keep showing the first snapshot. Version files
never change once published, so an open never races a rename; one that
races a prune resolves again.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import duckdb

from cachemon.errors import EmptyStoreError, StoreError
from cachemon.store.connection import connect, disk_error, first_line, first_row, raise_open_error
from cachemon.store.lock import write_lock
from cachemon.store.schema import SCHEMA_VERSION, check_readable, schema_version

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
        raise disk_error(exc, snap) or StoreError(f"cannot read {snap}: {exc.strerror}") from None


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


def reader_path(path: str | os.PathLike) -> Path:
    """The store a reader given `path` reads: a snapshot pointer or version
    (the path the README gives analysts) reads its main store's current
    snapshot, so it follows every publish; any other path is itself."""
    p = Path(path)
    main = snapshot_main(p)
    return main if main is not None and current_snapshot(main) is not None else p


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
            raise disk_error(exc, snapshot_path(p), "the last good snapshot stays") or StoreError(
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
        if disk_error(exc, copy):
            raise disk_error(exc, snapshot_path(main), "the last good snapshot stays") from None
        raise StoreError(
            f"{refuse} is not a readable DuckDB database (truncated or corrupt): "
            f"{first_line(str(exc))}"
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
        raise StoreError(f"{refuse} cannot be read (corrupt): {first_line(str(exc))}") from None
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


def open_snapshot(p: Path) -> tuple[Path, duckdb.DuckDBPyConnection]:
    """Resolve the pointer and open the version it names, read-only; a
    version pruned in between is resolved again. A snapshot file without
    its store beside it (a copy) is opened as it is."""
    if snapshot_main(p) is not None and reader_path(p) == p and p.exists():
        con = connect(p, read_only=True)
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
                raise_open_error(snap, exc)
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


def _looks_like_duckdb(p: Path) -> bool:
    """DuckDB files carry the magic bytes 'DUCK' at offset 8."""
    try:
        with p.open("rb") as f:
            return f.read(12)[8:12] == b"DUCK"
    except OSError:  # a directory, or unreadable: not a store either way
        return False
