"""Event files (NDJSON, CSV, Parquet) -> validated EventFrames, in batches.

A file is read in bounded batches (Parquet: `BATCH_ROWS` rows; NDJSON:
`CHUNK_BYTES` of whole lines; CSV: blocks of `MAX_LINE` bytes), each validated as it comes, so memory stays bounded whatever the
file holds; the caller writes nothing until every batch of every file has
passed (see `ingest.load.import_files`). Absurd files are refused with their
name: more than `MAX_ROWS` rows, an NDJSON line longer than `MAX_LINE`,
NUL bytes in a text file.
"""

from __future__ import annotations

import hashlib
import io
import json
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from cachemon.argcheck import file_kind
from cachemon.errors import InputError
from cachemon.events import EventFrame, check_unique_columns, validate

FORMATS = {
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".json": "ndjson",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_NUMERIC = ("latency_ms", "bytes", "sample_interval")

# Limits (documented in the README, "Importing files").
MAX_ROWS = 25_000_000  # rows (events) per file: a week at the simulator's default rate, with room
MAX_LINE = 1 << 20  # bytes per NDJSON / CSV line
BATCH_ROWS = 200_000  # rows validated (and aggregated) at a time
CHUNK_BYTES = 16 << 20  # bytes of text parsed at a time


@dataclass(frozen=True)
class EventFile:
    path: Path
    sha256: str
    frame: EventFrame


def read(path: str | Path, latest: datetime | None = None) -> EventFile:
    """Read and validate one whole event file (for callers that need every
    event at once, like the TTL replay; imports use `batches`)."""
    p = check(path)
    frames = [f.table for f in batches(p, latest)]
    table = pa.concat_tables(frames) if frames else EventFrame.empty().table
    return EventFile(p, file_sha256(p), EventFrame(table))


def check(path: str | Path) -> Path:
    """`path` as a Path if it names an event file that exists."""
    p = Path(path)
    if FORMATS.get(p.suffix.lower()) is None:
        raise InputError(
            f"{p}: unknown file type {p.suffix!r}; use .ndjson/.jsonl, .csv or .parquet"
        )
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise InputError(f"{p}: no such file") from None
    except OSError as exc:
        raise InputError(f"{p}: cannot be read: {exc.strerror or type(exc).__name__}") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"{p}: is a folder, not a file (name the files inside it)")
    if not stat.S_ISREG(mode):
        raise InputError(f"{p}: is {file_kind(mode)}, not a regular file")
    return p


def batches(path: str | Path, latest: datetime | None = None) -> Iterator[EventFrame]:
    """Validated batches of a file's events, in file order; InputError
    names the file, line (or row) and field of the first bad value, or the
    limit the file exceeds."""
    p = check(path)
    reader = {"ndjson": _ndjson, "csv": _csv, "parquet": _parquet}[FORMATS[p.suffix.lower()]]
    rows = 0
    for table, label in reader(p):
        rows += table.num_rows
        if rows > MAX_ROWS:
            raise InputError(
                f"{p}: more than {MAX_ROWS:,} rows; split the file (the limit bounds an import's time)"
            )
        yield validate(table, str(p), label, latest)


def file_sha256(p: Path) -> str:
    h = hashlib.sha256()
    with p.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _parquet(p: Path):
    try:
        pf = pq.ParquetFile(p)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{p}: not a readable Parquet file: {exc}") from None
    n = pf.metadata.num_rows
    if n > MAX_ROWS:
        # Known from the footer: refused before a single row is decoded.
        raise InputError(f"{p}: {n:,} rows, more than the limit of {MAX_ROWS:,}; split the file")
    done = 0
    it = pf.iter_batches(batch_size=BATCH_ROWS)
    while True:
        try:
            batch = next(it, None)
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"{p}: not a readable Parquet file: {exc}") from None
        if batch is None:
            return
        offset = done
        yield pa.Table.from_batches([batch]), lambda i, o=offset: f"row {o + i + 1}"
        done += batch.num_rows


def _csv(p: Path):
    if p.stat().st_size == 0:
        return
    # Every column is read as text and converted here, so that a bad value
    # is reported with its line rather than as a bare conversion error.
    with p.open("rb") as f:
        head = f.readline(MAX_LINE + 1)
    _check_text(p, 1, head)
    names = pacsv.read_csv(io.BytesIO(head)).schema.names if head.strip() else []
    check_unique_columns(names, str(p))
    opts = pacsv.ConvertOptions(
        column_types={c: pa.string() for c in names}, strings_can_be_null=True
    )
    try:
        reader = pacsv.open_csv(
            p, read_options=pacsv.ReadOptions(block_size=MAX_LINE), convert_options=opts
        )
    except pa.ArrowInvalid as exc:
        raise _csv_error(p, 1, exc) from None
    done = 0
    while True:
        table = _csv_rows(reader, p, done)
        if table is None:
            return

        def label(i, o=done):
            return f"line {o + i + 2}"

        for name in _NUMERIC:
            if name in table.column_names:
                table = table.set_column(
                    table.column_names.index(name), name, _to_number(table[name], p, name, label)
                )
        _check_nul(p, table, label)
        yield table, label
        done += table.num_rows


