"""SHARDS samples: the raw request times of the keys whose hash
(`cachemon.keyhash`) falls under a rate R, kept so the TTL what-if can replay
them exactly (Waldspurger et al., FAST 2015).

The `Samples` value is the interface between the store and `cachemon.tuning`;
ingestion fills the table and `read` returns one endpoint's span of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Samples:
    """One endpoint's sampled requests over a span, one array element per
    stored request row (not sorted)."""

    endpoint: str
    rate: float  # R: every key with key_hash < R is in the sample, with all its requests
    key: np.ndarray  # int64: equal values are the same key
    t_us: np.ndarray  # int64: request time, epoch microseconds (UTC)
    tier: np.ndarray  # int8: index into cachemon.events.TIERS of the tier that served it
    error: np.ndarray  # bool: status == "error"
    weight: np.ndarray  # float64: the row's sample_interval (1.0 unless the source thinned it)

    def __len__(self) -> int:
        return len(self.t_us)


def read(con, endpoint: str, start, end) -> Samples | None:
    """Placeholder until the sample table lands (the ingestion branch
    replaces this): no samples, so the TTL what-if uses its model."""
    return None
