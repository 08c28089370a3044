"""A real full disk for the reliability tests: a tiny tmpfs (needs root,
else the test is skipped) and a ballast file that fills it."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager

import pytest

# A small simulated runner whose compaction never falls in a test's few seconds.
CONFIG = (
    "[simulator]\nseed = 5\nrequests_per_hour = 6000\ncatalog_keys = 3000\n"
    '[jobs]\ncompact_at = "23:50"\n'
)


@contextmanager
def tmpfs(path, size: str):
    """A tmpfs of `size` mounted at `path` (created) for the block; skips the
    test where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if p.returncode:
        # Justified: mounting needs root (CI and this machine run as root, so it runs there);
        # without it the same ENOSPC paths are covered by injection in test_store_snapshots.
        pytest.skip(
            f"cannot mount a tmpfs here ({p.stderr.strip()}): "
            "ENOSPC is injected in test_store_snapshots"
        )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path) -> None:
    """Write a ballast file until the disk is full (unbuffered: nothing is left to flush)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for chunk in (1 << 20, 4096):
            while True:
                try:
                    os.write(fd, b"\0" * chunk)
                except OSError:
                    break
    finally:
        os.close(fd)
