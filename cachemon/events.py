"""The event contract: one row per cache lookup or gauge reading.

Raw input (a file, an API response, the simulator) becomes an `EventFrame`
once, here, at the edge; everything downstream trusts its schema. Events are
columnar (a pyarrow Table) because a week is tens of millions of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cachemon.errors import InputError

# The contract's names, defined (without numpy or pyarrow) in cachemon.names.
from cachemon.names import ENDPOINTS, GAUGES, KINDS, STATUSES, TIERS  # noqa: F401

SCHEMA = pa.schema(
    [
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("tier", pa.string()),
        ("key", pa.string()),
        ("endpoint", pa.string()),
        ("experiment", pa.string()),
        ("cohort", pa.string()),
        ("status", pa.string()),
        ("kind", pa.string()),
        ("latency_ms", pa.float64()),
        ("bytes", pa.float64()),
        ("sample_interval", pa.float64()),
    ]
)
REQUIRED = ("timestamp", "tier", "key", "endpoint", "latency_ms")
GAUGE_OPTIONAL = ("tier", "key", "endpoint")  # a file of gauge rows only may leave these out
# Names people read in a terminal, a table or a page: no control character
# (C0, DEL, C1) may reach one (an ESC rewrites the terminal, a CR hides
# text). Cache keys are left alone: they are stored and shown escaped.
CONTROL_CHARS = r"[\x{00}-\x{1f}\x{7f}-\x{9f}]"
NAME_FIELDS = ("endpoint", "experiment", "cohort")
DEFAULTS = {
    "experiment": "",
    "cohort": "",
    "status": "ok",
    "kind": "request",
    "bytes": 0.0,
    "sample_interval": 1.0,
}

# Sane bounds: a value outside them is a unit mix-up or garbage, and one such
# value would dominate every sum it enters (1e308 * sample_interval is inf).
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)  # the hard limit when no `latest` is given
MAX_LATENCY_MS = 3_600_000.0  # an hour: no request waits longer (Workers time out far sooner)
MAX_BYTES = 5e12  # 5 TB, the largest R2 object
MAX_GAUGE = 1e18  # an exabyte: gauges (queue depth, storage bytes) carry their value in latency_ms
MAX_SAMPLE_INTERVAL = 1e9  # Analytics Engine sample intervals are powers of ten, far below this
# Integer timestamps are epoch milliseconds; the accepted span in that unit.
_MS_LO = int(EARLIEST.timestamp() * 1000)
_MS_HI = int(LATEST.timestamp() * 1000)


@dataclass(frozen=True)
class EventFrame:
    """Validated events in the canonical SCHEMA (string columns may be
    dictionary-encoded)."""

    table: pa.Table

    def __len__(self) -> int:
        return self.table.num_rows

    @classmethod
    def empty(cls) -> EventFrame:
        return cls(SCHEMA.empty_table())

    def time_range(self):
        """(min, max) timestamp as aware datetimes, or None when empty."""
        if self.table.num_rows == 0:
            return None
        mm = pc.min_max(self.table["timestamp"]).as_py()
        return mm["min"], mm["max"]


RowLabel = Callable[[int], str]


def _default_label(i: int) -> str:
    return f"row {i + 1}"


def validate(
    table: pa.Table,
    origin: str,
    row_label: RowLabel = _default_label,
    latest: datetime | None = None,
) -> EventFrame:
    """Check and normalise raw events; raise InputError naming `origin`, the
    first offending row and the field, without changing anything. Events
    after `latest` (now plus the clock-skew tolerance) are refused: one
    event from the future would make old data look fresh."""
    check_unique_columns(table.column_names, origin)
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing and (not set(missing) <= set(GAUGE_OPTIONAL) or _has_requests(table)):
        why = (
            " (request rows need them; a file of gauge rows only may leave out tier, key and endpoint)"
            if set(missing) <= set(GAUGE_OPTIONAL)
            else ""
        )
        raise InputError(f"{origin}: missing required column(s) {', '.join(missing)}{why}")
    n = table.num_rows
    cols = {}
    for name in SCHEMA.names:
        if name in table.column_names:
            cols[name] = table[name]
        else:  # a default, or "" for a gauge row's tier, key and endpoint (as the simulator writes them)
            cols[name] = (
                pa.chunked_array([pa.array([DEFAULTS.get(name, "")] * n, SCHEMA.field(name).type)])
                if n
                else pa.chunked_array([], SCHEMA.field(name).type)
            )
    fail = _Failer(origin, row_label)
    cols["timestamp"] = _timestamps(cols["timestamp"], fail, latest)
    for name in ("tier", "key", "endpoint", "experiment", "cohort", "status", "kind"):
        cols[name] = _strings(cols[name], name, fail)
    for name in ("latency_ms", "bytes", "sample_interval"):
        cols[name] = _numbers(cols[name], name, fail)
    _check_values(cols, fail)
    return EventFrame(pa.table([cols[n] for n in SCHEMA.names], schema=SCHEMA))


def check_unique_columns(names, origin: str) -> None:
    """Refuse a file naming a column cachemon reads twice (`a,a` in a CSV
    header): which one is meant cannot be known."""
    twice = sorted({n for n in names if n in SCHEMA.names and list(names).count(n) > 1})
    if twice:
        raise InputError(
            f"{origin}: column(s) {', '.join(twice)} appear more than once; keep one of each"
        )


def _has_requests(table: pa.Table) -> bool:
    """Whether any row is (or defaults to) a request."""
    if "kind" not in table.column_names:
        return True
    try:
        kind = table["kind"].cast(pa.string())
    except pa.ArrowException:
        return True  # the kind column's type is refused later, with its name
    return bool(pc.any(pc.fill_null(pc.equal(kind, "request"), True)).as_py())


class _Failer:
    def __init__(self, origin: str, row_label: RowLabel):
        self.origin, self.row_label = origin, row_label

    def check(self, bad: pa.ChunkedArray | pa.Array, field: str, problem: Callable[[int], str]):
        """Raise for the first row where `bad` is true (null counts as false)."""
        bad = pc.fill_null(bad, False)
        count = pc.sum(bad).as_py() or 0
        if count == 0:
            return
        first = pc.indices_nonzero(
            pa.concat_arrays(bad.chunks) if isinstance(bad, pa.ChunkedArray) else bad
        )[0].as_py()
        more = f" (and {count - 1} more rows)" if count > 1 else ""
        raise InputError(f"{self.origin}: {self.row_label(first)}{more}: {field} {problem(first)}")


def _timestamps(col: pa.ChunkedArray, fail: _Failer, latest: datetime | None) -> pa.ChunkedArray:
    t = col.type
    fail.check(pc.is_null(col), "timestamp", lambda i: "is missing")
    if pa.types.is_timestamp(t):
        if t.tz is None:
            col = pc.assume_timezone(col, "UTC")
        out = _checked_cast(col, fail)
    elif pa.types.is_integer(t):
        out = _epoch_ms(col, fail)
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        out = _parse_iso(col, fail)
    else:
        raise InputError(
            f"{fail.origin}: column timestamp has type {t}; use ISO 8601 text or epoch milliseconds"
        )
    fail.check(
        pc.less(out, pa.scalar(EARLIEST, out.type)),
        "timestamp",
        lambda i: f"{out[i].as_py().isoformat()} is before 2000-01-01",
    )
    hi = min(latest, LATEST) if latest is not None else LATEST
    why = (
        "is in the future (after now plus the clock-skew tolerance [ingest] clock_skew)"
        if latest
        else "is after 2199"
    )
    fail.check(
        pc.greater(out, pa.scalar(hi, out.type)),
        "timestamp",
        lambda i: f"{out[i].as_py().isoformat()} {why}",
    )
    return out


def _checked_cast(col: pa.ChunkedArray, fail: _Failer) -> pa.ChunkedArray:
    """A timestamp column in microseconds; values that do not fit (a
    nanosecond column holds 1677-2262 only, a second column anything) are
    checked in their own unit first, so nothing wraps."""
    unit = col.type.unit
    per_ms = {"s": 0.001, "ms": 1, "us": 1000, "ns": 1_000_000}[unit]
    raw = col.cast(pa.int64())
    lo, hi = int(_MS_LO * per_ms), int(_MS_HI * per_ms)
    fail.check(
        pc.or_(pc.less(raw, lo), pc.greater(raw, hi)),
        "timestamp",
        lambda i: f"{raw[i].as_py()} ({unit} since 1970) is outside 2000-2199",
    )
    # Truncating sub-microsecond digits is fine; the range is checked above.
    return pc.cast(col, pa.timestamp("us", tz="UTC"), safe=False)


def _epoch_ms(col: pa.ChunkedArray, fail: _Failer) -> pa.ChunkedArray:
    """Integers are epoch milliseconds, the unit of JavaScript's Date.now().
    Seconds, microseconds and nanoseconds are refused by their size before
    any arithmetic, so none can overflow or wrap to a plausible date."""
    # Compared as floats first: a uint64 above 2**63 does not fit int64,
    # and every value in range is exact as a float.
    approx = col.cast(pa.float64(), safe=False)
    fail.check(
        pc.or_(pc.less(approx, _MS_LO), pc.greater(approx, _MS_HI)),
        "timestamp",
        lambda i: (
            f"{col[i].as_py()} is not epoch milliseconds in 2000-2199{_unit_hint(col[i].as_py())}"
        ),
    )
    ms = col.cast(pa.int64())
    return pc.multiply(ms, 1000).cast(pa.timestamp("us", tz="UTC"))


def _unit_hint(v: int) -> str:
    if _MS_LO // 1000 <= v <= _MS_HI // 1000:
        return " (it looks like epoch seconds: multiply by 1000)"
    if _MS_LO * 1000 <= v <= _MS_HI * 1000:
        return " (it looks like epoch microseconds: divide by 1000)"
    if _MS_LO * 1_000_000 <= v <= _MS_HI * 1_000_000:
        return " (it looks like epoch nanoseconds: divide by 1000000)"
    return ""


def _parse_iso(col: pa.ChunkedArray, fail: _Failer) -> pa.ChunkedArray:
    import pandas as pd

    values = col.to_pandas()
    parsed = pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601")
    bad = parsed.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        fail.check(
            pa.array(bad), "timestamp", lambda _: f"{values.iloc[i]!r} is not an ISO 8601 time"
        )
    return pa.chunked_array([pa.array(parsed.dt.as_unit("us"), type=pa.timestamp("us", tz="UTC"))])


def _strings(col: pa.ChunkedArray, name: str, fail: _Failer) -> pa.ChunkedArray:
    t = col.type
    if pa.types.is_dictionary(t):
        col = col.cast(pa.string())
        t = col.type
    if pa.types.is_large_string(t):
        col = col.cast(pa.string())
    elif pa.types.is_null(t):
        col = col.cast(pa.string())
    elif not pa.types.is_string(t):
        raise InputError(f"{fail.origin}: column {name} has type {t}; it must be text")
    col = _valid_utf8(col)
    if name in DEFAULTS:
        col = pc.fill_null(col, DEFAULTS[name])
    return col


def _valid_utf8(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """`col` with invalid UTF-8 replaced by U+FFFD. The file readers do not
    check it, DuckDB refuses it, and keys come from the internet: like a
    browser, keep the text and mark what could not be read."""
    try:
        col.validate(full=True)
        return col
    except pa.ArrowInvalid:
        raw = col.cast(pa.binary()).to_pylist()
        return pa.chunked_array(
            [
                pa.array(
                    [None if b is None else b.decode("utf-8", "replace") for b in raw], pa.string()
                )
            ]
        )


def _numbers(col: pa.ChunkedArray, name: str, fail: _Failer) -> pa.ChunkedArray:
    t = col.type
    if pa.types.is_null(t):
        col = col.cast(pa.float64())
    elif not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)):
        raise InputError(f"{fail.origin}: column {name} has type {t}; it must be a number")
    # Unchecked: a huge integer (uint64 2**64-1) becomes a huge float, which
    # the limits below refuse with the row and field named.
    col = col.cast(pa.float64(), safe=False)
    if name in DEFAULTS:
        col = pc.fill_null(col, DEFAULTS[name])
    fail.check(pc.is_null(col), name, lambda i: "is missing")
    fail.check(
        pc.invert(pc.is_finite(col)), name, lambda i: f"is not a finite number ({col[i].as_py()})"
    )
    return col


def _check_values(cols: dict, fail: _Failer) -> None:
    kind = cols["kind"]
    fail.check(
        pc.invert(pc.is_in(kind, pa.array(KINDS))),
        "kind",
        lambda i: f"{kind[i].as_py()!r} is unknown (use one of {', '.join(KINDS)})",
    )
    is_req = pc.equal(kind, "request")
    tier = cols["tier"]
    fail.check(
        pc.and_(is_req, pc.invert(pc.is_in(tier, pa.array(TIERS)))),
        "tier",
        lambda i: f"{tier[i].as_py()!r} is unknown (use one of {', '.join(TIERS)})",
    )
    status = cols["status"]
    fail.check(
        pc.invert(pc.is_in(status, pa.array(STATUSES))),
        "status",
        lambda i: f"{status[i].as_py()!r} is unknown (use ok or error)",
    )
    for name in ("key", "endpoint"):
        col = cols[name]
        # Kleene logic: a null must count as empty, not make the test unknown.
        fail.check(
            pc.and_kleene(is_req, pc.or_kleene(pc.is_null(col), pc.equal(col, ""))),
            name,
            lambda i: "is empty",
        )
    for name in NAME_FIELDS:
        col = cols[name]
        fail.check(
            pc.match_substring_regex(col, CONTROL_CHARS),
            name,
            lambda i, c=col: f"{c[i].as_py()!r} contains a control character (NUL, ESC, CR, …)",
        )
    lat = cols["latency_ms"]
    fail.check(pc.less(lat, 0), "latency_ms", lambda i: f"is negative ({lat[i].as_py()})")
    fail.check(
        pc.and_(is_req, pc.greater(lat, MAX_LATENCY_MS)),
        "latency_ms",
        lambda i: f"{lat[i].as_py():g} is beyond the limit of {MAX_LATENCY_MS:g} ms (an hour)",
    )
    fail.check(
        pc.greater(lat, MAX_GAUGE),
        "latency_ms",
        lambda i: f"{lat[i].as_py():g} is beyond the gauge limit of {MAX_GAUGE:g}",
    )
    b = cols["bytes"]
    fail.check(pc.less(b, 0), "bytes", lambda i: f"is negative ({b[i].as_py()})")
    fail.check(
        pc.greater(b, MAX_BYTES),
        "bytes",
        lambda i: f"{b[i].as_py():g} is beyond the limit of {MAX_BYTES:g} (5 TB)",
    )
    si = cols["sample_interval"]
    fail.check(pc.less(si, 1), "sample_interval", lambda i: f"must be at least 1 ({si[i].as_py()})")
    fail.check(
        pc.greater(si, MAX_SAMPLE_INTERVAL),
        "sample_interval",
        lambda i: f"{si[i].as_py():g} is beyond the limit of {MAX_SAMPLE_INTERVAL:g}",
    )
