"""Observations: the cache's figures over many equal windows in one query.

Alert rules look at the last 15 minutes, and anomaly rules at the same
minutes of earlier weeks; a backfill evaluates a week of 15-minute slots.
Each needs hit rates, errors, latency quantiles and gauge readings per
window, so `observe` computes them for a list of window starts at once:
counts summed from minute rollups, quantiles from each window's merged
log-bucket histogram (never averaged), gauges as the last reading.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb

from cachemon.clock import MINUTE, Window
from cachemon.errors import InputError
from cachemon.histogram import grouped_quantiles
from cachemon.metrics.window import TierVolume
from cachemon.names import GAUGES, TIERS
from cachemon.store.queries import ordered_sum

# The windows travel as two parallel lists, zipped by unnest, so no SQL text
# is built from them. Each is expanded into its minutes and hash-joined on
# the minute (a range join over millions of histogram rows is 30× slower);
# the outer bounds let DuckDB skip row groups outside every window.
_WINDOWS = """
SELECT i, ws + to_minutes(k) AS m
FROM (SELECT unnest($idx) AS i, unnest($starts) AS ws), range($minutes) t(k)
"""

TIER_SERIES = f"""
WITH w AS ({_WINDOWS})
SELECT w.i, r.tier, {ordered_sum("r.requests")}, {ordered_sum("r.errors")}, {ordered_sum("r.latency_sum")}
FROM w JOIN rollup_minute r ON r.minute = w.m
WHERE r.minute >= $lo AND r.minute < $hi AND ($endpoint IS NULL OR r.endpoint = $endpoint)
GROUP BY w.i, r.tier
ORDER BY w.i, r.tier
"""

LATENCY_SERIES = f"""
WITH w AS ({_WINDOWS})
SELECT w.i, l.bucket, sum(l.weight) AS weight
FROM w JOIN latency_minute l ON l.minute = w.m
WHERE l.minute >= $lo AND l.minute < $hi AND ($endpoint IS NULL OR l.endpoint = $endpoint)
GROUP BY w.i, l.bucket
ORDER BY w.i, l.bucket
"""

GAUGE_SERIES = f"""
WITH w AS ({_WINDOWS})
SELECT w.i, g.name, arg_max(g.value_last, g.minute)
FROM w JOIN gauge_minute g ON g.minute = w.m
WHERE g.minute >= $lo AND g.minute < $hi
GROUP BY w.i, g.name
"""


@dataclass(frozen=True)
class Observation:
    """The cache's figures over one window (weighted by sample interval)."""

    window: Window
    volume: TierVolume
    errors: float
    latency_sum: float
    p50: float | None
    p95: float | None
    p99: float | None
    gauges: tuple[tuple[str, float], ...] = ()

    @property
    def requests(self) -> float:
        return self.volume.total

    @property
    def combined_hit_rate(self) -> float | None:
        return 100.0 - self.volume.share("api") if self.requests else None

    @property
    def error_rate(self) -> float | None:
        return 100.0 * self.errors / self.requests if self.requests else None

    @property
    def avg_latency(self) -> float | None:
        return self.latency_sum / self.requests if self.requests else None

    def gauge(self, name: str) -> float | None:
        """The last reading of a gauge in the window, or None."""
        return dict(self.gauges).get(name)


def observe(
    con: duckdb.DuckDBPyConnection,
    starts: list[datetime],
    length: timedelta,
    endpoint: str | None = None,
) -> list[Observation]:
    """One Observation per window [start, start + length), in input order.
    Gauges are store-wide, so they ignore `endpoint`."""
    if not starts:
        return []
    if length % MINUTE or length <= timedelta(0):
        raise InputError(f"observation windows must be whole minutes, got {length}")
    p = {
        "idx": list(range(len(starts))),
        "starts": list(starts),
        "minutes": length // MINUTE,
        "lo": min(starts),
        "hi": max(starts) + length,
    }
    tiers: dict[int, dict[str, tuple]] = {}
    for i, tier, req, err, lat in con.execute(TIER_SERIES, p | {"endpoint": endpoint}).fetchall():
        tiers.setdefault(i, {})[tier] = (float(req), float(err), float(lat))
    lat = con.execute(LATENCY_SERIES, p | {"endpoint": endpoint}).fetchnumpy()
    quantiles = grouped_quantiles(lat["i"], lat["bucket"], lat["weight"], (0.50, 0.95, 0.99))
    gauges: dict[int, list] = {}
    for i, name, value in con.execute(GAUGE_SERIES, p).fetchall():
        if name in GAUGES:
            gauges.setdefault(i, []).append((name, float(value)))
    out = []
    for i, start in enumerate(starts):
        t = tiers.get(i, {})
        volume = TierVolume(**{name: t[name][0] if name in t else 0.0 for name in TIERS})
        out.append(
            Observation(
                window=Window(start, start + length),
                volume=volume,
                errors=sum(v[1] for v in t.values()),
                latency_sum=sum(v[2] for v in t.values()),
                p50=quantiles.get(i, (None,) * 3)[0],
                p95=quantiles.get(i, (None,) * 3)[1],
                p99=quantiles.get(i, (None,) * 3)[2],
                gauges=tuple(sorted(gauges.get(i, []))),
            )
        )
    return out
