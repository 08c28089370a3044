"""Per-key TTL advice: the busy keys whose own KV TTL would cost less than
their endpoint's, by the fixed-TTL model on each key's own rate and shares
(a key's own replay would rest on one key's sample, too few to trust).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import duckdb
import numpy as np

from cachemon.clock import DAY
from cachemon.costs.tiermix import TierMix
from cachemon.pricing import Pricing, R2Lookup
from cachemon.tuning.keyrates import model_hits
from cachemon.tuning.whatif import WhatIf

# The endpoint's busiest keys at KV, from the table `whatif` loaded.
HOT_KEYS = """
SELECT c.key, t.lookups, t.kv, t.r2, t.api, t.fill_errors FROM ttl_keys t JOIN cache_keys c USING (key_id)
WHERE t.endpoint = $endpoint ORDER BY t.lookups DESC, c.key LIMIT $limit
"""


@dataclass(frozen=True)
class KeyAdvice:
    """A busy key whose own TTL would cost less than its endpoint's."""

    key: str
    lookups: float  # KV lookups a day
    kv_hit_rate: float  # % of its lookups KV answered (observed)
    ttl: timedelta
    saving: float  # USD/day against the endpoint's current TTL


def key_cost(
    mu: float,
    days: float,
    ttl: timedelta,
    r2_share: float,
    error_share: float,
    pricing: Pricing,
    value_bytes: float,
    month_days: int,
    r2_lookup: R2Lookup = R2Lookup.REHYDRATION,
) -> float:
    """USD a day of one key's μ KV lookups (counted over `days`) under KV
    TTL `ttl`: the tier mix of its modelled hits and misses, plus storage."""
    d = ttl / DAY
    misses = mu - float(model_hits(np.array([mu]), days, d)[0])
    mix = TierMix.from_misses(mu, misses, r2_share, error_share, r2_lookup=r2_lookup)
    stored_gb = mu * d / (1 + mu * d) * value_bytes / 1e9
    return float(mix.cost(pricing)) + stored_gb * pricing["kv_storage"].price / month_days


def per_key(
    con: duckdb.DuckDBPyConnection,
    w: WhatIf,
    pricing: Pricing,
    value_bytes: float,
    month_days: int,
    max_staleness: timedelta,
    limit: int = 20,
) -> list[KeyAdvice]:
    """Among the endpoint's `limit` busiest keys at KV (loaded by `whatif`),
    those whose cheapest candidate TTL within the staleness limit differs
    from the endpoint's current TTL, with the saving."""
    rows = con.execute(HOT_KEYS, {"endpoint": w.endpoint, "limit": limit}).fetchall()
    options = sorted(
        {t for t in (*(p.ttl for p in w.candidates), w.current_ttl) if t <= max_staleness}
    )
    if not options:  # nothing is allowed: no key can be advised a TTL
        return []

    out = []
    for key, lookups, kv, r2, api, fill_errors in rows:
        mu = lookups / w.days
        # The key's own shares of its misses: R2-backed keys rehydrate, others reach the origin.
        missed = r2 + api
        shares = (r2 / missed, min(fill_errors / missed, 1.0)) if missed else (0.0, 0.0)

        def cost(t: timedelta, mu=mu, shares=shares) -> float:
            return key_cost(mu, w.days, t, *shares, pricing, value_bytes, month_days, w.r2_lookup)

        best = min(options, key=cost)
        saving = cost(w.current_ttl) - cost(best)
        if best != w.current_ttl and saving > 0:
            out.append(KeyAdvice(key, mu, 100 * kv / lookups if lookups else 0.0, best, saving))
    return out
