"""The reliability suite's profile and its results table.

CACHEMON_RELIABILITY=long runs the documented long profile (more kills,
longer soaks); the default is the CI profile. Every scenario adds a row
(scenario, what was injected, count, result) through the `results`
fixture (tests/conftest.py) to the table written to
test-artifacts/reliability.md at the end of the session; the README's
table is a copy of one run. Under pytest-xdist each worker hands its rows
to the controller, which writes the one table (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LONG = os.environ.get("CACHEMON_RELIABILITY", "ci") == "long"
ARTIFACTS = Path(os.environ.get("CACHEMON_ARTIFACTS", ROOT / "test-artifacts"))
COLUMNS = ("scenario", "injected", "count", "result")


def row_order(row: dict) -> tuple:
    """Where a row goes in the table: by test file, then the test's line,
    then its id and the order the test added its rows. The same table
    whatever the number of xdist workers and however tests were spread."""
    return (row["file"], row["line"], row["test"], row["seq"])


def write_table(rows: list[dict]) -> None:
    """The results table, as Markdown (for the README) and JSON."""
    rows = [{c: r[c] for c in COLUMNS} for r in sorted(rows, key=row_order)]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    lines = ["| scenario | injected | count | result |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['scenario']} | {r['injected']} | {r['count']} | {r['result']} |" for r in rows]
    (ARTIFACTS / "reliability.md").write_text("\n".join(lines) + "\n")
    (ARTIFACTS / "reliability.json").write_text(json.dumps(rows, indent=2))
