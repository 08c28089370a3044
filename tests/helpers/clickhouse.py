"""Running docs/analysts.md's questions on two engines and comparing the answers
(tests/store/test_clickhouse.py): the questions as the docs hold them (DuckDB ```sql blocks
under "Example questions", ClickHouse ```sql clickhouse blocks under "The export on
ClickHouse"), the exported files a ClickHouse query reads, and a row-by-row comparison that
refuses empty answers."""

from __future__ import annotations

import datetime as dt
import glob
import math
import re
from datetime import UTC
from pathlib import Path

import pandas as pd

DUCKDB_SECTION = "## Example questions"
CLICKHOUSE_SECTION = "## The export on ClickHouse"
FILE = re.compile(r"\bfile\('([^']*)'")
NOT_RUN = "<!-- not-run:"
REL = 1e-9  # floats: the engines may add in another order


def section(text: str, heading: str) -> str:
    """The text under `heading` (a `## ` heading), down to the next `## ` heading."""
    assert f"\n{heading}\n" in text, f"docs/analysts.md: no section {heading!r}"
    return text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]


def blocks(text: str, info: str) -> list[str]:
    """The ```info blocks of `text` not marked `<!-- not-run: … -->` on the line before."""
    out = []
    for m in re.finditer(rf"^```{info}\n(.*?)^```$", text, re.S | re.M):
        before = [s for s in text[: m.start()].splitlines() if s.strip()]
        if not (before and before[-1].strip().startswith(NOT_RUN)):
            out.append(m.group(1))
    return out


def numbered(text: str, info: str) -> dict[int, tuple[str, str]]:
    """{number: (title, the one query)} of the `### N. title` subsections of `text`."""
    out = {}
    for sub in text.split("\n### ")[1:]:
        title = sub.splitlines()[0]
        found = re.match(r"(\d+)\. ", title)
        queries = blocks(sub, info)
        if not found:
            assert not queries, f"docs/analysts.md: {title!r} has a query but no number"
            continue
        assert len(queries) == 1, f"docs/analysts.md: {title!r} needs one query, has {len(queries)}"
        out[int(found.group(1))] = (title, queries[0])
    return out


def marked(text: str, info: str) -> list[str]:
    """The ```info blocks of `text` marked not-run (they need a real service)."""
    every = re.findall(rf"^```{info}\n(.*?)^```$", text, re.S | re.M)
    return [b for b in every if b not in blocks(text, info)]


def docs(doc: Path) -> tuple[list[str], dict[int, tuple[str, str]], dict[int, tuple[str, str]]]:
    """(the ClickHouse setup blocks, {n: DuckDB question}, {n: ClickHouse question}) of `doc`."""
    text = doc.read_text(encoding="utf-8")
    clickhouse = section(text, CLICKHOUSE_SECTION)
    setup = blocks(clickhouse.split("\n### ", 1)[0], "sql clickhouse")
    return (
        setup,
        numbered(section(text, DUCKDB_SECTION), "sql"),
        numbered(clickhouse, "sql clickhouse"),
    )


class ExportMissing(LookupError):
    """A query names exported files that are not there."""


def pinned(sql: str, clock: dict[str, str]) -> str:
    """`sql` with each way of reading the clock in `clock` replaced by its pinned instant."""
    for name, instant in clock.items():
        sql = sql.replace(name, instant)
    return sql


def located(sql: str, root: Path) -> str:
    """`sql` with each `file('exports/…')` read from `root`'s export. A path that matches no
    file is an error naming it: ClickHouse's own refusal ("cannot extract table structure")
    does not say which folder is missing, and a query given a structure would answer no rows."""
    paths = FILE.findall(sql)
    if not paths:
        raise ExportMissing("the query reads no exported file (no file('exports/…'))")
    for path in paths:
        if not path.startswith("exports/"):
            raise ExportMissing(f"{path!r}: the documented queries read exports/<view>/…")
        where = root / path
        if not glob.glob(str(where)):
            raise ExportMissing(
                f"no exported file matches {where}: the export folder is wrong, "
                "or the view had no rows to export"
            )
        sql = sql.replace(f"file('{path}'", f"file('{where.as_posix()}'")
    return sql


def cell(v):
    """A cell as plain Python, the same whichever engine produced it: times as UTC
    timestamps (a Date as its midnight), numbers as float or int, missing as None."""
    if v is None or v is pd.NaT or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, pd.Timestamp | dt.date):
        t = pd.Timestamp(v)
        return t.tz_localize(UTC) if t.tzinfo is None else t.tz_convert(UTC)
    if hasattr(v, "item"):  # numpy scalars
        return cell(v.item())
    return v


def same(a, b) -> bool:
    """Equal cells; floats to a relative REL."""
    if isinstance(a, float) or isinstance(b, float):
        return (
            isinstance(a, int | float)
            and isinstance(b, int | float)
            and math.isclose(a, b, rel_tol=REL, abs_tol=0.0)
        )
    return a == b


def assert_same_answer(duck: pd.DataFrame, ch: pd.DataFrame, what: str) -> None:
    """The same columns and, in order, the same rows; an empty answer is refused."""
    assert list(ch.columns) == list(duck.columns), f"{what}: columns differ"
    if duck.empty or ch.empty:
        raise AssertionError(
            f"{what}: an empty answer (DuckDB {len(duck)} rows, ClickHouse {len(ch)}) "
            "proves nothing; the test store must give every question rows"
        )
    assert len(ch) == len(duck), f"{what}: DuckDB has {len(duck)} rows, ClickHouse {len(ch)}"
    for i, (d, c) in enumerate(
        zip(duck.itertuples(index=False), ch.itertuples(index=False), strict=True)
    ):
        d, c = tuple(map(cell, d)), tuple(map(cell, c))
        bad = [col for col, x, y in zip(duck.columns, d, c, strict=True) if not same(x, y)]
        assert not bad, f"{what}: row {i} differs in {bad}:\n DuckDB     {d}\n ClickHouse {c}"
