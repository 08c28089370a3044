"""What the cache costs: usage measured from the store, priced.

Usage of a window, per component:

* Workers requests — every request (each runs the Worker);
* KV reads, KV writes, R2 Class B — the tier-mix rule (`costs.tiermix`):
  a KV read per edge miss, a KV write per fill after an R2 rehydration or an
  origin answer (failed ones write nothing), an R2 get per rehydration;
* KV / R2 storage — the mean of the storage gauges over the window, in
  GB-months (GB × the window's share of its month);
* R2 Class A — archival puts, estimated from the growth of R2 storage
  divided by the stored value size (`[costs] value_bytes`);
* Analytics Engine data points — one per request and per gauge reading;
* Analytics Engine queries — this tool's own pulls (4 queries a pull) when
  the source is Analytics Engine.

Workers CPU time is not in the event contract, so it is not priced.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb
import pandas as pd

from cachemon.clock import DAY, Window, floor_to, iso
from cachemon.costs.tiermix import TierMix
from cachemon.events import TIERS
from cachemon.pricing import COMPONENTS, Pricing, days_in_month, month_share, month_start
from cachemon.settings import Config
from cachemon.store.queries import TIER_TOTALS, data_span, window_params

QUERIES_PER_PULL = 4  # minute rollups, latency histogram, gauges, per-key counts
GAUGE_USAGE = """
SELECT name, sum(value_sum) / sum(samples), sum(samples),
       arg_min(value_last, minute), arg_max(value_last, minute)
FROM gauge_minute WHERE minute >= $lo AND minute < $hi GROUP BY name
"""


@dataclass(frozen=True)
class Usage:
    """Units of each priced component over `window`."""

    window: Window
    workers_requests: float = 0.0
    kv_reads: float = 0.0
    kv_writes: float = 0.0
    kv_storage: float = 0.0  # GB-months
    r2_storage: float = 0.0  # GB-months
    r2_class_a: float = 0.0
    r2_class_b: float = 0.0
    ae_writes: float = 0.0
    ae_queries: float = 0.0
    kv_bytes: float = 0.0  # mean gauge readings, for display
    r2_bytes: float = 0.0

    def units(self, component: str) -> float:
        return getattr(self, component)

    def scaled(self, factor: float, window: Window) -> Usage:
        """The same usage rate over another length (e.g. per day)."""
        keep = {"window": window, "kv_bytes": self.kv_bytes, "r2_bytes": self.r2_bytes}
        return Usage(**keep, **{c: self.units(c) * factor for c in COMPONENTS})


@dataclass(frozen=True)
class Line:
    component: str
    units: float
    list_cost: float
    billed: float


@dataclass(frozen=True)
class Breakdown:
    """Costs of a Usage: a line per component, list and billed (USD)."""

    usage: Usage
    lines: tuple[Line, ...]
    pricing_version: str

    @property
    def list_total(self) -> float:
        return sum(line.list_cost for line in self.lines)

    @property
    def billed_total(self) -> float:
        return sum(line.billed for line in self.lines)

    def line(self, component: str) -> Line:
        return next(line for line in self.lines if line.component == component)


def measure(con: duckdb.DuckDBPyConnection, window: Window, cfg: Config) -> Usage:
    """Usage of `window` from the store's rollups and gauges."""
    length = window.end - window.start
    # Whole hours from the hourly rollups, ragged minutes from the minute ones.
    tiers = {
        r[0]: r
        for r in con.execute(TIER_TOTALS, window_params(window) | {"endpoint": None}).fetchall()
    }
    # Errors of the filling tiers only: an edge or KV answer never fills.
    mix = TierMix(
        **{t: float(tiers[t][1]) if t in tiers else 0.0 for t in TIERS},
        failed_fills=sum(float(tiers[t][2]) for t in ("r2", "api") if t in tiers),
    )
    gauges = {
        r[0]: r[1:]
        for r in con.execute(GAUGE_USAGE, {"lo": window.start, "hi": window.end}).fetchall()
    }
    share = month_share(window.start, length)
    kv_mean = gauges.get("kv_storage_bytes", (0.0, 0, 0.0, 0.0))[0]
    r2 = gauges.get("r2_storage_bytes", (0.0, 0, 0.0, 0.0))
    samples = sum(g[1] for g in gauges.values())
    requests = float(mix.requests)
    pulls = length / cfg.jobs.ingest_every if cfg.source == "analytics_engine" else 0.0
    return Usage(
        window=window,
        workers_requests=requests,
        kv_reads=float(mix.kv_reads),
        kv_writes=float(mix.kv_writes),
        kv_storage=kv_mean / 1e9 * share,
        r2_storage=r2[0] / 1e9 * share,
        r2_class_a=max(0.0, r2[3] - r2[2]) / cfg.costs.value_bytes,
        r2_class_b=float(mix.r2_reads),
        ae_writes=requests + samples,
        ae_queries=pulls * QUERIES_PER_PULL,
        kv_bytes=kv_mean,
        r2_bytes=r2[0],
    )


def price(usage: Usage, pricing: Pricing) -> Breakdown:
    """List and billed cost of each component. Included amounts are
    pro-rated by the window's share of its month."""
    share = month_share(usage.window.start, usage.window.end - usage.window.start)
    lines = tuple(
        Line(
            c,
            usage.units(c),
            pricing[c].list_cost(usage.units(c)),
            pricing[c].billed(usage.units(c), share),
        )
        for c in COMPONENTS
    )
    return Breakdown(usage, lines, pricing.version)


