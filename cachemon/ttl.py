"""TTL what-if: predict KV hit rate and cost for candidate TTLs from the
per-key request rates in the store, recommend one, and check the model
against an exact replay where a request-level trace exists.

The model is the fixed-TTL cache of KV `expirationTtl`: an entry is written
at a miss and lives T. Under Poisson arrivals at rate μ (a key's KV lookups,
i.e. its edge misses, per day) a lookup hits with probability μT / (1 + μT),
misses (and writes) μ / (1 + μT) times a day, and the key is present a
share μT / (1 + μT) of the time. Per-key rates are weighted request counts
divided by the days of data, so Analytics Engine sampling leaves them
unbiased (per-key gaps between sampled requests would not be). A KV TTL
does not change what the edge serves, so μ is measured, not modelled.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb
import numpy as np
import pandas as pd

from . import optimize
from .clock import DAY, Window, format_duration, parse_duration
from .errors import InputError
from .pricing import Pricing, days_in_month

# Per endpoint, the per-key totals of the loaded opt_keys table.
KEY_RATES = """
SELECT per_day, kv_rate, kv, r2, api, errors FROM opt_keys WHERE endpoint = $endpoint
"""


@dataclass(frozen=True)
class KeyRates:
    """Per-key daily rates of one endpoint over `days` of data."""

    endpoint: str
    days: float
    total: np.ndarray  # requests/day
    lookups: np.ndarray  # KV lookups/day (requests the edge did not serve)
    kv_hits: float  # observed KV hits/day
    r2_share: float  # share of KV misses answered by R2 (the rest reach the origin)
    error_share: float  # share of KV misses that failed (and wrote nothing)

    @property
    def requests(self) -> float:
        return float(self.total.sum())


@dataclass(frozen=True)
class Prediction:
    """What a KV TTL would do to one endpoint, per day, at list prices."""

    endpoint: str
    ttl: timedelta
    kv_hit_rate: float  # % of the endpoint's requests served by KV
    hit_rate: float  # % not served by the origin
    kv_reads: float
    kv_writes: float
    r2_reads: float
    stored_gb: float
    cost: float  # USD/day of KV reads, writes, storage and R2 reads


def load(con: duckdb.DuckDBPyConnection, window: Window, at: datetime, endpoint: str) -> KeyRates:
    """The endpoint's per-key rates over `window` (clipped to the data)."""
    days = optimize.load_keys(con, window, at)
    df = con.execute(KEY_RATES, {"endpoint": endpoint}).df()
    if df.empty:
        raise InputError(f"no requests for endpoint {endpoint!r} in {window}")
    misses = float((df.r2 + df.api).sum())
    return KeyRates(endpoint, days, df.per_day.to_numpy(float), df.kv_rate.to_numpy(float),
                    float(df.kv.sum()) / days, float(df.r2.sum()) / misses if misses else 0.0,
                    float(df.errors.sum()) / misses if misses else 0.0)


def predict(r: KeyRates, ttl: timedelta, pricing: Pricing, value_bytes: float, month_days: int) -> Prediction:
    """The fixed-TTL model's figures for KV TTL `ttl`."""
    t = ttl / DAY
    mu = r.lookups
    present = mu * t / (1 + mu * t)
    # Expected hits are μ²T/(1+μT) a day. μ̂² from a count n over D days is
    # biased up (a key seen once would predict hits); n(n−1)/D² is unbiased
    # for μ² under Poisson arrivals.
    n = mu * r.days
    hits = float((np.maximum(n * (n - 1), 0.0) / r.days ** 2 * t / (1 + mu * t)).sum())
    misses = float(mu.sum()) - hits
    total = r.requests
    edge = total - float(mu.sum())
    writes = misses * (1 - r.error_share)
    r2 = misses * r.r2_share
    gb = float(present.sum()) * value_bytes / 1e9
    cost = (pricing["kv_reads"].list_cost(float(mu.sum())) + pricing["kv_writes"].list_cost(writes)
            + gb * pricing["kv_storage"].price / month_days + pricing["r2_class_b"].list_cost(r2))
    return Prediction(r.endpoint, ttl, 100 * hits / total, 100 * (edge + hits + r2) / total,
                      float(mu.sum()), writes, r2, gb, cost)


