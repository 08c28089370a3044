"""Strict JSON: whatever a value holds, the text is JSON a strict parser
accepts, and every document cachemon writes goes through one function."""

import json
import math
import re
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from cachemon import jsontext

ROOT = Path(__file__).resolve().parents[1]
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)


def _strict(text):
    def refuse(name):
        raise AssertionError(f"{name} in JSON text")

    return json.loads(text, parse_constant=refuse)


def _expected(v):  # the truth, written independently of jsontext.finite
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if isinstance(v, dict):
        return {k: _expected(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_expected(x) for x in v]
    return v


@given(_json)
def test_any_value_becomes_strict_json_with_non_finite_as_null(value):
    assert _strict(jsontext.dumps(value)) == _expected(value)


def test_no_module_writes_json_any_other_way():
    """One rule, one place: `json.dumps` appears only in jsontext (and in
    redact, which escapes a secret the way JSON would, to find it)."""
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "cachemon").rglob("*.py")
        if p.name not in ("jsontext.py", "redact.py")
        and p.parent.name != "testing"
        and re.search(r"\bjson\.dumps\(", p.read_text())
    ]
    assert offenders == []
