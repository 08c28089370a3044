"""The reliability suite's profile and its results table (a module, not a
conftest: tests/conftest.py is the one `conftest`, which the tests import).

CACHEMON_RELIABILITY=long runs the documented long profile (more kills,
longer soaks); the default is the CI profile. Every scenario adds a row
(scenario, what was injected, count, result) through the `results`
fixture (tests/conftest.py) to the table written to
test-artifacts/reliability.md at the end of the session; the README's
table is a copy of one run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LONG = os.environ.get("CACHEMON_RELIABILITY", "ci") == "long"
ARTIFACTS = Path(os.environ.get("CACHEMON_ARTIFACTS", ROOT / "test-artifacts"))


def write_table(rows: list[dict]) -> None:
    """The results table, as Markdown (for the README) and JSON."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    lines = ["| scenario | injected | count | result |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['scenario']} | {r['injected']} | {r['count']} | {r['result']} |" for r in rows]
    (ARTIFACTS / "reliability.md").write_text("\n".join(lines) + "\n")
    (ARTIFACTS / "reliability.json").write_text(json.dumps(rows, indent=2))
