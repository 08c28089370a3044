"""Per-key rates of a window and the fixed-TTL model on them.

The what-if (`tuning.whatif`) falls back to this model when the store has no
SHARDS sample, and the edge TTL and per-key advice always use it. Under
Poisson arrivals at rate μ a fixed-TTL cache (an entry written at a miss,
living T) hits a lookup with probability μT / (1 + μT). Per-key rates are
weighted request counts divided by the days of data, so Analytics Engine
sampling leaves them unbiased.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta

import duckdb
import numpy as np

from cachemon.clock import DAY, Window
from cachemon.errors import InputError
from cachemon.pricing import R2Lookup
from cachemon.store.queries import KEY_ROWS, TIER_TOTALS, data_days, key_ranges, window_params

# Per key of the window: its requests, its KV lookups (requests the edge
# did not serve), how many KV answered, and its misses by tier and failures.
# A temp table, so each endpoint reads its slice; endpoint totals come from
# the rollups.
KEYS_TEMP = f"""
CREATE OR REPLACE TEMP TABLE ttl_keys AS
SELECT k.*, c.endpoint FROM (
    SELECT key_id, sum(edge + kv + r2 + api) AS requests, sum(kv + r2 + api) AS lookups, sum(kv) AS kv,
           sum(r2) AS r2, sum(api) AS api, sum(fill_errors) AS fill_errors
    FROM ({KEY_ROWS}) GROUP BY key_id
) k JOIN cache_keys c ON c.key_id = k.key_id
"""
ENDPOINT_KEYS = "SELECT requests, lookups FROM ttl_keys WHERE endpoint = $endpoint"


@dataclass(frozen=True)
class KeyRates:
    """One endpoint's KV lookups per key and its totals, per day, over `days` of data."""

    endpoint: str
    days: float
    lookups: np.ndarray  # per key: KV lookups/day
    totals: np.ndarray  # per key: requests/day
    requests: float  # the endpoint's requests/day
    edge_hits: float  # observed edge hits/day
    kv_hits: float  # observed KV hits/day
    r2_share: float  # share of KV misses answered by R2 (the rest reach the origin)
    error_share: float  # share of KV misses that failed (and wrote nothing)
    weight: np.ndarray | float = 1.0  # keys each `lookups` element stands for (see `merged`)
    r2_lookup: R2Lookup = R2Lookup.REHYDRATION  # when the Worker asks R2 ([costs] r2_lookup)


def merged(r: KeyRates) -> KeyRates:
    """`r` with keys of equal lookups merged into one weighted element: the
    model's figures are the same, and a curve of dozens of TTLs over
    millions of mostly one-off keys costs thousands of elements, not millions."""
    values, counts = np.unique(r.lookups, return_counts=True)
    return replace(r, lookups=values, weight=counts.astype(float))


def load_window(con: duckdb.DuckDBPyConnection, window: Window) -> float:
    """Build the per-key table of `window`; returns its days of data."""
    return load_data(con, window)[1]


def load_data(con: duckdb.DuckDBPyConnection, window: Window) -> tuple[Window, float]:
    """Build the per-key table of `window`; returns the part with data and its days."""
    data, days = data_days(con, window)
    con.execute(KEYS_TEMP, key_ranges(data.start, window.end))
    return data, days


def rates(con: duckdb.DuckDBPyConnection, endpoint: str, window: Window, days: float) -> KeyRates:
    """One endpoint's rates: per key from the loaded table, totals from the rollups."""
    tiers = {
        t: (float(req), float(err))
        for t, req, err, *_ in con.execute(
            TIER_TOTALS, window_params(window) | {"endpoint": endpoint}
        ).fetchall()
    }
    requests = sum(req for req, _ in tiers.values())
    if not requests:
        raise InputError(f"no requests for endpoint {endpoint!r} in {window}")
    get = lambda t: tiers.get(t, (0.0, 0.0))  # noqa: E731
    misses = get("r2")[0] + get("api")[0]
    a = con.execute(ENDPOINT_KEYS, {"endpoint": endpoint}).fetchnumpy()
    return KeyRates(
        endpoint,
        days,
        a["lookups"].astype(float) / days,
        a["requests"].astype(float) / days,
        requests / days,
        get("edge")[0] / days,
        get("kv")[0] / days,
        get("r2")[0] / misses if misses else 0.0,
        (get("r2")[1] + get("api")[1]) / misses if misses else 0.0,
    )


def model_hits(mu: np.ndarray, days: float, t: float, caches: float = 1.0) -> np.ndarray:
    """Expected hits a day per key of `caches` equal fixed-TTL caches that
    share its μ lookups a day: μ²T/(C + μT) (C = 1: μ²T/(1+μT)). μ̂² from a
    count n over D days is biased up (a key seen once would predict hits);
    n(n−1)/D² is unbiased for μ² under Poisson arrivals."""
    n = mu * days
    return np.maximum(n * (n - 1), 0.0) / days**2 * t / (caches + mu * t)


@dataclass(frozen=True)
class EdgePrediction:
    endpoint: str
    ttl: timedelta
    edge_hit_rate: float  # % of the endpoint's requests served by the edge
    kv_lookups: float  # requests/day left for KV


def fit_colos(r: KeyRates, edge_ttl: timedelta) -> float:
    """The number of equal edge caches (colos) that makes the model give the
    observed edge hits at the current edge TTL. The event contract has no
    colo, and traffic is not split evenly, so this effective count is
    fitted, once, from what was observed (bisection: hits fall as C grows)."""
    t, lo, hi = edge_ttl / DAY, 1.0, 1e5
    if float(model_hits(r.totals, r.days, t, lo).sum()) <= r.edge_hits:
        return lo
    for _ in range(60):
        mid = (lo * hi) ** 0.5
        lo, hi = (
            (mid, hi)
            if float(model_hits(r.totals, r.days, t, mid).sum()) > r.edge_hits
            else (lo, mid)
        )
    return (lo * hi) ** 0.5


def predict_edge(r: KeyRates, ttl: timedelta, colos: float) -> EdgePrediction:
    """The edge hit rate an edge TTL would give, with `colos` fitted caches."""
    hits = float(model_hits(r.totals, r.days, ttl / DAY, colos).sum())
    return EdgePrediction(r.endpoint, ttl, 100 * hits / r.requests, r.requests - hits)
