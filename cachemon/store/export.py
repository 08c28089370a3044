"""Exports of tables for people and other tools: CSV for a spreadsheet,
Hive-partitioned Parquet for other engines.

Cache keys come from the internet, so a text cell opened in a spreadsheet
must not run as a formula (CSV injection): text starting with = + - @ tab
or carriage return gets a leading apostrophe, as OWASP recommends.
Numbers are left as numbers. Text that cachemon wrote itself (alert
messages, delivery errors, job errors) is redacted of every secret of the
environment once more on its way out, in case an older store holds one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cachemon.clock import DAY, floor_to
from cachemon.errors import InputError
from cachemon.redact import MARK, Redactor
from cachemon.store.views import SCHEMA


# Parquet export: each dataset is one analyst view, written per UTC day to
# DIR/<view>/date=YYYY-MM-DD/data.parquet (Hive partitioning), so any engine
# reads it and a re-export replaces whole days. A day is fetched and written
# at a time, so memory stays bounded by one day of the largest view.
@dataclass(frozen=True)
class Dataset:
    view: str  # in analyst.SCHEMA
    time: str  # the column that places a row in a day


DATASETS = tuple(
    Dataset(v, t)
    for v, t in (
        ("requests_minute", "minute"),
        ("requests_hour", "hour"),
        ("requests_day", "day"),
        ("latency_histogram_minute", "minute"),
        ("latency_histogram_hour", "hour"),
        ("latency_histogram_day", "day"),
        ("gauges_minute", "minute"),
        ("gauges_hour", "hour"),
        ("keys_hour", "hour"),
        ("keys_day", "day"),
        ("alert_history", "changed_at"),
        ("notifications", "created_at"),
        ("cost_day", "day"),
        ("experiment_results", "analyzed_at"),
        ("job_runs", "started_at"),
    )
)


# The datasets holding cachemon's own messages (remote error text among
# them); the others hold only measurements and cache keys.
MESSAGE_DATASETS = ("alert_history", "notifications", "experiment_results", "job_runs")


@dataclass(frozen=True)
class Written:
    dataset: str
    days: int
    rows: int


def _days_sql(d: Dataset) -> str:
    return (
        f"SELECT DISTINCT CAST(date_trunc('day', {d.time}) AS DATE) AS d FROM {SCHEMA}.{d.view} "
        f"WHERE $since IS NULL OR {d.time} >= $since ORDER BY d"
    )


def _day_sql(d: Dataset) -> str:
    return f"SELECT * FROM {SCHEMA}.{d.view} WHERE {d.time} >= $lo AND {d.time} < $hi"


def parquet(
    con: duckdb.DuckDBPyConnection,
    to: str | os.PathLike,
    since: datetime | None = None,
    redactor: Redactor | None = None,
) -> list[Written]:
    """Write every dataset's days (from the day of `since` on) under `to`.
    `redactor`: the secrets to keep out (default: the environment's)."""
    redactor = Redactor.from_env(os.environ) if redactor is None else redactor
    if not os.fspath(to).strip():  # Path("") is ".": an empty --to would fill the current folder
        raise InputError("export target is empty: name the folder to write to")
    root = Path(to)
    if root.exists() and not root.is_dir():
        raise InputError(f"export target {root} exists and is not a directory")
    lo = floor_to(since, DAY) if since else None
    out = []
    for d in DATASETS:
        days = [r[0] for r in con.execute(_days_sql(d), {"since": lo}).fetchall()]
        rows = 0
        for day in days:
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            table = con.sql(_day_sql(d), params={"lo": start, "hi": start + DAY}).to_arrow_table()
            if d.view in MESSAGE_DATASETS:
                table = _redacted(table, redactor)
            _write(table, root, Path(d.view) / f"date={day.isoformat()}" / "data.parquet")
            rows += table.num_rows
        out.append(Written(d.view, len(days), rows))
    return out


def _redacted(table: pa.Table, redactor: Redactor) -> pa.Table:
    """`table` with every secret form in its text columns replaced."""
    for i, f in enumerate(table.schema):
        if pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
            col = table.column(i)
            for form in redactor.forms:
                col = pc.replace_substring(col, pattern=form, replacement=MARK)
            table = table.set_column(i, f, col)
    return table


def _write(table, root: Path, rel: Path) -> None:
    """Write beside the target and rename over it: a reader sees a whole
    file. Any refusal of the file system (read-only, full, a file where a
    folder must be) is one InputError naming the file, no partial file left."""
    path = root / rel
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    except (OSError, pa.ArrowException) as exc:
        _discard(tmp)
        why = (
            exc.strerror
            if isinstance(exc, OSError) and exc.strerror
            else str(exc) or type(exc).__name__
        )
        raise InputError(f"export target {root}: cannot write {rel}: {why}") from None


def _discard(tmp: Path) -> None:
    """Remove a half-written file if there is one and the disk allows it."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass
