"""Whether a key's counts in a window are exact or estimated from a key sample.

A budgeted Analytics Engine pull (`cachemon.sources.ae_keys`) leaves, per
span, its key sample's rate and the keys it pulled exactly (heavy hitters):
`key_estimates` and `key_heavy` (`cachemon.ingest.estimates`). A key's
count over a window is exact unless the window overlaps an estimated span
where the key was not heavy: there its count is its sampled count weighted
by 1/rate (or 0, when its hash is above the rate), an estimate.
"""

from __future__ import annotations

import duckdb

from cachemon.clock import Window

# The lowest rate each key's counts in [lo, hi) rest on; keys exact there are absent.
SAMPLED_RATES = """
WITH k AS (
    SELECT key_id, key, endpoint FROM cache_keys
    WHERE key IN (SELECT unnest($keys::VARCHAR[]))
)
SELECT k.key, k.endpoint, min(e.rate)
FROM key_estimates e CROSS JOIN k
WHERE e.lo < $hi AND e.hi > $lo AND NOT EXISTS (
    SELECT 1 FROM key_heavy h
    WHERE h.source = e.source AND h.lo = e.lo AND h.hi = e.hi AND h.key_id = k.key_id)
GROUP BY k.key, k.endpoint
"""
ANY_ESTIMATE = "SELECT 1 FROM key_estimates WHERE lo < $hi AND hi > $lo LIMIT 1"


def sampled_rates(
    con: duckdb.DuckDBPyConnection, window: Window, keys: list[tuple[str, str]]
) -> dict[tuple[str, str], float]:
    """For each (key, endpoint) of `keys` whose counts over `window` are
    estimated, the lowest key-sample rate they rest on; exact keys are not
    in the result."""
    p = {"lo": window.start, "hi": window.end}
    if not keys or not con.execute(ANY_ESTIMATE, p).fetchall():
        return {}
    rows = con.execute(SAMPLED_RATES, p | {"keys": sorted({k for k, _ in keys})}).fetchall()
    wanted = set(keys)
    return {(k, e): float(r) for k, e, r in rows if (k, e) in wanted}
