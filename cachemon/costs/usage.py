"""What the cache costs: usage measured from the store, priced.

Usage of a window, per component:

* Workers requests — every request (each runs the Worker);
* KV reads, KV writes, R2 Class B — the tier-mix rule (`costs.tiermix`):
  a KV read per edge miss, a KV write per fill after an R2 rehydration or an
  origin answer (failed ones write nothing), an R2 get per R2 lookup (per
  rehydration, or per KV miss: `[costs] r2_lookup`);
* KV / R2 storage — the mean of the storage gauges over the window, in
  GB-months: GB × the share of the month the data covers (the part of the
  window between the store's first and last data; time before the data
  starts is not priced, never assumed at the mean reading); storage holds
  between readings, so a window without a reading of its own takes the
  last one before it;
* R2 Class A — archival puts, estimated from the growth of R2 storage
  divided by the stored value size (`[costs] value_bytes`);
* Analytics Engine data points — one per request and per gauge reading;
* Analytics Engine queries — this tool's own pulls (4 queries a pull) when
  the source is Analytics Engine.

Workers CPU time is not in the event contract, so it is not priced.

Every figure carries its basis (`costs.basis`): a usage is measured over a
window (and the part of it with data); `per_day` makes it a rate from that
part; `forecast` adds the month to date and the month-end forecast.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import duckdb

from cachemon.clock import DAY, Window, floor_to, iso
from cachemon.costs.basis import Basis, Kind, Price
from cachemon.costs.tiermix import TierMix
from cachemon.metrics.memo import SnapshotMemo, through
from cachemon.names import TIERS
from cachemon.pricing import COMPONENTS, Pricing, days_in_month, month_share, month_start
from cachemon.settings import Config
from cachemon.store.queries import (
    TIER_TOTALS,
    data_days,
    data_span,
    days_of,
    ordered_sum,
    three_ranges,
    window_params,
)

if TYPE_CHECKING:
    import pandas as pd

QUERIES_PER_PULL = 4  # minute rollups, latency histogram, gauges, per-key counts
GAUGE_USAGE = """
SELECT name, sum(value_sum) / sum(samples), sum(samples),
       arg_min(value_last, minute), arg_max(value_last, minute)
