"""Exports of tables for people and other tools.

Cache keys come from the internet, so a text cell opened in a spreadsheet
must not run as a formula (CSV injection): text starting with = + - @ tab
or carriage return gets a leading apostrophe, as OWASP recommends.
Numbers are left as numbers.
"""

from __future__ import annotations

import pandas as pd

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_text(value):
    """`value` with a leading apostrophe when a spreadsheet would read it as a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def csv_bytes(df: pd.DataFrame) -> bytes:
    """UTF-8 CSV of `df`, text cells neutralised against formula injection."""
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col]):
            out[col] = out[col].map(safe_text)
    return out.to_csv(index=False).encode("utf-8")
