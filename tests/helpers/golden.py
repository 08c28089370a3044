"""Golden files (tests/golden): rendered output compared byte for byte.
Set UPDATE_GOLDEN=1 to rewrite them after a deliberate change."""

from __future__ import annotations

import os

from tests.helpers import ROOT

GOLDEN = ROOT / "tests" / "golden"


def check_golden(name: str, text: str) -> None:
    """`text` equals the golden file `name` (or replaces it, with UPDATE_GOLDEN=1)."""
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()