FROM gauge_minute WHERE minute >= $lo AND minute < $hi GROUP BY name
"""


# Storage holds between readings: a window without a reading of its own
# (a 15-minute window when storage is read hourly) takes the last one before it.
STORAGE_BEFORE = """
SELECT name, arg_max(value_last, t) FROM (
    SELECT name, minute AS t, value_last FROM gauge_minute WHERE minute < $lo AND list_contains($names, name)
    UNION ALL
    SELECT name, hour, value_last FROM gauge_hour WHERE hour < $lo AND list_contains($names, name)
) GROUP BY name
"""
STORAGE_GAUGES = ("kv_storage_bytes", "r2_storage_bytes")


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
    # What the figures are: measured over `window` (default: all of it has data).
    basis: Basis | None = None

    def __post_init__(self):
        if self.basis is None:
            object.__setattr__(self, "basis", Basis(Kind.MEASURED, self.window, self.window))

    def units(self, component: str) -> float:
        return getattr(self, component)

    def scaled(self, factor: float, window: Window, basis: Basis) -> Usage:
        """The same usage rate over another length (e.g. per day)."""
        keep = {"window": window, "kv_bytes": self.kv_bytes, "r2_bytes": self.r2_bytes}
        return Usage(**keep, **{c: self.units(c) * factor for c in COMPONENTS}, basis=basis)


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

    @property
    def basis(self) -> Basis:
        """What the figures are (window, rate or measured, coverage)."""
        return self.usage.basis


def measure(
    con: duckdb.DuckDBPyConnection,
    window: Window,
    cfg: Config,
    covered: Window | None = None,
    memo: SnapshotMemo | None = None,
) -> Usage:
    """Usage of `window` from the store's rollups and gauges. Storage is
    priced for the part of the window the data covers only (`covered`, from
    `data_days`; read from the store when not given).

    A `memo` of the snapshot `con` reads keeps the rows read, by the ranges
    read; give one only when no row is dated at or after `window.end`
    (`Spans.settled`): then a range ending there is every row from its
    start, whatever that end, and windows from one start to different
    instants past the data read the same rows."""
    covered = covered or data_days(con, window)[0]
    # Whole hours from the hourly rollups, ragged minutes from the minute ones.
    p = window_params(window) | {"endpoint": None}
    tiers = {
        r[0]: r
        for r in through(
            memo,
            ("tier_totals", _open_ended(p, window.end)),
            lambda: con.execute(TIER_TOTALS, p).fetchall(),
        )
    }
    gauges = through(memo, ("gauge_usage", window.start), lambda: _gauges(con, window))
    return _usage(window, covered, tiers, gauges, cfg)


def _usage(window: Window, covered: Window, tiers: dict, gauges: dict, cfg: Config) -> Usage:
    """`measure`'s usage from its reads: per tier (tier, requests, errors),
    per gauge (mean, readings, first, last)."""
    length = window.end - window.start
    # Errors of the filling tiers only: an edge or KV answer never fills.
    mix = TierMix(
        **{t: float(tiers[t][1]) if t in tiers else 0.0 for t in TIERS},
        failed_fills=sum(float(tiers[t][2]) for t in ("r2", "api") if t in tiers),
        r2_lookup=cfg.costs.r2_flow,
    )
    # The share of the month the data covers: a store that starts on the
    # 20th holds no reading of the days before, so they are not priced.
    share = month_share(window.start, covered.length)
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
        basis=Basis(Kind.MEASURED, window, covered),
    )


def _open_ended(params: dict, end: datetime) -> tuple:
    """`params` (of ranges) with `end` as an upper bound left open (None):
    the key of what a settled store holds in them (see `measure`)."""
    return tuple(
        (k, None if k.endswith("_hi") and v == end else v) for k, v in sorted(params.items())
    )


def _gauges(con: duckdb.DuckDBPyConnection, window: Window) -> dict[str, tuple]:
    """Per gauge: mean, readings, first and last reading of the window; a
    storage gauge with no reading inside it holds its last earlier value
    (as mean, first and last; no reading counted)."""
    p = {"lo": window.start, "hi": window.end}
    return _storage_before(
        con, window, {r[0]: r[1:] for r in con.execute(GAUGE_USAGE, p).fetchall()}
    )


def _storage_before(con: duckdb.DuckDBPyConnection, window: Window, gauges: dict) -> dict:
    """`gauges` with each storage gauge that has no reading in `window` at
    its last earlier value."""
    missing = [g for g in STORAGE_GAUGES if g not in gauges]
    if missing:
        rows = con.execute(STORAGE_BEFORE, {"lo": window.start, "names": missing}).fetchall()
        gauges |= {name: (value, 0, value, value) for name, value in rows}
    return gauges


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
    """A window's usage as a daily rate (storage stays GB-months per day),
    from the part of the window the data covers: an hour of data in a 24 h
    window is an hour's usage, scaled ×24, not spread over the day."""
    measured = usage.basis
    length = measured.covered.length or measured.window.length
    if length <= timedelta(0):
        return usage
    basis = Basis(Kind.RATE, measured.window, measured.covered)
    return usage.scaled(DAY / length, Window(usage.window.end - DAY, usage.window.end), basis)


def daily_rate(
    con: duckdb.DuckDBPyConnection, window: Window, cfg: Config, covered: Window | None = None
) -> Breakdown:
    """The usage of `window` as a daily rate, priced (`[pricing]`);
    `covered` as `measure`'s."""
    return price(per_day(measure(con, window, cfg, covered)), cfg.pricing)


DAILY_COLUMNS = ("day", "start", "end", "partial", "list", "billed", *COMPONENTS)


def daily_costs(con: duckdb.DuckDBPyConnection, window: Window, cfg: Config) -> pd.DataFrame:
    """List and billed cost of each UTC day in `window` with data, with a
    column per component's list cost (columns DAILY_COLUMNS). `start` and
    `end` are the part of the day measured: the day within the window and
    the store's data. A day measured in part (today, the store's first day,
    a day the window cuts) is flagged `partial` and costs what that part
    used, never scaled up to a full day: a partial day's bar is lower
    because it is partial, and says so."""
    import pandas as pd  # here, not at the top: the CLI starts without pandas

    span = data_span(con)
    if span is None:
        return pd.DataFrame(columns=list(DAILY_COLUMNS))
    lo, hi = max(window.start, span[0]), min(window.end, span[1])
    rows = []
    tiers, gauges = _days(con, Window(lo, hi)) if lo < hi else ({}, {})
    day = floor_to(lo, DAY)
    while day < hi:
        part = Window(max(day, lo), min(day + DAY, hi))
        # `measure` of the part, from the reads of every day at once: the
        # part lies within the data, so it is all covered.
        g = _storage_before(con, part, gauges.get(day, {}))
        b = price(_usage(part, part, tiers.get(day, {}), g, cfg), cfg.pricing)
        if b.usage.workers_requests:
            rows.append(
                {
                    "day": day,
                    "start": part.start,
                    "end": part.end,
                    "partial": part.length < DAY,
                    "list": b.list_total,
                    "billed": b.billed_total,
                    **{ln.component: ln.list_cost for ln in b.lines},
                }
            )
        day += DAY
    return pd.DataFrame(rows, columns=list(DAILY_COLUMNS))


