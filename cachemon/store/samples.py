"""SHARDS samples: the raw request times of the keys whose hash
(`cachemon.keyhash`) falls under a rate R, kept so the TTL what-if can replay
them exactly (Waldspurger et al., FAST 2015).

The `Samples` value is the interface between the store and `cachemon.tuning`;
ingestion fills the tables (`cachemon.ingest.samples`), `read` returns one
endpoint's span of them and `status` says what there is, and why not.

`sample_minutes` records, per source and minute written, the rate that
minute was sampled at, or NULL when the source has no key hash (an Analytics
Engine dataset without `[columns] key_hash`). A span is a consistent sample at
the smallest rate of its minutes: rows of keys above it are dropped.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime

import duckdb
import numpy as np

from cachemon.clock import MINUTE
from cachemon.events import EARLIEST, LATEST, TIERS
from cachemon.store.connection import first_row

# Said on every surface where the what-if falls back to the model for it.
NO_KEY_HASH = "no key hash in the dataset"
NO_SAMPLES = "no samples stored for the span"
NO_KEY_UNDER_RATE = "samples taken at rate {rate:g}, but no key of the endpoint hashed under it"

# Over [lo, hi): the smallest and largest rate, the sources without a key
# hash, and the minutes covered (any source).
SPAN = """
SELECT min(rate), max(rate), min(minute), max(minute), count(DISTINCT minute),
       list(DISTINCT source ORDER BY source) FILTER (WHERE rate IS NULL)
FROM sample_minutes WHERE minute >= $lo AND minute < $hi
"""
ROWS = f"""
SELECT s.key_id, epoch_us(s.t) AS t_us,
       CAST(list_position({list(TIERS)!r}, s.tier) - 1 AS TINYINT) AS tier, s.error, s.weight
FROM samples s JOIN sample_keys k USING (key_id)
WHERE s.endpoint = $endpoint AND s.t >= $lo AND s.t < $hi AND k.key_hash < $rate
"""
COUNT = """
SELECT count(*) FROM samples s JOIN sample_keys k USING (key_id)
WHERE s.t >= $lo AND s.t < $hi AND k.key_hash < $rate
"""


@dataclass(frozen=True, eq=False)
class Samples:
    """One endpoint's sampled requests over a span, one array element per
    stored request row (not sorted)."""

    endpoint: str
    rate: float  # R: every key with key_hash < R is in the sample, with all its requests
    key: np.ndarray  # int64: equal values are the same key
    t_us: np.ndarray  # int64: request time, epoch microseconds (UTC)
    tier: np.ndarray  # int8: index into cachemon.events.TIERS of the tier that served it
    error: np.ndarray  # bool: status == "error"
    weight: np.ndarray  # float64: the row's sample_interval (1.0 unless the source thinned it)
    # The minutes the sample covers within the span asked for: from the first
    # to the last sampled minute, and how many minutes between them no source
    # sampled (a gap in the data, or a source that started later).
    start: datetime | None = None
    end: datetime | None = None
    missing_minutes: int = 0

    def __len__(self) -> int:
        return len(self.t_us)


@dataclass(frozen=True)
class SampleStatus:
    """What the store holds for a span: whether samples exist, from when, at
    which rate, and whether a source lacks the key hash."""

    start: datetime | None  # first sampled minute (None: no minute sampled)
    end: datetime | None  # the end of the last sampled minute
    rate: float | None  # the smallest rate in the span: what `read` samples at
    max_rate: float | None  # differs from `rate` when the budget or config changed R
    minutes: int  # distinct minutes sampled
    rows: int  # sample rows at `rate` (all endpoints)
    without_key_hash: tuple[str, ...]  # sources whose minutes have no key hash

    @property
    def usable(self) -> bool:
        return self.reason is None

    @property
    def reason(self) -> str | None:
        """Why `read` gives no sample for the span (None: it gives one)."""
        if self.without_key_hash:
            return f"{NO_KEY_HASH} ({', '.join(self.without_key_hash)})"
        if self.rate is None or self.rate <= 0:
            return NO_SAMPLES
        return None


def status(
    con: duckdb.DuckDBPyConnection, start: datetime | None = None, end: datetime | None = None
) -> SampleStatus:
    """The samples of [start, end) (default: everything stored)."""
    st = _span(con, start or EARLIEST, end or LATEST)
    if not st.rate:
        return st
    p = {"lo": start or EARLIEST, "hi": end or LATEST, "rate": st.rate}
    return dataclasses.replace(st, rows=first_row(con, COUNT, p)[0])


def _span(con: duckdb.DuckDBPyConnection, lo: datetime, hi: datetime) -> SampleStatus:
    """The status of [lo, hi) from the sampled minutes alone (rows: 0)."""
    rate, top, first, last, minutes, no_hash = first_row(con, SPAN, {"lo": lo, "hi": hi})
    return SampleStatus(
        start=first,
        end=last + MINUTE if last is not None else None,
        rate=rate,
        max_rate=top,
        minutes=minutes,
        rows=0,
        without_key_hash=tuple(no_hash or ()),
    )


def no_key_hash(
    con: duckdb.DuckDBPyConnection, start: datetime | None = None, end: datetime | None = None
) -> tuple[str, ...]:
    """The sources whose data in [start, end) came without a key hash, so no
    SHARDS sample of that traffic exists (empty: none)."""
    return _span(con, start or EARLIEST, end or LATEST).without_key_hash


def read(
    con: duckdb.DuckDBPyConnection, endpoint: str, start: datetime, end: datetime
) -> Samples | None:
    """`endpoint`'s samples of [start, end), a consistent SHARDS sample at the
    smallest rate of the span; None when the span has none (`status` says
    why: no samples, or a source without the key hash, whose traffic a
    sample of the others would leave out)."""
    st = _span(con, start, end)
    if not st.usable:
        return None
    p = {"endpoint": endpoint, "lo": start, "hi": end, "rate": st.rate}
    cols = con.execute(ROWS, p).fetchnumpy()
    span_minutes = int((st.end - st.start) / MINUTE)
    return Samples(
        endpoint=endpoint,
        rate=st.rate,
        key=np.asarray(cols["key_id"], dtype=np.int64),
        t_us=np.asarray(cols["t_us"], dtype=np.int64),
        tier=np.asarray(cols["tier"], dtype=np.int8),
        error=np.asarray(cols["error"], dtype=bool),
        weight=np.asarray(cols["weight"], dtype=np.float64),
        start=st.start,
        end=st.end,
        missing_minutes=span_minutes - st.minutes,
    )
