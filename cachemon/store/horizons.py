"""Retention horizons: where minute and hourly rows begin, and the checks on them.

`cachemon.ingest.retention` moves the horizons (compaction); this module only
reads them, so the readers (metrics, tuning) and the writer (ingest) check a
window against them without depending on the compaction code.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import duckdb

from cachemon.clock import iso
from cachemon.errors import StoreError

HORIZONS = "SELECT name, horizon FROM retention_state"


@dataclass(frozen=True)
class Horizons:
    """Minute rows exist from `minute` on, hourly rows from `hour` on (None: all kept so far)."""

    minute: datetime | None = None
    hour: datetime | None = None


def horizons(con: duckdb.DuckDBPyConnection) -> Horizons:
    """The store's current horizons."""
    return Horizons(**dict(con.execute(HORIZONS).fetchall()))


def _minute_horizon_after(con: duckdb.DuckDBPyConnection, start: datetime) -> datetime | None:
    """The minute horizon, if `start` lies before it."""
    h = horizons(con).minute
    return h if h is not None and start < h else None


def check_write(con: duckdb.DuckDBPyConnection, start: datetime) -> None:
    """Refuse a write that starts before the minute horizon: its hours and
    days hold compacted data that a rewrite from minutes would lose."""
    if h := _minute_horizon_after(con, start):
        raise StoreError(
            f"cannot write data from {iso(start)}: minute rows before {iso(h)} were compacted by retention "
            "([retention] minute_days), so that period is closed"
        )


def check_read(con: duckdb.DuckDBPyConnection, start: datetime, what: str = "this window") -> None:
    """Refuse a read needing minute rows from before the minute horizon."""
    if h := _minute_horizon_after(con, start):
        raise StoreError(
            f"{what} starts at {iso(start)}, but minute data before {iso(h)} has been compacted by retention "
            "([retention] minute_days); use a later window, or the hourly and daily views (docs/analysts.md)"
        )
