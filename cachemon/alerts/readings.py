"""An alert's value, labelled with the window it was read over: the value
when it fired and the value now.

A health banner that shows the value at firing (36.7 %) beside KPIs of
another window (62 %) says two things that look contradictory; each value
here carries its rule's window and that window's end, so every surface
(the Overview banner, the Alerts page, the alert email, the /metrics JSON)
says "36.7% over 15m to 13:05Z when it fired; 58.1% over 15m to 13:30Z now".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb

from cachemon.alerts.rules import Rule, format_value
from cachemon.clock import MINUTE, floor_to, format_duration, iso
from cachemon.jsontext import significant

# The value an instance had when it started firing (its transition into
# firing), with the data end of that evaluation (the window ended there
# when the data lagged).
FIRED = """
SELECT h.value,
       (SELECT max(e.data_until) FROM alert_evaluations e WHERE e.evaluated_at = h.changed_at)
FROM alert_history h
WHERE h.rule = $rule AND h.endpoint = $endpoint AND h.changed_at = $since AND h.to_state = 'firing'
LIMIT 1
"""


def window_end(at: datetime, data_until: datetime | None) -> datetime:
    """Where an evaluation at `at` ends its rule's window: at `at`, or where
    the data ends when it lags (floored to the minute: rollups are per minute)."""
    return floor_to(min(at, data_until) if data_until is not None else at, MINUTE)


@dataclass(frozen=True)
class Reading:
    """One value of a rule's metric, and the window it was read over
    (`window` None: a point reading, the data age)."""

    value: float | None
    unit: str
    end: datetime
    window: timedelta | None

    def text(self) -> str:
        """`36.7% over 15m to 2026-11-19T13:05:00Z` (or `… at …` for a point reading)."""
        shown = format_value(self.value, self.unit)
        if self.window is None:
            return f"{shown} at {iso(self.end)}"
        return f"{shown} over {format_duration(self.window)} to {iso(self.end)}"

    def to_json(self) -> dict:
        return {
            "value": None if self.value is None else significant(self.value),
            "unit": self.unit,
            "window": format_duration(self.window) if self.window is not None else None,
            "windowEnd": iso(self.end),
        }


@dataclass(frozen=True)
class AlertValues:
    """A firing alert's value when it fired and now, each with its window."""

    rule: str  # what the rule watches: "Cache miss rate > 15.0% (title)"
    fired: Reading | None
    now: Reading | None

    def text(self) -> str:
        """One line: the rule, then each value labelled with its window and when."""
        parts = [
            f"{r.text()} {when}"
            for r, when in ((self.fired, "when it fired"), (self.now, "now"))
            if r is not None
        ]
        return f"{self.rule}: " + "; ".join(parts)

    def to_json(self) -> dict:
        return {
            "rule": self.rule,
            "atFiring": self.fired.to_json() if self.fired else None,
            "now": self.now.to_json() if self.now else None,
        }


def describe(rule: Rule, endpoint: str) -> str:
    """The rule as people read it, with its endpoint."""
    return rule.describe() + (f" ({endpoint})" if endpoint else "")


def reading(rule: Rule, value: float | None, at: datetime, data_until: datetime | None) -> Reading:
    """The reading of an evaluation at `at`: the data age is read at `at`,
    every other metric over the rule's window ending at `window_end`."""
    if rule.metric == "data_age":
        return Reading(value, rule.unit, at, None)
    return Reading(value, rule.unit, window_end(at, data_until), rule.window)


def fired(
    con: duckdb.DuckDBPyConnection, rule: Rule, endpoint: str, since: datetime
) -> Reading | None:
    """The value the instance had when it started firing at `since` (None
    when the history holds no such transition)."""
    rows = con.execute(FIRED, {"rule": rule.name, "endpoint": endpoint, "since": since}).fetchall()
    if not rows:
        return None
    value, data_until = rows[0]
    return reading(rule, value, since, data_until)
