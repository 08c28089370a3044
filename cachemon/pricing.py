"""Cloudflare prices (Workers Paid plan), versioned, overridable in TOML,
and the arithmetic of list cost and billed cost.

List cost is usage × unit price: what the traffic is worth. The bill
subtracts the plan's included monthly amounts first; for a part of a month
(a day, an hour) the included amount is pro-rated by its share of the
month, so daily figures add up to the month's.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from cachemon.errors import ConfigError

VERSION = "workers-paid-2026"


@dataclass(frozen=True)
class Price:
    """USD `price` per `per` units, after `included` units a month."""

    label: str
    unit: str
    price: float
    per: float
    included: float

    def list_cost(self, units: float) -> float:
        return units * self.price / self.per

    def billed(self, units: float, month_share: float) -> float:
        """Cost after the included amount pro-rated to `month_share` of a month."""
        over = units - self.included * month_share
        # exactly the included amount, up to float rounding, is free
        return over * self.price / self.per if over > 1e-9 * max(units, 1.0) else 0.0


class R2Lookup(StrEnum):
    """When the Worker asks R2 (an R2 Class B get), `[costs] r2_lookup`.

    REHYDRATION (the seed's flow, the default): R2 is the cold store of
    archived entries, asked only for a key known to be archived, so a get
    is a request R2 served. EVERY_KV_MISS: the Worker asks R2 on every KV
    miss, so the requests the origin answered were R2 gets too."""

    REHYDRATION = "rehydration"
    EVERY_KV_MISS = "every_kv_miss"

    @classmethod
    def parse(cls, value: str, where: str = "[costs] r2_lookup") -> R2Lookup:
        """The flow named `value`; anything else is an error naming the choices."""
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(repr(str(c)) for c in cls)
            raise ConfigError(f"{where} = {value!r} is not one of {choices}") from None


M = 1_000_000.0
# FACTS.md, "Cloudflare list prices (Workers Paid plan, USD; 2026)".
DEFAULT: dict[str, Price] = {
    "workers_requests": Price("Workers requests", "requests", 0.30, M, 10 * M),
    "kv_reads": Price("KV reads", "reads", 0.50, M, 10 * M),
    "kv_writes": Price("KV writes", "writes", 5.00, M, 1 * M),
    "kv_storage": Price("KV storage", "GB-month", 0.50, 1.0, 1.0),
    "r2_storage": Price("R2 storage", "GB-month", 0.015, 1.0, 10.0),
    "r2_class_a": Price("R2 Class A (puts)", "operations", 4.50, M, 1 * M),
    "r2_class_b": Price("R2 Class B (gets)", "operations", 0.36, M, 10 * M),
    "ae_writes": Price("Analytics Engine data points", "data points", 0.25, M, 10 * M),
    "ae_queries": Price("Analytics Engine queries", "queries", 1.00, M, 1 * M),
}
COMPONENTS = tuple(DEFAULT)


@dataclass(frozen=True)
class Pricing:
    version: str
    prices: tuple[tuple[str, Price], ...]

    def __getitem__(self, component: str) -> Price:
        return dict(self.prices)[component]


def default() -> Pricing:
    return Pricing(VERSION, tuple(DEFAULT.items()))


def parse(where: str, raw: dict) -> Pricing:
    """`[pricing]`: `version = "…"` and per component `[pricing.kv_reads]`
    with any of price, per, included. Unknown components, unknown fields
    and negative or missing numbers are errors naming the file and field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: [pricing] must be a table")
    prices = dict(DEFAULT)
    version = VERSION
    for name, value in raw.items():
        if name == "version":
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{where}: [pricing] version must be a non-empty string")
            version = value
            continue
        if name not in DEFAULT:
            raise ConfigError(
                f"{where}: [pricing] unknown component {name!r}; components: {', '.join(COMPONENTS)}"
            )
        if not isinstance(value, dict):
            raise ConfigError(
                f"{where}: [pricing.{name}] must be a table with price, per, included"
            )
        changes = {}
        for field, v in value.items():
            if field not in ("price", "per", "included"):
                raise ConfigError(
                    f"{where}: [pricing.{name}] unknown field {field!r}; use price, per, included"
                )
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
                raise ConfigError(f"{where}: [pricing.{name}] {field} must be a number, got {v!r}")
            if v < 0 or (field == "per" and v == 0):
                raise ConfigError(
                    f"{where}: [pricing.{name}] {field} must be {'positive' if field == 'per' else 'zero or more'}, got {v!r}"
                )
            changes[field] = float(v)
        prices[name] = replace(prices[name], **changes)
    if version == VERSION and any(prices[k] != DEFAULT[k] for k in DEFAULT):
        version = VERSION + "+overrides"
    return Pricing(version, tuple(prices.items()))


def days_in_month(at: datetime) -> int:
    return calendar.monthrange(at.year, at.month)[1]


def month_start(at: datetime) -> datetime:
    return at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def month_share(start: datetime, length: timedelta) -> float:
    """The share of its month a span starting at `start` covers (a day of
    November is 1/30, of December 1/31)."""
    return length / (timedelta(days=1) * days_in_month(start))
