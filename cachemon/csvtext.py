"""The one CSV rule: every CSV a person opens (the dashboard's downloads)
goes through `csv_bytes`.

A download is opened in a spreadsheet by a person, so it follows the
display conventions where they matter there:

- numbers are rounded by their unit, read from the column header (units are
  in every header): USD 4 decimals, counts (requests, errors, keys) whole,
  everything else (rates, percentages, ms, days) 2 decimals; a value that
  is not finite is an empty cell, never "nan" or "inf";
- text comes from the internet (cache keys), so control characters in it
  (C0, DEL, C1, and the Unicode line and paragraph separators) become
  visible symbols (U+2400 "control pictures" for C0 and DEL, U+FFFD for the
  others): a cell never breaks a row, and a reader sees that something was
  there;
- a text cell that a spreadsheet would run as a formula (starting with
  = + - @, or a tab or carriage return) gets a leading apostrophe
  (`safe_text`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import numpy as np
import pandas as pd

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
USD_DECIMALS = 4
RATE_DECIMALS = 2
COUNT_DECIMALS = 0
# Headers that are counts: the word alone or with a unit-free qualifier
# ("requests", "errors", "keys"); "requests/day" and "error rate %" are rates.
_COUNT = re.compile(r"^(requests|errors|keys|count|hits|misses)(\b[^/%]*)?$", re.IGNORECASE)
# C0 controls, DEL, C1 controls, LINE and PARAGRAPH SEPARATOR, and the bidirectional
# controls (U+200E/F, U+202A-E, U+2066-9) that can make a cell read backwards.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def safe_text(value):
    """`value` with a leading apostrophe when a spreadsheet would read it as a formula."""
    # Spreadsheets skip leading spaces before a formula (" =1" still runs).
    if isinstance(value, str) and value.lstrip(" ").startswith(FORMULA_START):
        return "'" + value
    return value


def _visible(ch: str) -> str:
    code = ord(ch)
    if code < 0x20:
        return chr(0x2400 + code)  # ␀ … ␟: "\n" is ␊, "\t" is ␉
    if code == 0x7F:
        return "\u2421"  # ␡
    return "\ufffd"


def neutral_text(value: str) -> str:
    """`value` with every control character replaced by a visible symbol
    and a formula lead (= + - @) behind an apostrophe: what a CSV cell of
    text holds."""
    return safe_text(_CONTROL.sub(lambda m: _visible(m.group()), value))


def decimals_for(header: str) -> int:
    """The decimals a numeric column keeps, by the unit its header names."""
    if "usd" in header.lower():
        return USD_DECIMALS
    if _COUNT.match(header.strip()):
        return COUNT_DECIMALS
    return RATE_DECIMALS


def _number_column(s: pd.Series, decimals: int) -> pd.Series:
    values = s.astype(float).where(np.isfinite(s.astype(float)))  # nan, ±inf: empty
    rounded = values.round(decimals)
    if decimals == 0:
        return rounded.astype("Int64")
    return rounded


def _text_cell(v) -> str:
    if v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and math.isnan(v)):
        return ""  # a missing value is an empty cell, never "None" or "nan"
    return neutral_text(str(v))


def csv_bytes(df: pd.DataFrame, decimals: Mapping[str, int] | None = None) -> bytes:
    """UTF-8 CSV of `df` for a download: numbers rounded by the unit of
    their header (`decimals_for`; `decimals` overrides it per column), text
    (headers too) neutralised (`neutral_text`). Booleans, integers and
    timestamps are written as they are."""
    decimals = dict(decimals or {})
    columns, headers = [], []
    for i, col in enumerate(df.columns):
        s = df.iloc[:, i]
        name = str(col)
        if pd.api.types.is_bool_dtype(s) or pd.api.types.is_datetime64_any_dtype(s):
            cells = s
        elif pd.api.types.is_integer_dtype(s):
            cells = s
        elif pd.api.types.is_float_dtype(s):
            cells = _number_column(s, decimals.get(name, decimals_for(name)))
        else:
            cells = s.map(_text_cell)
        columns.append(cells.reset_index(drop=True))
        headers.append(neutral_text(name))
    out = pd.concat(columns, axis=1, ignore_index=True) if columns else pd.DataFrame()
    out.columns = headers
    return out.to_csv(index=False).encode("utf-8")
