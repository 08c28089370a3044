"""The Top keys page (issue 21): classes over the class window, a drill-down
at the range's resolution, a table that fits, and a CSV download whose cells
are rounded and cannot run or break in a spreadsheet; the Overview's top keys
equal the page's."""

from __future__ import annotations

import csv
import io
import math

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pages.shared import export

HEADERS = ("key", "requests", "hit rate %", "USD/day")


def _visible(text: str) -> str:
    """What a CSV cell shows of `text`: each control character as a
    visible symbol, a formula lead behind an apostrophe."""
    out = []
    for ch in text:
        c = ord(ch)
        if c < 0x20:
            out.append(chr(0x2400 + c))
        elif c == 0x7F:
            out.append("\u2421")
        elif 0x80 <= c <= 0x9F or ch in "\u2028\u2029":
            out.append("\ufffd")
        else:
            out.append(ch)
    shown = "".join(out)
    return "'" + shown if shown[:1] in ("=", "+", "-", "@") else shown


def _controls(text: str) -> list[str]:
    return [ch for ch in text if ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F or ch in "\u2028\u2029"]


def _cells(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(), min_size=1, max_size=8), st.text())
def test_csv_cells_hold_no_control_character_nor_formula_lead(texts, header):
    df = pd.DataFrame({"key": texts, header or "x": range(len(texts))})
    data = export.csv_bytes(df)
    text = data.decode("utf-8")
    # One line per row: only the rows' own line ends, no other control character.
    assert text.count("\n") == len(texts) + 1
    assert _controls(text.replace("\n", "")) == []
    rows = _cells(data)
    assert len(rows) == len(texts) + 1
    for row, original in zip(rows[1:], texts):
        assert not row[0].startswith(("=", "+", "-", "@"))
        assert row[0] == _visible(original)  # the visible text round-trips
    assert rows[0][0] == "key" and rows[0][1] == _visible(header or "x")


finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e9, max_value=1e9)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(finite, finite, finite), min_size=1, max_size=8))
def test_csv_numbers_are_rounded_by_the_unit_of_their_header(values):
    df = pd.DataFrame(
        {
            "key": ["k"] * len(values),
            "requests": [v[0] for v in values],
            "hit rate %": [v[1] for v in values],
            "USD/day": [v[2] for v in values],
        }
    )
    rows = _cells(export.csv_bytes(df))
    assert tuple(rows[0]) == HEADERS
    for row, v in zip(rows[1:], values):
        for cell, x, decimals in zip(row[1:], v, (0, 2, 4)):
            digits = cell.split(".")[1] if "." in cell else ""
            assert len(digits) <= max(decimals, 1) and (decimals or not digits)
            assert float(cell) == pytest.approx(x, abs=0.5 * 10**-decimals + 1e-9 * abs(x))


def test_missing_and_absurd_values_are_empty_cells():
    df = pd.DataFrame(
        {
            "key": ["=cmd|' /C calc'!A0", None, "a\r\nb"],
            "requests": [1.6, math.nan, math.inf],
            "hit rate %": [-math.inf, 12.3456, math.nan],
        }
    )
    rows = _cells(export.csv_bytes(df))
    assert rows[1:] == [
        ["'=cmd|' /C calc'!A0", "2", ""],
        ["", "", "12.35"],
        ["a\u240d\u240ab", "", ""],
    ]
