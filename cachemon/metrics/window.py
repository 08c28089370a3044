"""Cache metrics for a window: hit rates, latency, volume, top keys.

One implementation behind `cachemon metrics`, the dashboard and (later) the
metrics API. Reads rollups only: whole hours from the hourly tables, the
ragged minutes at either end from the minute tables, so any window is exact
and a week is a few hundred thousand rows. Latency quantiles come from the
merged log-bucket histogram (≤ 1 % relative error); they are never averaged.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb

from cachemon.clock import HOUR, Window, floor_to, iso
from cachemon.errors import EmptyStoreError, StoreError
from cachemon.histogram import Histogram
from cachemon.jsontext import finite, significant
from cachemon.metrics.memo import SnapshotMemo, through
from cachemon.names import TIERS
from cachemon.store import horizons, keyestimates, topkeys
from cachemon.store.queries import (
    EMPTY_STORE,
    TIER_TOTALS,
    Spans,
    data_spans,
    extent,
    three_ranges,
    window_params,
)

LATENCY_BUCKETS = f"""
SELECT bucket, sum(weight)
FROM ({three_ranges("endpoint, bucket, weight", "latency_hour", "latency_minute")})
WHERE $endpoint IS NULL OR endpoint = $endpoint
GROUP BY bucket
"""

LIFETIME = """
SELECT tier, sum(requests) FROM (
    SELECT tier, requests FROM rollup_hour WHERE hour < $h
    UNION ALL
    SELECT tier, requests FROM rollup_minute WHERE minute >= $h AND minute < $at
) GROUP BY tier
"""
# Gauges are read at least every few minutes; a day back bounds the scan.
LATEST_GAUGES = """
SELECT name, arg_max(value_last, minute) FROM gauge_minute
WHERE minute < $hi AND minute >= $hi - INTERVAL 1 DAY
GROUP BY name ORDER BY name
"""


@dataclass(frozen=True)
class TierVolume:
    """Weighted requests served by each tier."""

    edge: float = 0.0
    kv: float = 0.0
    r2: float = 0.0
    api: float = 0.0

    @property
    def total(self) -> float:
        return self.edge + self.kv + self.r2 + self.api

    def share(self, tier: str) -> float:
        return 100.0 * getattr(self, tier) / self.total if self.total else 0.0


@dataclass(frozen=True)
class Latency:
    p50: float | None
    p95: float | None
    p99: float | None
    avg: float | None


@dataclass(frozen=True)
class TopKey:
    key: str
    endpoint: str
    tiers: TierVolume
    errors: float
    # None: the key's counts are exact; else they are estimated from a key
    # sample at this rate (the lowest of the window), by a budgeted pull.
    sample_rate: float | None = None

    @property
    def exact(self) -> bool:
        """Whether the key's counts are exact, not estimated from a sample."""
        return self.sample_rate is None

    @property
    def requests(self) -> float:
        return self.tiers.total

    @property
    def hit_rate(self) -> float:
        """Share of the key's requests answered without the origin."""
        return 100.0 - self.tiers.share("api")

    @property
    def tier(self) -> str:
        """The tier that served the key most (ties go to the faster tier)."""
        return max(TIERS, key=lambda t: (getattr(self.tiers, t), -TIERS.index(t)))


@dataclass(frozen=True)
class Metrics:
    at: datetime
    period: str
    window: Window
    endpoint: str | None
    volume: TierVolume
    errors: float
    bytes: float
    latency: Latency
    top_keys: tuple[TopKey, ...]
    top_keys_window: Window | None
    data_until: datetime | None
    gauges: tuple[tuple[str, float], ...] = ()  # latest reading of each gauge at `at`
    lifetime: TierVolume | None = None  # every request ever ingested up to `at` (a counter)

    @property
    def combined_hit_rate(self) -> float:
        """Share of requests served by any cache tier (not the origin)."""
        return 100.0 - self.volume.share("api") if self.volume.total else 0.0

    @property
    def error_rate(self) -> float:
        return 100.0 * self.errors / self.volume.total if self.volume.total else 0.0

    @property
    def top_keys_exact(self) -> bool:
        """Whether the top keys count `window` itself, not a wider span
        (`top_keys_window`: per-key minutes older than the minute horizon
        are gone, so an edge there counts its whole hour, or day)."""
        return self.top_keys_window is None or self.top_keys_window == self.window


