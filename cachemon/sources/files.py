"""Event files (NDJSON, CSV, Parquet) -> validated EventFrames.

A file is read whole and validated before anything is written, so a bad row
aborts the import with its file and line, and nothing is half-imported.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from ..errors import InputError
from ..events import EventFrame, validate

FORMATS = {".ndjson": "ndjson", ".jsonl": "ndjson", ".json": "ndjson", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_NUMERIC = ("latency_ms", "bytes", "sample_interval")


@dataclass(frozen=True)
class EventFile:
    path: Path
    sha256: str
    frame: EventFrame


def read(path: str | Path) -> EventFile:
    """Read and validate one event file."""
    p = Path(path)
    fmt = FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise InputError(f"{p}: unknown file type {p.suffix!r}; use .ndjson/.jsonl, .csv or .parquet")
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    digest = file_sha256(p)
    reader = {"ndjson": _read_ndjson, "csv": _read_csv, "parquet": _read_parquet}[fmt]
    table, label = reader(p)
    return EventFile(p, digest, validate(table, str(p), label))


def file_sha256(p: Path) -> str:
    h = hashlib.sha256()
    with p.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_parquet(p: Path):
    try:
        return pq.read_table(p), lambda i: f"row {i + 1}"
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{p}: not a readable Parquet file: {exc}") from None


def _read_csv(p: Path):
    try:
        header = pacsv.read_csv(p, read_options=pacsv.ReadOptions(block_size=1 << 16)).schema.names if p.stat().st_size else []
    except pa.ArrowInvalid as exc:
        raise InputError(f"{p}: not a readable CSV file: {exc}") from None
    # Every column is read as text and converted here, so that a bad value
    # is reported with its line rather than as a bare conversion error.
    opts = pacsv.ConvertOptions(column_types={c: pa.string() for c in header}, strings_can_be_null=True)
    try:
        table = pacsv.read_csv(p, convert_options=opts)
    except pa.ArrowInvalid as exc:
        raise InputError(f"{p}: not a readable CSV file: {exc}") from None

    def label(i):
        return f"line {i + 2}"

    for name in _NUMERIC:
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, _to_number(table[name], p, name, label))
    return table, label


def _to_number(col: pa.ChunkedArray, p: Path, name: str, label) -> pa.Array:
    values = col.to_numpy(zero_copy_only=False)
    present = np.array([v is not None and v != "" for v in values], dtype=bool)
    out = np.full(len(values), np.nan)
    for i in np.flatnonzero(present):
        try:
            out[i] = float(values[i])
        except ValueError:
            raise InputError(f"{p}: {label(int(i))}: {name} {values[i]!r} is not a number") from None
    return pa.array(out, mask=~present)


def _read_ndjson(p: Path):
    lines = None

    def label(i):
        nonlocal lines
        if lines is None:
            lines = _nonblank_line_numbers(p)
        return f"line {lines[i]}" if i < len(lines) else f"row {i + 1}"

    try:
        return pajson.read_json(p), label
    except pa.ArrowInvalid as exc:
        _find_bad_json_line(p)
        raise InputError(f"{p}: cannot read as NDJSON (one JSON object per line): {exc}") from None


def _nonblank_line_numbers(p: Path) -> list[int]:
    with p.open("rb") as f:
        return [n for n, line in enumerate(f, 1) if line.strip()]


def _find_bad_json_line(p: Path) -> None:
    with p.open("rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (ValueError, UnicodeDecodeError) as exc:
                raise InputError(f"{p}: line {n}: not valid JSON ({exc})") from None
            if not isinstance(obj, dict):
                raise InputError(f"{p}: line {n}: expected a JSON object, got {type(obj).__name__}")
            for name in _NUMERIC:
                v = obj.get(name)
                if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                    raise InputError(f"{p}: line {n}: {name} {v!r} is not a number")
