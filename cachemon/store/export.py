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

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cachemon import jsontext
from cachemon.clock import DAY, floor_to
from cachemon.redact import MARK, Redactor
from cachemon.store import objectstore
from cachemon.store.views import SCHEMA


# Parquet export: each dataset is one analyst view, written per UTC day to
# <target>/<view>/date=YYYY-MM-DD/data.parquet (Hive partitioning), so any
# engine reads it and a re-export replaces whole days. The target is a folder
# or an S3-compatible bucket (objectstore). A day is fetched and written at a
# time, so memory stays bounded by one day of the largest view.
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
    days: int  # days of the store exported (from --since on)
    rows: int  # rows in those days
    uploaded: int = 0  # days written this time (new or changed); the others were unchanged


# Beside the datasets' folders, `_manifest/<view>.json` lists per day of a
# view its rows, file size and fingerprint (readers of `<view>/` never see it).
# A day is written again only when its fingerprint or its file's size
# differs (new data, a changed view, a deleted file), and the manifest is
# written after the days it lists, so a reader trusting it never misses one.
MANIFEST = "_manifest"
FORMAT = 1  # of the manifest and fingerprint; another value re-exports every day
_ROW = "_cachemon_row"  # the alias a row is hashed under (no view has such a column)


def _days_sql(d: Dataset) -> str:
    return (
        f"SELECT DISTINCT CAST(date_trunc('day', {d.time}) AS DATE) AS d FROM {SCHEMA}.{d.view} "
        f"WHERE $since IS NULL OR {d.time} >= $since ORDER BY d"
    )


def _day_sql(d: Dataset) -> str:
    return f"SELECT * FROM {SCHEMA}.{d.view} WHERE {d.time} >= $lo AND {d.time} < $hi"


def _columns_sql(d: Dataset) -> str:
    return f"DESCRIBE SELECT * FROM {SCHEMA}.{d.view}"  # names and types, nothing computed


# A day's rows are kept once in a temporary table (the view is computed once
# whether the day is then skipped or written), and fingerprinted order-free
# there: the row count and the sum of the rows' hashes (DuckDB's hash of the
# whole row), so an unchanged day is recognised without fetching or encoding it.
_DAY = "_cachemon_export_day"
_REDACTED_DAY = "_cachemon_export_redacted"  # a message view's day as written


def _keep_day_sql(d: Dataset) -> str:
    return f"CREATE OR REPLACE TEMP TABLE {_DAY} AS {_day_sql(d)}"


def _print_sql(table: str) -> str:
    return f"SELECT count(*), CAST(sum(hash({_ROW})) AS VARCHAR) FROM {table} {_ROW}"


# In a fixed order, so the same rows make the same file, byte for byte: a
# day written again (its object was lost) then matches its manifest entry,
# and sync tools see no change.
_DAY_ROWS_SQL = f"SELECT * FROM {_DAY} ORDER BY ALL"
_DROP_DAY_SQL = f"DROP TABLE IF EXISTS {_DAY}"


def parquet(
    con: duckdb.DuckDBPyConnection,
    to: str | os.PathLike,
    since: datetime | None = None,
    redactor: Redactor | None = None,
    env: Mapping[str, str] | None = None,
) -> list[Written]:
    """Write every dataset's new or changed days (from the day of `since`
    on) under `to`: a folder, or `s3://bucket/prefix` with the endpoint and
    credentials from `env` (default: the environment; see objectstore).
    `redactor`: the secrets to keep out (default: the environment's)."""
    env = os.environ if env is None else env
    redactor = Redactor.from_env(env) if redactor is None else redactor
    target = objectstore.open_target(to, env, redactor)
    lo = floor_to(since, DAY) if since else None
    return [_dataset(con, target, d, lo, redactor) for d in DATASETS]


def _dataset(con, target, d: Dataset, lo: datetime | None, redactor: Redactor) -> Written:
    """Export one dataset's days; its manifest last."""
    days = [r[0] for r in con.execute(_days_sql(d), {"since": lo}).fetchall()]
    schema = "; ".join(f"{r[0]} {r[1]}" for r in con.execute(_columns_sql(d)).fetchall())
    present = target.sizes(d.view)
    listed = _manifest(target.read(f"{MANIFEST}/{d.view}.json"))
    # Only days whose file is there stay listed: a deleted file is written again.
    kept = {day: e for day, e in listed.items() if present.get(_rel(d, day)) == e["bytes"]}
    rows = uploaded = 0
    for day in days:
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        try:
            con.execute(_keep_day_sql(d), {"lo": start, "hi": start + DAY})
            table = None
            if d.view in MESSAGE_DATASETS:  # fingerprinted as written: with today's secrets out
                table = _redacted(con.sql(_DAY_ROWS_SQL).to_arrow_table(), redactor)
                con.register(_REDACTED_DAY, table)
                try:
                    n, h = con.execute(_print_sql(_REDACTED_DAY)).fetchall()[0]
                finally:
                    con.unregister(_REDACTED_DAY)
            else:
                n, h = con.execute(_print_sql(_DAY)).fetchall()[0]
            rows += n
            fingerprint = hashlib.sha256(f"{FORMAT}\n{schema}\n{n}\n{h}".encode()).hexdigest()
            if kept.get(day.isoformat(), {}).get("fingerprint") == fingerprint:
                continue
            data = _encoded(con.sql(_DAY_ROWS_SQL).to_arrow_table() if table is None else table)
        finally:
            con.execute(_DROP_DAY_SQL)
        target.put(_rel(d, day.isoformat()), data)
        kept[day.isoformat()] = {"rows": n, "bytes": len(data), "fingerprint": fingerprint}
        uploaded += 1
    if kept != listed:
        body = {"format": FORMAT, "dataset": d.view, "days": dict(sorted(kept.items()))}
        target.put(f"{MANIFEST}/{d.view}.json", (jsontext.dumps(body, indent=1) + "\n").encode())
    return Written(d.view, len(days), rows, uploaded)


def _rel(d: Dataset, day: str) -> str:
    return f"{d.view}/date={day}/data.parquet"


def _manifest(data: bytes | None) -> dict[str, dict]:
    """The days a manifest lists; none when there is none, or it is not one
    this version wrote (then every day is written again)."""
    if data is None:
        return {}
    try:
        body = json.loads(data)
        days = body["days"] if body.get("format") == FORMAT else {}
        return {
            str(day): {
                "rows": int(e["rows"]),
                "bytes": int(e["bytes"]),
                "fingerprint": str(e["fingerprint"]),
            }
            for day, e in days.items()
        }
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError):
        return {}  # not a manifest this cachemon wrote: every day is written again


def _encoded(table: pa.Table) -> bytes:
    """`table` as the bytes of a zstd-compressed Parquet file."""
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue().to_pybytes()


def _redacted(table: pa.Table, redactor: Redactor) -> pa.Table:
    """`table` with every secret form in its text columns replaced."""
    for i, f in enumerate(table.schema):
        if pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
            col = table.column(i)
            for form in redactor.forms:
                col = pc.replace_substring(col, pattern=form, replacement=MARK)
            table = table.set_column(i, f, col)
    return table
