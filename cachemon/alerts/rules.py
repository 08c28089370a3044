"""Alert rules: the metric catalogue, the seed's built-in thresholds, and the
user's rules from TOML (`[[alerts.rules]]`), validated at load.

A rule watches one metric over a window (per endpoint, or all traffic) and
breaches when `value op threshold` holds (a threshold rule) or when the
value's robust z-score against the same minutes of earlier weeks passes
`threshold` in its direction (an anomaly rule). Its `type` is the alert
type of the seed (`miss_rate`, `p99_latency`, ...): notifications group and
deduplicate by it, and a critical alert inhibits a warning of the same type.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from cachemon.clock import format_duration, parse_duration
from cachemon.errors import ConfigError
from cachemon.notify.channels import CHANNELS
from cachemon.settings import AlertsConfig
from cachemon.severity import Severity

if TYPE_CHECKING:  # an annotation only: config reads rules without the metrics (start-up time)
    from cachemon.metrics.series import Observation


@dataclass(frozen=True)
class MetricDef:
    """How to read one alertable metric from an Observation."""

    unit: str  # "%", "ms", "bytes", "jobs", "requests", "s"
    read: Callable[[Observation], float | None]
    per_request: bool  # needs traffic (min_requests) and may filter endpoints
    label: str
    windowed: bool = True  # a figure of the window (False: a latest reading, the data age)


def _share(tier: str):
    return lambda o: o.volume.share(tier) if o.requests else None


METRICS: dict[str, MetricDef] = {
    "miss_rate": MetricDef(
        "%", lambda o: o.volume.share("api") if o.requests else None, True, "Cache miss rate"
    ),
    "combined_hit_rate": MetricDef("%", lambda o: o.combined_hit_rate, True, "Combined hit rate"),
    "edge_hit_rate": MetricDef("%", _share("edge"), True, "Edge hit rate"),
    "kv_hit_rate": MetricDef("%", _share("kv"), True, "KV hit rate"),
    "r2_hit_rate": MetricDef("%", _share("r2"), True, "R2 rehydration rate"),
    "error_rate": MetricDef("%", lambda o: o.error_rate, True, "Error rate"),
    "p50_latency": MetricDef("ms", lambda o: o.p50, True, "P50 latency"),
    "p95_latency": MetricDef("ms", lambda o: o.p95, True, "P95 latency"),
    "p99_latency": MetricDef("ms", lambda o: o.p99, True, "P99 latency"),
    "avg_latency": MetricDef("ms", lambda o: o.avg_latency, True, "Average latency"),
    "requests": MetricDef("requests", lambda o: o.requests, False, "Requests"),
    "queue_depth": MetricDef(
        "jobs", lambda o: o.gauge("queue_depth"), False, "Warming queue depth", False
    ),
    "kv_storage": MetricDef(
        "bytes", lambda o: o.gauge("kv_storage_bytes"), False, "KV storage", False
    ),
    "r2_storage": MetricDef(
        "bytes", lambda o: o.gauge("r2_storage_bytes"), False, "R2 storage", False
    ),
    # Read from the store's newest data, not from the window (see alerts).
    "data_age": MetricDef("s", lambda o: None, False, "Data age", False),
}


class Op(StrEnum):
    """A threshold rule's comparison: breached when `value op threshold`."""

    GT = ">"
    GE = ">="
    LT = "<"
    LE = "<="


class Kind(StrEnum):
    """A threshold rule compares the value; an anomaly rule its robust z-score."""

    THRESHOLD = "threshold"
    ANOMALY = "anomaly"


class Direction(StrEnum):
    """Which side of usual an anomaly rule watches."""

    BELOW = "below"
    ABOVE = "above"
    BOTH = "both"


OPS: dict[Op, Callable[[float, float], bool]] = {
    Op.GT: lambda v, t: v > t,
    Op.GE: lambda v, t: v >= t,
    Op.LT: lambda v, t: v < t,
    Op.LE: lambda v, t: v <= t,
}
# The TOML fields read as enums, and how to say which values are allowed.
_ENUM_FIELDS: dict[str, tuple[type[StrEnum], str]] = {
    "severity": (Severity, "use one of " + ", ".join(Severity)),
    "kind": (Kind, "use threshold or anomaly"),
    "op": (Op, "use one of " + " ".join(Op)),
    "direction": (Direction, "use below, above or both"),
}
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_ENDPOINT = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


