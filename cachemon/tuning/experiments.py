"""TTL experiments: configuration (`[[experiments]]` in TOML), validated,
and cohort assignment with each scheme's exact effective allocation.

Schemes:

* `sha256-u64` (default for new experiments): the first 8 bytes of
  SHA-256(key + "\\x1f" + name) as an unsigned integer over 2^64, a value in
  [0, 1) with 2^64 levels; the delimiter keeps ("ab", "c") and ("a", "bc")
  apart; the last cohort takes the remainder, so nothing falls through.
* `seed-sha256-byte`: the seed's JavaScript, byte for byte (first byte of
  SHA-256(key + name) / 255, cumulative weights with `<`, fallback to the
  first cohort). It has 256 levels and byte 255 falls through to the first
  cohort: its 50/50 is really 129/256 vs 127/256. Keep it only for Workers
  that already assign this way.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from fractions import Fraction

from cachemon import jsontext
from cachemon.assignment import seed_sha256_byte
from cachemon.clock import format_duration, parse_duration, parse_instant
from cachemon.errors import ConfigError


class Scheme(StrEnum):
    """How keys are assigned to cohorts; the value is the TOML `scheme`."""

    SHA256_U64 = "sha256-u64"  # 8 bytes of SHA-256: shares exact to 2^-64
    SEED_SHA256_BYTE = "seed-sha256-byte"  # the seed Worker's: one byte, shares in 1/256 steps


# Each metric's unit: a difference (treatment − control) is in these units.
METRIC_UNITS = {
    "hit_rate": "points",
    "cost_per_request": "USD per 1M requests",
    "p95_latency": "ms",
    "error_rate": "points",
}
METRICS = tuple(METRIC_UNITS)
MIN_TTL = timedelta(seconds=60)  # KV's smallest expirationTtl
MAX_TTL = timedelta(days=365)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Cohort:
    name: str
    ttl: timedelta
    weight: float


@dataclass(frozen=True)
class Experiment:
    name: str
    endpoint: str
    cohorts: tuple[Cohort, ...]
    start: datetime
    duration: timedelta = timedelta(days=14)
    scheme: Scheme = Scheme.SHA256_U64
    description: str = ""
    metrics: tuple[str, ...] = METRICS
    mde: float = 3.0  # minimum detectable effect, hit-rate points
    margin: float = 2.0  # promote only when the gain's lower bound clears this (points)

    @property
    def weights(self) -> tuple[float, ...]:
        return tuple(c.weight for c in self.cohorts)

    def assign(self, key: str) -> Cohort:
        """The cohort of `key` under this experiment's scheme."""
        if self.scheme == Scheme.SEED_SHA256_BYTE:
            return self.cohorts[seed_sha256_byte(key, self.name, self.weights)]
        return self.cohorts[_u64_index(u64_value(key, self.name), self.weights)]

    def allocation(self) -> tuple[Fraction, ...]:
        """The exact share of keys each cohort receives under the scheme."""
        if self.scheme == Scheme.SEED_SHA256_BYTE:
            counts = [0] * len(self.cohorts)
            for byte in range(256):
                counts[_seed_index(byte / 255, self.weights)] += 1
            return tuple(Fraction(n, 256) for n in counts)
        bounds = [0] + [_u64_bound(cum) for cum in _cumulative(self.weights)[:-1]] + [2**64]
        return tuple(Fraction(b - a, 2**64) for a, b in zip(bounds, bounds[1:]))