def _top_keys(con: duckdb.DuckDBPyConnection, window: Window, endpoint: str | None, limit: int):
    if limit == 0:
        return (), None
    top = topkeys.top_keys(con, window, endpoint, limit)
    rates = keyestimates.sampled_rates(con, top.counted, [(r[0], r[1]) for r in top.rows])
    return tuple(
        TopKey(r[0], r[1], TierVolume(*r[2:6]), r[6], rates.get((r[0], r[1]))) for r in top.rows
    ), top.counted


def compute(
    con: duckdb.DuckDBPyConnection,
    window: Window,
    period: str,
    endpoint: str | None = None,
    top: int = 10,
    latest: bool = False,
    spans: Spans | None = None,
    memo: SnapshotMemo | None = None,
    lifetime: bool = True,
) -> Metrics:
    """Metrics of `window` (optionally one endpoint) from the store.

    With `latest`, a window after the newest data (the source is down or
    lagging) slides back to end where the data ends, and the result keeps
    the requested instant as `at`, so its data age and `stale` flag tell
    the reader these are the last good numbers.

    `spans` are `data_spans(con, window.end)` when the caller has them
    (read when not given). With a `memo` of the snapshot `con` reads, the
    figures of the (slid) window are computed once per snapshot, and so is
    the lifetime counter while no data is dated after `at`. Without
    `lifetime` the counter (every request ever ingested, which only the
    Prometheus exposition shows) is not read: `Metrics.lifetime` is None.
    """
    at = window.end
    spans = spans or data_spans(con, at, through(memo, "extent", lambda: extent(con)))
    span = spans.before
    if span is None:
        raise EmptyStoreError(EMPTY_STORE)
    if latest and span[1] < window.end:
        window = Window(span[1] - window.length, span[1])
    figures = through(
        memo, ("figures", window, endpoint, top), lambda: _figures(con, window, endpoint, top)
    )
    if figures is None:
        what = f" for endpoint {endpoint!r}" if endpoint else ""
        held = spans.all or span  # all the store holds: `span` is cut at `at`, which may precede it
        raise StoreError(
            f"no requests{what} in {window}; the store holds data from {iso(held[0])} to {iso(held[1])}"
        )
    life = None
    if lifetime:
        hour = floor_to(at, HOUR)
        counts = through(
            # With every row before `at`, the minutes of [hour, at) are all the
            # minutes from `hour` on: the counter depends on the hour alone.
            memo if spans.settled else None,
            ("lifetime", hour),
            lambda: dict(con.execute(LIFETIME, {"h": hour, "at": at}).fetchall()),
        )
        life = TierVolume(**{t: float(counts.get(t, 0.0)) for t in TIERS})
    return Metrics(
        at=at,
        period=period,
        window=window,
        endpoint=endpoint,
        **figures,
        data_until=min(span[1], at),
        lifetime=life,
    )


def _figures(
    con: duckdb.DuckDBPyConnection, window: Window, endpoint: str | None, top: int
) -> dict | None:
    """The figures of `window` alone (the Metrics fields that depend on
    nothing else), None when it holds no request; StoreError when it needs
    minutes retention compacted away."""
    horizons.check_read(con, window.start)
    p = window_params(window) | {"endpoint": endpoint}
    rows = con.execute(TIER_TOTALS, p).fetchall()
    if not rows:
        return None
    by_tier = {r[0]: r for r in rows}
    volume = TierVolume(**{t: float(by_tier[t][1]) if t in by_tier else 0.0 for t in TIERS})
    latency_sum = sum(float(r[4]) for r in rows)
    pairs = con.execute(LATENCY_BUCKETS, p).fetchall()
    # One window's buckets are a few hundred at most: read in plain Python (no numpy to load).
    hist = Histogram.from_pairs([b for b, _ in pairs], [w for _, w in pairs])
    p50, p95, p99 = hist.quantiles((0.50, 0.95, 0.99))
    top_keys, top_window = _top_keys(con, window, endpoint, top)
    gauges = con.execute(LATEST_GAUGES, {"hi": window.end}).fetchall()
    return {
        "volume": volume,
        "errors": sum(float(r[2]) for r in rows),
        "bytes": sum(float(r[3]) for r in rows),
        "latency": Latency(p50, p95, p99, latency_sum / volume.total if volume.total else None),
        "top_keys": top_keys,
        "top_keys_window": top_window,
        "gauges": tuple((n, float(v)) for n, v in gauges),
    }


