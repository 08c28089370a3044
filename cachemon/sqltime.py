"""Time buckets in SQL by integer arithmetic on epoch microseconds.

DuckDB's `date_trunc` on a TIMESTAMPTZ works in calendar time (the session
time zone's), about twice as slow as flooring the epoch microseconds; in
UTC the two agree. Ingestion groups millions of rows a day by minute, hour
and day, so it floors integers (`cachemon.rollups`, `cachemon.ingest`,
`cachemon.store.topkeys`). A base module with no imports: the CLI's
`metrics` path reads it without loading pyarrow.
"""

from __future__ import annotations


def floored_us(expr: str, step_us: int) -> str:
    """SQL: the integer `expr` (epoch microseconds) floored to a multiple of
    `step_us`, also before 1970 (where DuckDB's % and // round towards 0).
    `expr` is a constant of the caller's SQL, never user text."""
    return f"({expr} - (({expr} % {step_us}) + {step_us}) % {step_us})"


def bucket_sql(column: str, seconds: int) -> str:
    """SQL: the TIMESTAMPTZ `column` floored to a multiple of `seconds` (an
    hour, a day) since the epoch, as a TIMESTAMPTZ: date_trunc's result in
    UTC, by integer arithmetic."""
    return f"to_timestamp({floored_us(f'epoch_us({column})', seconds * 1_000_000)} / 1000000)"


# The hour of a stored `minute` column: what every minute table's hours are.
HOUR_OF_MINUTE = bucket_sql("minute", 3600)