@dataclass(frozen=True)
class WhatIf:
    endpoint: str
    window: Window
    days: float
    current_ttl: timedelta
    observed_kv_hit_rate: float  # measured at the current TTL
    current: Prediction  # the model at the current TTL (its calibration)
    candidates: tuple[Prediction, ...]


def whatif(con, cfg, endpoint: str, ttls: list[timedelta], window: Window, at: datetime) -> WhatIf:
    """Predictions for each candidate TTL and the current one."""
    current = dict(cfg.costs.kv_ttl).get(endpoint)
    if current is None:
        raise InputError(f"unknown endpoint {endpoint!r}: [costs] kv_ttl has {', '.join(dict(cfg.costs.kv_ttl))}")
    r = load(con, window, at, endpoint)
    month = days_in_month(at)
    p = lambda t: predict(r, t, cfg.pricing, cfg.costs.value_bytes, month)  # noqa: E731
    return WhatIf(endpoint, window, r.days, current, 100 * r.kv_hits / r.requests, p(current),
                  tuple(p(t) for t in sorted(set(ttls))))


def recommend(w: WhatIf, max_staleness: timedelta) -> Prediction | None:
    """The cheapest candidate within the staleness limit (ties: the higher
    hit rate); None when no candidate is allowed."""
    allowed = [p for p in w.candidates if p.ttl <= max_staleness]
    return min(allowed, key=lambda p: (round(p.cost, 9), -p.hit_rate)) if allowed else None


def parse_ttls(text: str) -> list[timedelta]:
    """'6h,12h,24h' → durations, each between 60 s and 365 days (KV's limits)."""
    out = [parse_duration(part.strip(), "--ttl") for part in text.split(",") if part.strip()]
    if not out:
        raise InputError("--ttl needs at least one duration, e.g. 6h,12h,24h")
    bad = [format_duration(t) for t in out if not timedelta(seconds=60) <= t <= timedelta(days=365)]
    if bad:
        raise InputError(f"--ttl {', '.join(bad)}: a KV TTL must be between 60s and 365d")
    return out


def draft_experiment(endpoint: str, current: timedelta, candidate: timedelta, start: datetime) -> str:
    """A `[[experiments]]` block testing `candidate` against the current TTL."""
    name = f"{endpoint}-ttl-{format_duration(candidate)}"
    return f"""[[experiments]]
name = "{name}"
description = "KV TTL {format_duration(candidate)} for {endpoint} vs {format_duration(current)} (drafted by ttl whatif)"
endpoint = "{endpoint}"
start = "{start.strftime('%Y-%m-%dT%H:%M:%SZ')}"
duration = "14d"
[[experiments.cohorts]]
name = "control"
ttl = "{format_duration(current)}"
weight = 0.5
[[experiments.cohorts]]
name = "treatment"
ttl = "{format_duration(candidate)}"
weight = 0.5
"""


def replay(trace: pd.DataFrame, ttl: timedelta) -> float:
    """KV hits of a request-level trace replayed exactly through a fixed-TTL
    cache that starts empty: the requests that reached KV (tiers kv, r2,
    api), each key's first lookup a miss that writes, and an entry expiring
    `ttl` after its write. Exact for an unsampled trace (columns key,
    timestamp, tier)."""
    lookups = trace[trace.tier.isin(["kv", "r2", "api"])]
    if lookups.empty:
        return 0.0
    key = pd.factorize(lookups.key)[0].astype(np.int64)
    ms = (lookups.timestamp - lookups.timestamp.min()).dt.total_seconds().to_numpy() * 1000
    span = int(ms.max()) + 1
    g = np.sort(key * span + ms.astype(np.int64))  # by key, then time
    starts = np.searchsorted(g, np.arange(key.max() + 1) * span)
    ends = np.append(starts[1:], len(g))
    pos, end, misses = starts, ends, len(starts)
    step = int(ttl.total_seconds() * 1000)
    # Jump from write to the first lookup at or after its expiry, for all
    # keys at once: as many rounds as the busiest key has writes.
    while len(pos):
        nxt = np.searchsorted(g, g[pos] + step, side="left")
        live = nxt < end
        misses += int(live.sum())
        pos, end = nxt[live], end[live]
    return float(len(g) - misses)