def to_json(
    m: Metrics,
    stale_after: timedelta = timedelta(minutes=10),
    health=None,
    costs: dict | None = None,
) -> dict:
    """The seed's /metrics JSON shape (plus added fields), as plain data.
    `stale` is true when the newest data is older than `stale_after` (the
    source is down or lagging: these are the last good numbers). `health`
    (an `health.Health`) adds the seed's health block, `costs` (from
    `costs.usage.WindowCosts.to_json`) its costs block."""
    v = m.volume
    out = {
        "timestamp": iso(m.at),
        "period": m.period,
        "window": {"start": iso(m.window.start), "end": iso(m.window.end)},
        "hitRates": {
            "edge": _pct(v.share("edge")),
            "kv": _pct(v.share("kv")),
            "r2_cold": _pct(v.share("r2")),
            "api": _pct(v.share("api")),
            "combined": _pct(m.combined_hit_rate),
        },
        "latency": {k: _ms(getattr(m.latency, k)) for k in ("p50", "p95", "p99", "avg")},
        "volume": {
            "total_requests": _count(v.total),
            "edge_hits": _count(v.edge),
            "kv_hits": _count(v.kv),
            "r2_rehydrations": _count(v.r2),
            "api_misses": _count(v.api),
            "errors": _count(m.errors),
            "response_bytes": _count(m.bytes),
        },
        "errorRate": _pct(m.error_rate),
        "topKeys": [
            {
                "key": k.key,
                "endpoint": k.endpoint,
                "requests": _count(k.requests),
                "hitRate": _pct(k.hit_rate),
                "tier": k.tier,
                "exact": k.exact,
                "sampleRate": k.sample_rate,
            }
            for k in m.top_keys
        ],
        "dataUntil": iso(m.data_until) if m.data_until else None,
        "dataAgeSeconds": max(0, int((m.at - m.data_until).total_seconds()))
        if m.data_until
        else None,
        "stale": is_stale(m, stale_after),
        "gauges": {name: _count(v) for name, v in m.gauges},
    }
    if costs is not None:
        out["costs"] = costs
    if health is not None:
        out["health"] = health.to_json()
    if m.top_keys_window:
        out["topKeysWindow"] = {
            "start": iso(m.top_keys_window.start),
            "end": iso(m.top_keys_window.end),
        }
        out["topKeysExact"] = m.top_keys_exact
    if m.endpoint:
        out["endpoint"] = m.endpoint
    return finite(out)


def is_stale(m: Metrics, stale_after: timedelta) -> bool:
    """Whether the newest data is older than `stale_after` at `m.at`."""
    return m.data_until is None or m.at - m.data_until > stale_after


# Figures are rounded to significant digits, never to a number of decimals:
# a 4 µs latency keeps its 1 % accuracy (3 decimals made it 0.004 ms or 0).
def _pct(x: float) -> float:
    return significant(x)


def _ms(x: float | None) -> float | None:
    return None if x is None else significant(x)


def _count(x: float) -> int | float:
    # Counts stay exact (a weighted count's fraction too): 15 digits, as Prometheus.
    return int(x) if float(x).is_integer() else significant(x, 15)


KPI_LABELS = {
    "combined": "Combined hit rate %",
    "edge": "Edge hit rate %",
    "kv": "KV hit rate %",
    "r2": "R2 hit rate %",
    "p50": "p50 latency ms",
    "p95": "p95 latency ms",
    "p99": "p99 latency ms",
    "requests": "Requests",
    "error_rate": "Error rate %",
}
# KPIs where a rise is bad news (the dashboard colours deltas with this).
KPI_LOWER_IS_BETTER = {"p50", "p95", "p99", "error_rate"}


def kpis(m: Metrics) -> dict[str, float | None]:
    """The headline numbers of a Metrics, by KPI_LABELS key."""
    return {
        "combined": m.combined_hit_rate,
        "edge": m.volume.share("edge"),
        "kv": m.volume.share("kv"),
        "r2": m.volume.share("r2"),
        "p50": m.latency.p50,
        "p95": m.latency.p95,
        "p99": m.latency.p99,
        "requests": m.volume.total,
        "error_rate": m.error_rate,
    }


def kpi_deltas(current: Metrics, previous: Metrics | None) -> dict[str, float | None]:
    """Change of each KPI against the previous period (None where unknown)."""
    cur = kpis(current)
    prev = kpis(previous) if previous else {}
    return {
        k: (v - prev[k]) if v is not None and prev.get(k) is not None else None
        for k, v in cur.items()
    }
