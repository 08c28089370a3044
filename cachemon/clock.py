"""Time: UTC instants, durations, metric periods and half-open windows.

Logic never reads the clock; shells call `utcnow()` once and pass `now` in.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum

from cachemon.errors import InputError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# How far ahead of the real clock a writing command may act: enough for
# clocks that disagree a little, too little to compact or evaluate a future
# that has no data (and so move retention horizons past every later write).
CLOCK_SKEW = timedelta(minutes=5)
# The instants cachemon accepts. Wide enough for any data, narrow enough that
# windows, durations and days around them stay far from datetime's limits
# (years 1 and 9999), so arithmetic on them never overflows.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
# The longest duration accepted anywhere (a silence, a window, a TTL).
MAX_DURATION = timedelta(days=36525)


def utcnow() -> datetime:
    """The current UTC instant; only shells call this."""
    return datetime.now(UTC)


def parse_duration(text: str, what: str = "duration") -> timedelta:
    """'90s', '15m', '6h', '7d', '2w' -> timedelta."""
    m = _DURATION.match(str(text))
    if not m:
        raise InputError(f"{what}: {text!r} is not a duration like 15m, 6h or 7d")
    seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    if not seconds <= MAX_DURATION.total_seconds():  # also inf, from a 400-digit number
        raise InputError(f"{what}: {text!r} is longer than {MAX_DURATION.days} days")
    return timedelta(seconds=seconds)


def days_span(days: float, what: str = "--days", maximum: float = MAX_DURATION.days) -> timedelta:
    """A positive, finite number of days (a command's --days) as a timedelta."""
    if not (isinstance(days, (int, float)) and math.isfinite(days) and 0 < days <= maximum):
        raise InputError(f"{what} must be positive and at most {maximum:g} days, got {days}")
    span = timedelta(days=days)
    if not span:  # positive, yet it rounds to no time at all: an empty window downstream
        raise InputError(f"{what} {days:g} is shorter than a microsecond")
    return span


def format_duration(d: timedelta) -> str:
    """Shortest exact form: 86400 s -> '1d', 5400 s -> '90m'."""
    secs = int(d.total_seconds())
    for unit in ("w", "d", "h", "m"):
        if secs and secs % _UNIT_SECONDS[unit] == 0:
            return f"{secs // _UNIT_SECONDS[unit]}{unit}"
    return f"{secs}s"


def parse_instant(text: str, what: str = "time") -> datetime:
    """An ISO 8601 instant; a naive one is taken as UTC. Returns aware UTC."""
    raw = str(text).strip()
    try:
        dt = as_utc(datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00")))
    except (ValueError, OverflowError):  # OverflowError: year 1 or 9999 shifted by its offset
        raise InputError(
            f"{what}: {text!r} is not an ISO 8601 time like 2026-11-28T15:00:00Z"
        ) from None
    if not EARLIEST <= dt < LATEST:
        raise InputError(
            f"{what}: {text!r} is outside the supported years {EARLIEST.year} to {LATEST.year - 1}"
        )
    return dt


def check_not_future(
    at: datetime, now: datetime, what: str = "--at", skew: timedelta = CLOCK_SKEW
) -> datetime:
    """Refuse, for anything that writes, an instant beyond `now` plus `skew`
    (the configured [ingest] clock_skew; CLOCK_SKEW by default): evaluating
    or compacting a future with no data would store results about nothing
    and move retention past every later write."""
    if at > now + skew:
        raise InputError(
            f"{what}: {iso(at)} is in the future (now is {iso(now)}); a command that writes may act at most "
            f"{format_duration(skew)} ahead ([ingest] clock_skew)"
        )
    return at


def ahead(t: datetime | None, now: datetime, skew: timedelta) -> bool:
    """Whether `t` is dated after `now` by more than `skew` (the configured
    [ingest] clock_skew): written by a clock ahead of real time, so it
    proves nothing about now (not fresh, not done, not already run)."""
    return t is not None and as_utc(t) - now > skew


def as_utc(dt: datetime) -> datetime:
    """Aware UTC datetime; naive input is taken to be UTC already."""
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def floor_to(dt: datetime, step: timedelta) -> datetime:
    """Floor an aware datetime to a multiple of `step` since the epoch."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    n = (as_utc(dt) - epoch) // step
    return epoch + n * step


def ceil_to(dt: datetime, step: timedelta) -> datetime:
    f = floor_to(dt, step)
    return f if f == as_utc(dt) else f + step


MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


class Period(Enum):
    """The metric periods the API accepts: an enum, never free text in SQL."""

    M15 = "15m"
    H1 = "1h"
    H24 = "24h"
    D7 = "7d"

    @property
    def length(self) -> timedelta:
        return parse_duration(self.value)

    @classmethod
    def parse(cls, text: str) -> Period:
        for p in cls:
            if p.value == text:
                return p
        allowed = ", ".join(p.value for p in cls)
        raise InputError(f"unknown period {text!r}: use one of {allowed}")


@dataclass(frozen=True)
class Window:
    """A half-open UTC interval [start, end)."""

    start: datetime
    end: datetime

    def __post_init__(self):
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("Window bounds must be timezone-aware UTC datetimes")
        if self.end < self.start:
            raise InputError(
                f"window end {self.end.isoformat()} is before start {self.start.isoformat()}"
            )

    @classmethod
    def ending(cls, end: datetime, length: timedelta) -> Window:
        """The window of `length` ending at `end` floored to the minute."""
        e = floor_to(end, MINUTE)
        return cls(e - length, e)

    @property
    def length(self) -> timedelta:
        return self.end - self.start

    def previous(self) -> Window:
        """The window of the same length just before this one."""
        return Window(self.start - self.length, self.start)

    def split(self, step: timedelta) -> list[Window]:
        """Consecutive windows of at most `step`, aligned to multiples of step."""
        out, cur = [], self.start
        while cur < self.end:
            nxt = min(floor_to(cur, step) + step, self.end)
            out.append(Window(cur, nxt))
            cur = nxt
        return out

    def __str__(self) -> str:
        return f"[{iso(self.start)}, {iso(self.end)})"


def iso(dt: datetime) -> str:
    """UTC ISO 8601 with a Z suffix, seconds precision."""
    return as_utc(dt).strftime("%Y-%m-%dT%H:%M:%SZ")
