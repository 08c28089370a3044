"""The demo's progress file: how far a store being filled has come.

`cachemon demo` builds its store aside and swaps it in whole (`db.rebuilt`),
so until it ends a first store has no published data and readers can only
say "empty". While it runs it keeps `<db>.filling.json` next to the store:
{"started", "done_days", "total_days", "pid"}, rewritten atomically after
each simulated day and removed once the new store is published. A reader
(the dashboard) shows that progress instead of "the store is empty". A file
whose process is gone (a demo killed with SIGKILL) is stale: it reads as no
filling at all, and the next demo replaces it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from cachemon import jsontext
from cachemon.clock import iso, parse_instant, utcnow
from cachemon.errors import CachemonError, StoreError
from cachemon.store.connection import disk_error
from cachemon.store.lock import running

SUFFIX = ".filling.json"
MAX_BYTES = 4096  # the file is a few dozen bytes; more is not ours


@dataclass(frozen=True)
class Filling:
    """A demo filling a store: when it started, the simulated days done of
    the total, and the process doing it."""

    started: datetime
    done_days: float
    total_days: float
    pid: int

    @property
    def fraction(self) -> float:
        """The share of the simulated days done, 0 to 1."""
        return min(1.0, self.done_days / self.total_days)

    @property
    def traffic_done(self) -> bool:
        """Every day simulated: the demo is computing the alert, experiment
        and report history before it publishes."""
        return self.done_days >= self.total_days


def progress_path(db: str | os.PathLike) -> Path:
    """The progress file of the store at `db`: `<db>.filling.json` beside it."""
    p = Path(db)
    return p.with_name(p.name + SUFFIX)


def write(db: str | os.PathLike, f: Filling) -> None:
    """Write the progress file atomically (a reader never sees half of it)."""
    path = progress_path(db)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    body = {
        "started": iso(f.started),
        "done_days": f.done_days,
        "total_days": f.total_days,
        "pid": f.pid,
    }
    try:
        tmp.write_text(jsontext.dumps(body))
        os.replace(tmp, path)
    except OSError as exc:  # a full or read-only disk: one line, as the store's own writes say it
        err = disk_error(exc, path, "the store was not changed")
        if err is None:
            raise
        raise err from None
    finally:
        if (
            tmp.exists()
        ):  # left only when the write or rename failed (never made on a read-only disk)
            tmp.unlink()


def parse(text: str, what: str = "the progress file") -> Filling:
    """A progress file's text as a Filling; StoreError naming what is wrong."""
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise StoreError(f"{what} is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise StoreError(f"{what} is not a JSON object")
    for key in ("started", "done_days", "total_days", "pid"):
        if key not in body:
            raise StoreError(f"{what} has no {key!r}")
    done, total, pid = body["done_days"], body["total_days"], body["pid"]
    if not (isinstance(total, int | float) and math.isfinite(total) and total > 0):
        raise StoreError(f"{what}: total_days must be a positive number, got {total!r}")
    if not (isinstance(done, int | float) and math.isfinite(done) and 0 <= done <= total):
        raise StoreError(f"{what}: done_days must be from 0 to total_days, got {done!r}")
    if not (isinstance(pid, int) and not isinstance(pid, bool) and pid > 0):
        raise StoreError(f"{what}: pid must be a positive integer, got {pid!r}")
    if not isinstance(body["started"], str):
        raise StoreError(f"{what}: started must be an ISO 8601 instant")
    try:
        started = parse_instant(body["started"], f"{what}'s started")
    except CachemonError as exc:
        raise StoreError(str(exc)) from None
    return Filling(started, float(done), float(total), pid)


def read(db: str | os.PathLike) -> Filling | None:
    """The filling in progress for the store at `db`, or None: no progress
    file, or one whose process is gone (stale). StoreError when the file
    is there but not a progress file."""
    path = progress_path(db)
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_BYTES:
        raise StoreError(f"{path} is larger than {MAX_BYTES} bytes: not a progress file")
    f = parse(data.decode("utf-8", "replace"), str(path))
    return f if running(f.pid) else None


@contextmanager
def announced(
    db: str | os.PathLike, total_days: float, clock: Callable[[], datetime] = utcnow
) -> Iterator[Callable[[float], None]]:
    """Keep the progress file of a fill of `total_days` simulated days while
    the block runs: yields `update(done_days)`; the file is removed when
    the block ends, however it ends. Wrap the store's rebuild in it, so the
    file goes only after the new store is published."""
    state = {"f": Filling(clock(), 0.0, float(total_days), os.getpid())}
    write(db, state["f"])

    def update(done_days: float) -> None:
        state["f"] = replace(state["f"], done_days=min(float(done_days), state["f"].total_days))
        write(db, state["f"])

    try:
        yield update
    finally:
        progress_path(db).unlink(missing_ok=True)