# `measure`'s reads for every UTC day of a window at once, per day (epoch
# arithmetic: UTC whatever the session's time zone). Each day's part of the
# window splits into the same whole hours and ragged minutes as the window
# (`window_params`), so the rows summed per day are the rows `measure` sums.
DAY_TIER_TOTALS = f"""
SELECT d, tier, {ordered_sum("requests")}, {ordered_sum("errors")}
FROM ({
    three_ranges(
        "to_timestamp(floor(epoch({time}) / 86400) * 86400) AS d, tier, requests, errors",
        "rollup_hour",
        "rollup_minute",
    )
})
GROUP BY d, tier
ORDER BY d, tier
"""
DAY_GAUGES = """
SELECT to_timestamp(floor(epoch(minute) / 86400) * 86400) AS d, name, sum(value_sum) / sum(samples),
       sum(samples), arg_min(value_last, minute), arg_max(value_last, minute)
FROM gauge_minute WHERE minute >= $lo AND minute < $hi GROUP BY d, name
"""


def _days(con: duckdb.DuckDBPyConnection, window: Window) -> tuple[dict, dict]:
    """Per UTC day of `window`: its tier totals and gauges as `measure` reads them."""
    tiers: dict = {}
    for d, tier, requests, errors in con.execute(DAY_TIER_TOTALS, window_params(window)).fetchall():
        tiers.setdefault(d, {})[tier] = (tier, requests, errors)
    gauges: dict = {}
    p = {"lo": window.start, "hi": window.end}
    for d, name, *values in con.execute(DAY_GAUGES, p).fetchall():
        gauges.setdefault(d, {})[name] = tuple(values)
    return tiers, gauges


@dataclass(frozen=True)
class Forecast:
    month: str
    month_to_date: Breakdown
    daily_rate: Breakdown  # from the last 7 days (or what there is)
    days_left: float
    list_total: float  # month to date plus the rest at the daily rate
    billed_total: float  # the month's bill: included amounts applied to the whole month

    @property
    def basis(self) -> Basis:
        """The month-end figures' basis: the month to date (and the part of
        it with data) plus `days_left` at the daily rate's window."""
        mtd, rate = self.month_to_date.basis, self.daily_rate.basis
        return Basis(
            Kind.FORECAST, mtd.window, mtd.covered, rate.window, self.days_left, rate.covered
        )


def forecast(
    con: duckdb.DuckDBPyConnection,
    at: datetime,
    cfg: Config,
    pricing: Pricing,
    span: tuple[datetime, datetime] | None = None,
    memo: SnapshotMemo | None = None,
) -> Forecast:
    """Month-end cost from the month to date and the last 7 days' rate
    (`span`: the store's `data_span(con)`, read when not given; `memo`,
    only when no row is dated at or after `at`: see `measure`)."""
    span = span or data_span(con)
    start = month_start(at)
    mtd_window = Window(start, at)
    measured = measure(con, mtd_window, cfg, days_of(mtd_window, span)[0], memo)
    so_far = Basis(Kind.MONTH_TO_DATE, measured.basis.window, measured.basis.covered)
    mtd = price(replace(measured, basis=so_far), pricing)
    recent = Window(max(start - 7 * DAY, at - 7 * DAY), at)
    rate = price(per_day(measure(con, recent, cfg, days_of(recent, span)[0], memo)), pricing)
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


def basis_json(b: Basis) -> dict:
    """A figure's basis for machines, with its sentence for list and billed."""
    return b.to_json() | {"text": {str(p): b.text(p) for p in Price}}


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
        # What the seed's strings are: a daily rate from a window, and the
        # "/month" strings that rate × the month's days, not the forecast.
        "basis": f"{daily.basis.text()}; the /month figures are that rate × {month_days} days "
        "(not the month-end forecast)",
        "perDay": {
            "basis": basis_json(daily.basis),
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
            "basis": basis_json(fc.basis),
            "monthToDateBasis": basis_json(fc.month_to_date.basis),
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
    con: duckdb.DuckDBPyConnection,
    window: Window,
    at: datetime,
    cfg: Config,
    span: tuple[datetime, datetime] | None = None,
    daily: Breakdown | None = None,
    memo: SnapshotMemo | None = None,
) -> WindowCosts:
    """The costs of a metrics window (see WindowCosts). `span` is the
    store's `data_span(con)` (read when not given: the store is read once
    for all three measured windows); `daily`, the window's `daily_rate`
    when the caller has it; `memo` for the forecast (see `forecast`)."""
    span = span or data_span(con)
    if daily is None:
        daily = daily_rate(con, window, cfg, days_of(window, span)[0])
    return WindowCosts(daily, forecast(con, at, cfg, cfg.pricing, span, memo), at)