def _csv_rows(reader, p: Path, done: int) -> pa.Table | None:
    """Blocks of the CSV reader gathered up to BATCH_ROWS rows (a block is
    only MAX_LINE bytes: one per batch would cost a query each)."""
    blocks, rows = [], 0
    while rows < BATCH_ROWS:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            break
        except pa.ArrowInvalid as exc:
            raise _csv_error(p, done + rows + 2, exc) from None
        blocks.append(batch)
        rows += batch.num_rows
    return pa.Table.from_batches(blocks).combine_chunks() if blocks else None


def _csv_error(p: Path, line: int, exc: Exception) -> InputError:
    if "straddl" in str(exc):  # Arrow's words for a row longer than its block
        return InputError(
            f"{p}: a line from line {line} on is longer than {MAX_LINE:,} bytes "
            "(the limit of one event; is this a text file?)"
        )
    return InputError(f"{p}: not a readable CSV file (from line {line} on): {exc}")


def _check_nul(p: Path, table: pa.Table, label) -> None:
    for name in table.column_names:
        col = table[name]
        if pa.types.is_string(col.type):
            bad = pa.compute.match_substring(col, "\x00")
            hit = pa.compute.indices_nonzero(
                pa.compute.fill_null(
                    pa.concat_arrays(bad.chunks) if bad.num_chunks else pa.array([], pa.bool_()),
                    False,
                )
            )
            if len(hit):
                raise InputError(
                    f"{p}: {label(hit[0].as_py())}: {name} contains NUL bytes (is this a text file?)"
                )


def _to_number(col: pa.ChunkedArray, p: Path, name: str, label) -> pa.Array:
    values = col.to_numpy(zero_copy_only=False)
    present = np.array([v is not None and v != "" for v in values], dtype=bool)
    out = np.full(len(values), np.nan)
    for i in np.flatnonzero(present):
        try:
            out[i] = float(values[i])
        except ValueError:
            raise InputError(
                f"{p}: {label(int(i))}: {name} {values[i]!r} is not a number"
            ) from None
    return pa.array(out, mask=~present)


def _ndjson(p: Path):
    """Whole lines gathered into chunks of about CHUNK_BYTES, each parsed by
    Arrow; a line longer than MAX_LINE is refused before it is all read."""
    with p.open("rb") as f:
        lineno, chunk, numbers, size = 0, [], [], 0
        while True:
            line = f.readline(MAX_LINE + 1)
            if not line:
                break
            lineno += 1
            if len(line) > MAX_LINE:
                raise InputError(
                    f"{p}: line {lineno} is longer than {MAX_LINE:,} bytes (the limit of one event)"
                )
            _check_text(p, lineno, line)
            if not line.strip():
                continue
            chunk.append(line if line.endswith(b"\n") else line + b"\n")
            numbers.append(lineno)
            size += len(line)
            if size >= CHUNK_BYTES or len(chunk) >= BATCH_ROWS:
                yield _parse_ndjson(p, chunk, numbers)
                chunk, numbers, size = [], [], 0
        if chunk:
            yield _parse_ndjson(p, chunk, numbers)


def _check_text(p: Path, lineno: int, line: bytes) -> None:
    if b"\x00" in line:
        raise InputError(f"{p}: line {lineno} contains NUL bytes (is this a text file?)")


def _parse_ndjson(p: Path, lines: list[bytes], numbers: list[int]):
    data = b"".join(lines)

    def label(i):
        return f"line {numbers[i]}" if i < len(numbers) else f"row {i + 1}"

    try:
        table = pajson.read_json(
            io.BytesIO(data),
            read_options=pajson.ReadOptions(block_size=max(len(data), 1 << 16) + 1),
        )
    except pa.ArrowInvalid as exc:
        _find_bad_json_line(p, lines, numbers)
        raise InputError(f"{p}: cannot read as NDJSON (one JSON object per line): {exc}") from None
    if table.num_rows != len(lines):
        raise InputError(
            f"{p}: cannot read as NDJSON: lines {numbers[0]}-{numbers[-1]} hold "
            f"{table.num_rows} objects, expected one per line"
        )
    return table, label


def _find_bad_json_line(p: Path, lines: list[bytes], numbers: list[int]) -> None:
    """Arrow's parse error names no line: find it (and say what is wrong)."""
    kinds: dict[str, tuple[str, int]] = {}  # field -> (JSON type, first line with it)
    for n, line in zip(numbers, lines):
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
        for name, v in obj.items():
            kind = _json_kind(v)
            if kind is None:
                continue
            first = kinds.setdefault(name, (kind, n))
            if first[0] != kind:
                raise InputError(
                    f"{p}: line {n}: {name} is {kind} {v!r:.60} where line {first[1]} has {first[0]}; "
                    "a field must have one type in every line"
                )


def _json_kind(v) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "text"
    return "a list" if isinstance(v, list) else "an object"
