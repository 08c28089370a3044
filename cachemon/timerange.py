"""The one time range of the dashboard, as Grafana has it: a preset ending
now (15m … 30d) or a custom from–to, carried in a URL's query parameters so
a view can be bookmarked and linked (from an alert email, say).

Also the one display format of an instant (`stamp`) and the chart bucket
that fits a window (`step_for`). Logic takes `now` as a parameter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlencode

from cachemon.clock import DAY, HOUR, MINUTE, Window, as_utc, floor_to, parse_instant
from cachemon.errors import InputError

PRESETS: dict[str, timedelta] = {
    "15m": 15 * MINUTE,
    "1h": HOUR,
    "6h": 6 * HOUR,
    "24h": DAY,
    "7d": 7 * DAY,
    "30d": 30 * DAY,
}
DEFAULT_PRESET = "6h"
# A custom range longer than this is refused: the store keeps days, not years,
# and a chart of a decade of minutes would never draw.
MAX_LENGTH = 400 * DAY
# Chart buckets, finest first; a window gets the finest that gives at most MAX_POINTS.
STEPS = (MINUTE, 5 * MINUTE, 15 * MINUTE, HOUR, 6 * HOUR, DAY)
MAX_POINTS = 400
# The query parameters a dashboard URL carries.
RANGE, FROM, TO, ENDPOINT = "range", "from", "to", "endpoint"


def stamp(t: datetime | None) -> str:
    """The one display format of an instant: `2026-12-01 14:15Z` (UTC, to
    the minute); "—" for none."""
    if t is None:
        return "—"
    return as_utc(t).strftime("%Y-%m-%d %H:%MZ")


def _query_stamp(t: datetime) -> str:
    return as_utc(t).strftime("%Y-%m-%dT%H:%MZ")


@dataclass(frozen=True)
class TimeRange:
    """A preset ending now, or a custom [start, end) (both UTC minutes)."""

    preset: str | None = DEFAULT_PRESET
    start: datetime | None = None
    end: datetime | None = None

    def __post_init__(self):
        if self.preset is not None:
            if self.preset not in PRESETS:
                raise InputError(f"unknown range {self.preset!r}: use one of {', '.join(PRESETS)}")
            return
        if self.start is None or self.end is None:
            raise InputError("a custom range needs both from and to")
        if self.end <= self.start:
            raise InputError(
                f"range: to ({stamp(self.end)}) must be after from ({stamp(self.start)})"
            )
        if self.end - self.start > MAX_LENGTH:
            raise InputError(f"range: longer than {MAX_LENGTH.days} days")

    @classmethod
    def of(cls, preset: str) -> TimeRange:
        """A preset range (InputError for an unknown name)."""
        return cls(preset)

    @classmethod
    def between(cls, start: datetime, end: datetime) -> TimeRange:
        """A custom range, its ends floored to whole minutes (InputError when
        `end` is not at least a minute after `start`)."""
        return cls(None, floor_to(start, MINUTE), floor_to(end, MINUTE))

    @property
    def custom(self) -> bool:
        return self.preset is None

    @property
    def label(self) -> str:
        """ "6h", or "2026-12-01 14:15Z – 16:00Z" (the date once when both ends share it)."""
        if self.preset is not None:
            return self.preset
        end = stamp(self.end)
        if self.start.date() == self.end.date():
            end = end[11:]
        return f"{stamp(self.start)} – {end}"

    def window(self, now: datetime) -> Window:
        """The range as a window: a preset ends at `now` floored to the
        minute; a custom range is its from–to, cut at that minute (no empty
        future on a chart)."""
        e = floor_to(now, MINUTE)
        if self.preset is not None:
            return Window(e - PRESETS[self.preset], e)
        if self.start >= e:
            raise InputError(
                f"range: from ({stamp(self.start)}) is in the future (now {stamp(now)})"
            )
        return Window(self.start, min(self.end, e))

    def query(self) -> dict[str, str]:
        """The range as URL query parameters."""
        if self.preset is not None:
            return {RANGE: self.preset}
        return {FROM: _query_stamp(self.start), TO: _query_stamp(self.end)}


def _one(params: Mapping, name: str) -> str | None:
    value = params.get(name)
    if isinstance(value, list | tuple):  # a repeated parameter: the last one wins, as in Streamlit
        value = value[-1] if value else None
    return None if value is None else str(value)


def parse_query(params: Mapping) -> TimeRange:
    """The range a URL's query parameters name: `range=6h`, or `from=` and
    `to=` (ISO 8601, UTC); the default preset when none is given.
    InputError names the parameter that is wrong."""
    preset, lo, hi = _one(params, RANGE), _one(params, FROM), _one(params, TO)
    if lo is None and hi is None:
        return TimeRange.of(preset if preset is not None else DEFAULT_PRESET)
    if lo is None or hi is None:
        raise InputError(f"the link names {'from' if lo is not None else 'to'} without the other")
    return TimeRange.between(parse_instant(lo, FROM), parse_instant(hi, TO))


def step_for(window: Window) -> timedelta:
    """The chart bucket of a window: the finest of STEPS giving at most
    MAX_POINTS buckets (1 minute up to 6 h, 5 minutes for 24 h, 1 h for
    7 d, 6 h for 30 d)."""
    for step in STEPS:
        if window.length / step <= MAX_POINTS:
            return step
    return STEPS[-1]


def around(t: datetime, before: timedelta = HOUR, after: timedelta = HOUR) -> TimeRange:
    """The range around an instant (an alert's start, for a link to it)."""
    return TimeRange.between(t - before, t + after)


def link(url_path: str, tr: TimeRange, endpoint: str | None = None) -> str:
    """A dashboard link: `url_path` ("" for the Overview) with the range and
    endpoint as query parameters, e.g. /trends?range=6h&endpoint=title."""
    params = tr.query() | ({ENDPOINT: endpoint} if endpoint else {})
    query = urlencode(params, safe=":")  # 14:15Z stays readable in an email
    return f"/{url_path.strip('/')}?{query}"