@dataclass(frozen=True)
class Rule:
    name: str
    metric: str
    threshold: float
    severity: Severity
    op: Op = Op.GT
    type: str = ""  # alert type; defaults to the name
    kind: Kind = Kind.THRESHOLD
    window: timedelta = timedelta(minutes=15)
    for_: timedelta = timedelta(0)
    keep_firing_for: timedelta = timedelta(0)
    endpoints: tuple[str, ...] = ()  # () = all traffic together
    channels: tuple[str, ...] = ()  # () = every configured channel
    min_requests: float | None = None  # None = the [alerts] default
    # anomaly rules: compare with the same minute-of-week in earlier weeks
    direction: Direction = Direction.BELOW
    weeks: int = 3
    min_weeks: int = 2

    @property
    def alert_type(self) -> str:
        return self.type or self.name

    @property
    def unit(self) -> str:
        return METRICS[self.metric].unit

    def breached(self, value: float) -> bool:
        """Threshold rules: whether `value` breaches. (Anomaly rules pass the z-score.)"""
        if self.kind == Kind.ANOMALY:
            return (
                self.direction in (Direction.BELOW, Direction.BOTH) and value <= -self.threshold
            ) or (self.direction in (Direction.ABOVE, Direction.BOTH) and value >= self.threshold)
        return OPS[self.op](value, self.threshold)

    def describe(self) -> str:
        what = METRICS[self.metric].label
        if self.kind == Kind.ANOMALY:
            return f"{what} anomalous ({self.direction} usual, robust z ≥ {self.threshold:g})"
        return f"{what} {self.op} {format_value(self.threshold, self.unit)}"


def format_value(value: float | None, unit: str) -> str:
    """A metric value for people: 15.2%, 512 ms, 1.2 GB, 2,600 jobs."""
    if value is None:
        return "n/a"
    if unit == "%":
        return f"{value:.1f}%"
    if unit == "ms":
        if abs(value) >= 10:
            return f"{value:,.0f} ms"
        # Three significant digits below 10 ms: a 4 µs p50 is 0.00412 ms, not 0.0 ms.
        return f"{value:.{significant_decimals(value, 3)}f} ms"
    if unit == "bytes":
        for size, name in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
            if abs(value) >= size:
                return f"{value / size:.2f} {name}"
        return f"{value:.0f} B"
    if unit == "s":
        return format_duration(timedelta(seconds=int(value)))
    return f"{value:,.0f} {unit}"


def significant_decimals(value: float, digits: int) -> int:
    """Decimals that show `value` with `digits` significant digits (none for 0)."""
    if value == 0 or not math.isfinite(value):
        return 0
    return max(0, digits - 1 - math.floor(math.log10(abs(value))))


# The seed's ALERT_THRESHOLDS, plus freshness and a drift detector.
BUILTIN: tuple[Rule, ...] = (
    Rule("miss_rate_critical", "miss_rate", 15.0, Severity.CRITICAL, type="miss_rate"),
    Rule("p99_latency", "p99_latency", 500.0, Severity.CRITICAL),
    Rule("error_rate", "error_rate", 5.0, Severity.CRITICAL),
    Rule("queue_depth", "queue_depth", 1000.0, Severity.CRITICAL),
    Rule("miss_rate_warning", "miss_rate", 10.0, Severity.WARNING, type="miss_rate"),
    Rule("p95_latency", "p95_latency", 100.0, Severity.WARNING),
    Rule("edge_hit_rate", "edge_hit_rate", 75.0, Severity.WARNING, op=Op.LT),
    Rule("kv_storage", "kv_storage", 1e9, Severity.WARNING),
    Rule("data_stale", "data_age", 1800.0, Severity.WARNING),
    Rule(
        "hit_rate_anomaly",
        "combined_hit_rate",
        3.5,
        Severity.WARNING,
        kind=Kind.ANOMALY,
        direction=Direction.BELOW,
        min_requests=1000.0,
    ),
)


def type_units(rules: tuple[Rule, ...]) -> dict[str, str]:
    """The unit of each alert type's value and threshold, from its rules'
    metrics (`MetricDef.unit`, the one table of units). An anomaly rule's
    threshold is a z-score, not a value of its metric, and a type whose
    rules watch metrics of different units has no single one: both are left
    out, shown as plain numbers."""
    units: dict[str, set[str]] = {}
    for r in rules:
        units.setdefault(r.alert_type, set()).add(r.unit if r.kind == Kind.THRESHOLD else "")
    return {t: u.pop() for t, u in units.items() if len(u) == 1 and "" not in u}


_TOML_NAMES = {"for": "for_"}  # `for` is a Python keyword


def parse_rules(
    where: str, raw: list, builtin: bool = True, disable: tuple[str, ...] = ()
) -> tuple[Rule, ...]:
    """The effective rules: built-ins (unless switched off or disabled by
    name) overridden by user rules of the same name, then the user's own.
    `where` names the file for messages."""
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: [alerts] rules must be an array of tables ([[alerts.rules]])")
    user = [_parse_one(where, i, r) for i, r in enumerate(raw)]
    seen: set[str] = set()
    for r in user:
        if r.name in seen:
            raise ConfigError(f"{where}: rule {r.name!r} is defined twice")
        seen.add(r.name)
    known = {r.name for r in BUILTIN} | seen
    for name in disable:
        if name not in known:
            raise ConfigError(f"{where}: [alerts] disable names unknown rule {name!r}")
    base = [r for r in BUILTIN if builtin and r.name not in seen]
    return tuple(r for r in base + user if r.name not in disable)


