"""A demo on a full disk: the copy it builds aside cannot be written. One
line, exit 2, no partial copy left to keep the disk full, and the store and
its snapshot exactly as they were (the tester saw a traceback and a 30 MB
`.demo.tmp` left behind)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

from cachemon.store import snapshots
from tests.helpers import ROOT
from tests.helpers.disk import CONFIG, tmpfs
from tests.helpers.disk import fill as _fill


def _md5(p) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()


def test_a_demo_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, results):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHEMON_")} | {
        "PYTHONPATH": str(ROOT)
    }
    with tmpfs(tmp_path / "disk", "64m") as disk:
        (disk / "c.toml").write_text(CONFIG)
        db = disk / "d.duckdb"

        def cli(*args):
            return subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "cachemon",
                    "--db",
                    str(db),
                    "--config",
                    str(disk / "c.toml"),
                    *args,
                ],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )

        assert (
            cli("demo", "--days", "0.1", "--until", "2026-11-19T10:00:00Z", "--quiet").returncode
            == 0
        )
        before = (_md5(db), _md5(snapshots.current_snapshot(db)))
        _fill(disk / "ballast")
        out = cli("demo", "--days", "0.2", "--until", "2026-11-19T10:00:00Z", "--quiet")
        leftovers = [f.name for f in disk.iterdir() if f.name.endswith(".tmp")]
        after = (_md5(db), _md5(snapshots.current_snapshot(db)))
        (disk / "ballast").unlink()
        read = cli("metrics", "--at", "2026-11-19T10:00:00Z")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("cachemon: error: ") and out.stderr.count("\n") == 1, out.stderr
    assert "no space left on device" in out.stderr, out.stderr
    assert leftovers == [] and after == before
    assert read.returncode == 0, read.stderr
    results(
        "demo on a full disk",
        "a tmpfs filled to the last byte, then `demo` (its copy aside needs room)",
        1,
        "one `cachemon: error:` line (no space left on device), exit 2; no partial copy left; store and "
        "snapshot byte-identical; reads go on",
    )