def per_day(usage: Usage) -> Usage:
    """A window's usage as a daily rate (storage stays GB-months per day)."""
    length = usage.window.end - usage.window.start
    if length <= timedelta(0):
        return usage
    factor = DAY / length
    return usage.scaled(factor, Window(usage.window.end - DAY, usage.window.end))


def daily_rate(con: duckdb.DuckDBPyConnection, window: Window, cfg: Config) -> Breakdown:
    """The usage of `window` as a daily rate, priced (`[pricing]`)."""
    return price(per_day(measure(con, window, cfg)), cfg.pricing)


def daily_costs(con: duckdb.DuckDBPyConnection, window: Window, cfg: Config) -> pd.DataFrame:
    """List and billed cost of each UTC day in `window` with data (a day the
    data covers in part scaled to a full day), with a column per
    component's list cost."""
    span = data_span(con)
    if span is None:
        return pd.DataFrame()
    lo, hi = max(window.start, span[0]), min(window.end, span[1])
    rows = []
    day = floor_to(lo, DAY)
    while day < hi:
        part = Window(max(day, lo), min(day + DAY, hi))
        b = daily_rate(con, part, cfg)
        if b.usage.workers_requests:
            rows.append(
                {
                    "day": day,
                    "list": b.list_total,
                    "billed": b.billed_total,
                    **{ln.component: ln.list_cost for ln in b.lines},
                }
            )
        day += DAY
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Forecast:
    month: str
    month_to_date: Breakdown
    daily_rate: Breakdown  # from the last 7 days (or what there is)
    days_left: float
    list_total: float  # month to date plus the rest at the daily rate
    billed_total: float  # the month's bill: included amounts applied to the whole month


def forecast(
    con: duckdb.DuckDBPyConnection, at: datetime, cfg: Config, pricing: Pricing
) -> Forecast:
    """Month-end cost from the month to date and the last 7 days' rate."""
    start = month_start(at)
    mtd = price(measure(con, Window(start, at), cfg), pricing)
    recent = Window(max(start - 7 * DAY, at - 7 * DAY), at)
    rate = price(per_day(measure(con, recent, cfg)), pricing)
    days_left = (start.replace(day=days_in_month(at)) + DAY - at) / DAY
    total_units = {c: mtd.usage.units(c) + rate.usage.units(c) * days_left for c in COMPONENTS}
    billed = sum(pricing[c].billed(u, 1.0) for c, u in total_units.items())
    return Forecast(
        start.strftime("%Y-%m"),
        mtd,
        rate,
        days_left,
        mtd.list_total + rate.list_total * days_left,
        billed,
    )


def money(x: float) -> str:
    """$2.15, $0.175, $0.002: enough digits to show small amounts."""
    if x >= 1 or x == 0:
        return f"${x:,.2f}"
    return f"${x:.3f}" if x >= 0.001 else f"${x:.6f}"


def size(nbytes: float) -> str:
    return f"{nbytes / 1e9:.2f}GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.0f}MB"


def to_json(daily: Breakdown, fc: Forecast | None, at: datetime) -> dict:
    """The seed's `costs` block (strings) plus the same numbers for machines."""
    month_days = days_in_month(at)
    line = daily.line
    storage_month = lambda c: line(c).list_cost * month_days  # noqa: E731 (GB-month per day × days)
    out = {
        "kv_reads_estimate": f"{money(line('kv_reads').list_cost)}/day",
        "kv_writes_estimate": f"{money(line('kv_writes').list_cost)}/day",
        "kv_storage": f"{size(daily.usage.kv_bytes)} ({money(storage_month('kv_storage'))}/month)",
        "r2_storage": f"{size(daily.usage.r2_bytes)} ({money(storage_month('r2_storage'))}/month)",
        "r2_reads": f"{money(line('r2_class_b').list_cost)}/day",
        "total_estimate": f"{money(daily.list_total)}/day ({money(daily.list_total * month_days)}/month)",
        "pricingVersion": daily.pricing_version,
        "perDay": {
            "list": round(daily.list_total, 6),
            "billed": round(daily.billed_total, 6),
            "components": {
                ln.component: {
                    "units": round(ln.units, 3),
                    "list": round(ln.list_cost, 6),
                    "billed": round(ln.billed, 6),
                }
                for ln in daily.lines
            },
        },
    }
    if fc is not None:
        out["forecast"] = {
            "month": fc.month,
            "monthToDateList": round(fc.month_to_date.list_total, 4),
            "monthEndList": round(fc.list_total, 4),
            "monthEndBilled": round(fc.billed_total, 4),
            "asOf": iso(at),
        }
    return out


@dataclass(frozen=True)
class WindowCosts:
    """A metrics window's costs: its usage as a daily rate, priced, and the
    month-end forecast as of `at`."""

    daily: Breakdown
    forecast: Forecast
    at: datetime

    def to_json(self) -> dict:
        """The metrics response's `costs` block."""
        return to_json(self.daily, self.forecast, self.at)


def window_costs(
    con: duckdb.DuckDBPyConnection, window: Window, at: datetime, cfg: Config
) -> WindowCosts:
    """The costs of a metrics window (see WindowCosts)."""
    return WindowCosts(daily_rate(con, window, cfg), forecast(con, at, cfg, cfg.pricing), at)
