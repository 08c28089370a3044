"""The write lock: writers take turns on `<store>.write.lock`.

An advisory flock taken before DuckDB opens the file, waited for a bounded
time (`CACHEMON_WRITE_WAIT_SECONDS`, default 60) and then refused with
"store busy ... held by <who>", never with DuckDB's own lock error. The
kernel drops it when its holder dies, so a crash never leaves the store
locked.
"""

from __future__ import annotations

import fcntl
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from cachemon.errors import StoreBusyError, StoreError
from cachemon.store.connection import disk_error

DEFAULT_WRITE_WAIT_S = 60.0

# An hour: a writer that waits longer is stuck, not patient.
MAX_WRITE_WAIT_S = 3600.0


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
    """The lock file of the store at `path` (`<store>.write.lock`)."""
    return Path(str(path) + LOCK_SUFFIX)


_HELD = threading.local()  # the lock files this thread holds (a writer may publish inside its turn)


def _who() -> str:
    argv = getattr(sys, "orig_argv", sys.argv)
    words = [Path(argv[0]).name, *argv[1:4]] if argv else ["python"]
    return f"pid {os.getpid()} ({' '.join(words)[:80]})"


@contextmanager
def write_lock(
    path: str | os.PathLike,
    wait: float | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[None]:
    """This process's turn to write the store at `path`: an exclusive flock
    on `<store>.write.lock`, waited for at most `wait` seconds (default
    `write_wait()`), then StoreBusyError naming the holder. The kernel drops
    it when the holder dies, so a crash never leaves the store locked.
    Re-entrant within a thread. `monotonic` and `sleep` time the wait
    (parameters with real defaults, as prometheus_client's `handler=`)."""
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
        raise disk_error(exc, lock) or StoreError(
            f"cannot open the write lock {lock}: {exc.strerror}"
        ) from None
    try:
        _acquire(fd, lock, wait, monotonic, sleep)
        held.add(lock)
        try:
            yield
        finally:
            held.discard(lock)
            _release_note(fd)
    finally:
        os.close(fd)  # releases the flock


def _acquire(
    fd: int,
    lock: Path,
    wait: float,
    monotonic: Callable[[], float],
    sleep: Callable[[float], None],
) -> None:
    deadline = monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if monotonic() >= deadline:
                raise StoreBusyError(
                    f"store {lock.name[: -len('.write.lock')]} busy for {wait:g} s: another writer "
                    f"holds it ({_holder(fd)}); try again when it is done"
                ) from None
            sleep(0.02)
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
    if m and running(int(m.group(1))):
        return text
    if m:
        return (
            f"not a cachemon writer: the lock file still names {text}, which is no longer running; "
            f"look for another program holding {LOCK_SUFFIX}, e.g. with `fuser`"
        )
    return (
        f"a process that is not a cachemon writer; find it with `fuser` on the {LOCK_SUFFIX} file"
    )


def running(pid: int) -> bool:
    """Whether process `pid` exists (on this host; under any user)."""
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
