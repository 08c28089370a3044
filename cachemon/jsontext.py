"""Strict JSON text: every JSON cachemon prints, serves or stores.

JSON has no NaN or infinity (Python's `json` writes them anyway, and
strict parsers then refuse the whole document). Inputs are bounded, but a
store written before that, or a ratio of two zeros, can still produce one,
so every document passes through `finite`: a number that is not finite
becomes null, which says "no value" instead of poisoning the document.
"""

from __future__ import annotations

import json
import math

# Significant digits of every rounded figure in a JSON document: a relative
# error of at most 5e-6, whatever the magnitude (a latency of 4 µs or of 40 s
# alike); rounding to a number of decimals would erase small values.
SIGNIFICANT = 6


def finite(value):
    """`value` (JSON-shaped data) with every NaN or infinity replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def significant(x: float, digits: int = SIGNIFICANT) -> float:
    """`x` rounded to `digits` significant digits (relative error at most
    0.5e-(digits-1)); non-finite values pass through for `finite` to judge."""
    x = float(x)
    if x == 0 or not math.isfinite(x):
        return x
    return float(f"{x:.{digits}g}")


def dumps(value, **kwargs) -> str:
    """`json.dumps` of `finite(value)`, refusing anything non-finite left."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)