def u64_value(key: str, experiment: str) -> int:
    """The unbiased scheme's hash: 8 bytes of SHA-256 as an integer in [0, 2^64)."""
    digest = hashlib.sha256(f"{key}\x1f{experiment}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _cumulative(weights) -> list[float]:
    out, cum = [], 0.0
    for w in weights:
        cum += w
        out.append(cum)
    return out


def _u64_bound(cum: float) -> int:
    """Smallest hash value at or above cum × 2^64 (exact in integers)."""
    f = Fraction(cum) * 2**64
    return -(-f.numerator // f.denominator)


def _u64_index(value: int, weights) -> int:
    for i, cum in enumerate(_cumulative(weights)[:-1]):
        if value < _u64_bound(cum):
            return i
    return len(weights) - 1


def _seed_index(value: float, weights) -> int:
    cum = 0.0
    for i, w in enumerate(weights):
        cum += w
        if value < cum:
            return i
    return 0


def parse(where: str, raw, endpoints: tuple[str, ...]) -> tuple[Experiment, ...]:
    """`[[experiments]]` tables, each with `[[experiments.cohorts]]`."""
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: experiments must be an array of tables ([[experiments]])")
    out, names = [], set()
    for i, table in enumerate(raw):
        e = _parse_one(where, i, table, endpoints)
        if e.name in names:
            raise ConfigError(f"{where}: experiment {e.name!r} is defined twice")
        names.add(e.name)
        out.append(e)
    return tuple(out)


_FIELDS = {
    "name",
    "description",
    "endpoint",
    "cohorts",
    "start",
    "duration",
    "scheme",
    "metrics",
    "mde",
    "margin",
}


def _parse_one(where: str, i: int, t, endpoints) -> Experiment:
    label = (
        f"experiment {t.get('name')!r}"
        if isinstance(t, dict) and isinstance(t.get("name"), str)
        else f"experiment #{i + 1}"
    )

    def bad(field, why):
        return ConfigError(f"{where}: {label}: {field}: {why}")

    if not isinstance(t, dict):
        raise ConfigError(f"{where}: {label} must be a table")
    for k in t:
        if k not in _FIELDS:
            raise bad(k, f"unknown field (fields: {', '.join(sorted(_FIELDS))})")
    for req in ("name", "endpoint", "cohorts", "start"):
        if req not in t:
            raise bad(req, "is required")
    if not isinstance(t["name"], str) or not _NAME.match(t["name"]):
        raise bad("name", f"{t['name']!r} must be letters, digits, _ . - (up to 64)")
    if t["endpoint"] not in endpoints:
        raise bad(
            "endpoint", f"unknown endpoint {t['endpoint']!r}; endpoints: {', '.join(endpoints)}"
        )
    try:
        scheme = Scheme(t.get("scheme", Scheme.SHA256_U64))
    except (ValueError, TypeError):
        raise bad("scheme", f"{t['scheme']!r}: use {' or '.join(Scheme)}") from None
    metrics = tuple(t.get("metrics", METRICS))
    for m in metrics:
        if m not in METRICS:
            raise bad("metrics", f"unknown metric {m!r}; metrics: {', '.join(METRICS)}")
    cohorts = _cohorts(bad, t["cohorts"])
    try:
        start = parse_instant(t["start"], "start") if isinstance(t["start"], str) else None
        duration = parse_duration(t.get("duration", "14d"), "duration")
    except Exception as exc:
        raise bad("start/duration", str(exc)) from None
    if start is None:
        raise bad("start", "must be an ISO 8601 UTC time in quotes")
    numbers = {}
    for f in ("mde", "margin"):
        v = t.get(f, Experiment.__dataclass_fields__[f].default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 100:
            raise bad(f, f"must be a number of hit-rate points between 0 and 100, got {v!r}")
        numbers[f] = float(v)
    return Experiment(
        t["name"],
        t["endpoint"],
        cohorts,
        start,
        duration,
        scheme,
        str(t.get("description", "")),
        metrics,
        **numbers,
    )


def _cohorts(bad, raw) -> tuple[Cohort, ...]:
    if not isinstance(raw, list) or len(raw) < 2:
        raise bad(
            "cohorts", "needs at least two [[experiments.cohorts]] (a control and a treatment)"
        )
    out, names = [], set()
    for c in raw:
        if (
            not isinstance(c, dict)
            or set(c) - {"name", "ttl", "weight"}
            or not {"name", "ttl", "weight"} <= set(c)
        ):
            raise bad("cohorts", f"each cohort needs exactly name, ttl and weight, got {c!r}")
        if c["name"] in names:
            raise bad("cohorts", f"duplicate cohort name {c['name']!r}")
        names.add(c["name"])
        try:
            ttl = parse_duration(c["ttl"], f"cohort {c['name']} ttl")
        except Exception as exc:
            raise bad("cohorts", str(exc)) from None
        if not MIN_TTL <= ttl <= MAX_TTL:
            raise bad(
                "cohorts", f"cohort {c['name']!r} ttl {c['ttl']!r} is out of range (60s to 365d)"
            )
        w = c["weight"]
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w <= 1:
            raise bad("cohorts", f"cohort {c['name']!r} weight must be in (0, 1], got {w!r}")
        out.append(Cohort(str(c["name"]), ttl, float(w)))
    total = sum(c.weight for c in out)
    if abs(total - 1.0) > 1e-9:
        raise bad("cohorts", f"weights sum to {total:g}, not 1")
    return tuple(out)


# The seed's experiment (and the simulator's built-in one): 48 h KV TTL for
# title search against the 24 h baseline, assigned the seed's way.
SEED_COHORTS = (("control", "24h", 0.5), ("treatment", "48h", 0.5))


def example_toml(
    name: str = "extended-title-ttl",
    endpoint: str = "title",
    cohorts: Sequence[tuple[str, timedelta | str, float]] = SEED_COHORTS,
    start: datetime | str = "2026-11-01T00:00:00Z",
    *,
    description: str | None = "48h TTL for title search vs baseline 24h",
    scheme: Scheme | None = Scheme.SEED_SHA256_BYTE,
    duration: timedelta | str = "14d",
) -> str:
    """An `[[experiments]]` block, the one template of every example and
    draft (the defaults are the seed's experiment). The first cohort is the
    control. `start`, `duration` and TTLs given as strings are written as
    they are (the demo config's `@START@` placeholder, "24h" rather than
    "1d"); `scheme` None leaves the default scheme; `description` None
    leaves it out. Strings are quoted as TOML basic strings."""
    when = start if isinstance(start, str) else start.strftime("%Y-%m-%dT%H:%M:%SZ")
    lines = ["[[experiments]]", f"name = {_quote(name)}"]
    if description is not None:
        lines.append(f"description = {_quote(description)}")
    lines.append(f"endpoint = {_quote(endpoint)}")
    if scheme is not None:
        lines.append(f"scheme = {_quote(scheme)}")
    length = duration if isinstance(duration, str) else format_duration(duration)
    lines += [f"start = {_quote(when)}", f"duration = {_quote(length)}"]
    for cohort, ttl, weight in cohorts:
        ttl_text = ttl if isinstance(ttl, str) else format_duration(ttl)
        lines += [
            "[[experiments.cohorts]]",
            f"name = {_quote(cohort)}",
            f"ttl = {_quote(ttl_text)}",
            f"weight = {weight:g}",
        ]
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    # JSON's string escapes (\", \\, \n, \uXXXX) are all TOML basic-string escapes.
    return jsontext.dumps(text, ensure_ascii=False)