def _parse_one(where: str, index: int, raw) -> Rule:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: rule #{index + 1} must be a table")
    label = (
        f"rule {raw.get('name')!r}" if isinstance(raw.get("name"), str) else f"rule #{index + 1}"
    )

    def bad(field: str, why: str) -> ConfigError:
        return ConfigError(f"{where}: {label}: {field}: {why}")

    known = {f.name for f in fields(Rule)}
    kwargs = {}
    for key, value in raw.items():
        name = _TOML_NAMES.get(key, key)
        if name not in known or name == "for_" and key != "for":
            toml_names = sorted("for" if k == "for_" else k for k in known)
            raise bad(key, f"unknown field (fields: {', '.join(toml_names)})")
        kwargs[name] = _field(bad, key, name, value)
    for req in ("name", "metric", "severity"):
        if req not in kwargs:
            raise bad(req, "is required")
    if "threshold" not in kwargs:
        if kwargs.get("kind") != Kind.ANOMALY:
            raise bad("threshold", "is required")
        kwargs["threshold"] = 3.5
    rule = Rule(**kwargs)
    _check(bad, rule)
    return rule


def _field(bad, key: str, name: str, value):
    if name in ("window", "for_", "keep_firing_for"):
        if not isinstance(value, str):
            raise bad(key, f"must be a duration string like '15m', got {value!r}")
        try:
            return parse_duration(value, key)
        except Exception as exc:
            raise bad(key, str(exc)) from None
    if name in ("endpoints", "channels"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad(key, f"must be a list of strings, got {value!r}")
        return tuple(value)
    if name in ("threshold", "min_requests"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad(key, f"must be a number, got {value!r}")
        return float(value)
    if name in ("weeks", "min_weeks"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(key, f"must be a whole number, got {value!r}")
        return value
    if not isinstance(value, str):
        raise bad(key, f"must be a string, got {value!r}")
    if name in _ENUM_FIELDS:
        enum, allowed = _ENUM_FIELDS[name]
        try:
            return enum(value)
        except ValueError:
            raise bad(key, f"{value!r}: {allowed}") from None
    return value


def _check(bad, r: Rule) -> None:
    if not _NAME.match(r.name):
        raise bad(
            "name", f"{r.name!r} must be lower-case letters, digits and _ (starting with a letter)"
        )
    if r.type and not _NAME.match(r.type):
        raise bad("type", f"{r.type!r} must be lower-case letters, digits and _")
    if r.metric not in METRICS:
        raise bad("metric", f"unknown metric {r.metric!r}; metrics: {', '.join(METRICS)}")
    if (
        r.window < timedelta(minutes=1)
        or r.window > timedelta(days=1)
        or r.window % timedelta(minutes=1)
    ):
        raise bad("window", "must be whole minutes between 1m and 1d")
    if r.for_ < timedelta(0) or r.keep_firing_for < timedelta(0):
        raise bad("for", "durations must not be negative")
    if r.endpoints and not METRICS[r.metric].per_request:
        raise bad(
            "endpoints", f"metric {r.metric!r} is store-wide; it cannot be filtered by endpoint"
        )
    for e in r.endpoints:
        if not _ENDPOINT.match(e):
            raise bad("endpoints", f"{e!r} is not an endpoint name")
    for c in r.channels:
        if c not in CHANNELS:
            raise bad("channels", f"unknown channel {c!r}; channels: {', '.join(CHANNELS)}")
    if r.kind == Kind.ANOMALY:
        if r.metric == "data_age" or not METRICS[r.metric].per_request and r.metric != "requests":
            raise bad(
                "metric",
                "anomaly rules watch traffic metrics (hit rates, latency, errors, requests)",
            )
        if r.threshold <= 0 or not 1 <= r.min_weeks <= r.weeks <= 8:
            raise bad(
                "threshold", "anomaly rules need threshold > 0 and 1 <= min_weeks <= weeks <= 8"
            )
    if r.min_requests is not None and r.min_requests < 0:
        raise bad("min_requests", "must not be negative")


def with_defaults(rules: tuple[Rule, ...], min_requests: float) -> tuple[Rule, ...]:
    """Fill each rule's unset min_requests from the [alerts] default."""
    return tuple(
        r if r.min_requests is not None else replace(r, min_requests=min_requests) for r in rules
    )


def effective_rules(ac: AlertsConfig) -> tuple[Rule, ...]:
    """The rules [alerts] evaluates: the file's own, else the built-ins not
    disabled, each with the section's defaults filled in."""
    rules = (
        ac.rules
        if ac.rules
        else tuple(r for r in BUILTIN if ac.builtin_rules and r.name not in ac.disable)
    )
    return with_defaults(rules, ac.min_requests)
