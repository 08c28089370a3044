"""The tier-mix cost rule, in one place: what requests cost in KV and R2
given the tier that answered each.

The Worker looks a key up edge → KV → R2 → origin, so of requests counted by
the tier that served them:

* every request the edge did not serve reads KV once (tiers kv, r2, api);
* a fill is written to KV after an R2 rehydration or an origin answer, and
  an error writes nothing: KV writes = r2 + api − the failed fills;
* every R2 rehydration is one R2 Class B get.

Measured usage (`costs.usage`), the per-key cost of an experiment
(`tuning.analysis`), the fixed-TTL model's predictions (`tuning.whatif`) and
the optimiser (`costs.optimize`, in SQL through `kv_writes_sql`) all take
these three numbers from here; `tests/costs/test_tiermix.py` holds them to one
independent computation.

Counts may be floats or numpy arrays (one element per key); the rule is
elementwise either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

import numpy as np

from cachemon.pricing import Pricing

Amount: TypeAlias = float | np.ndarray

# The priced components a tier mix produces (keys of `Pricing`).
COMPONENTS = ("kv_reads", "kv_writes", "r2_class_b")


@dataclass(frozen=True)
class TierMix:
    """Requests by the tier that served them, and how many of the fills
    (r2 and api answers) failed. Counts are weighted requests, over any
    span: a window's totals, a key's, or a modelled day."""

    edge: Amount = 0.0
    kv: Amount = 0.0
    r2: Amount = 0.0
    api: Amount = 0.0
    failed_fills: Amount = 0.0  # r2 or api answers that were errors

    @classmethod
    def from_misses(
        cls,
        lookups: Amount,
        misses: Amount,
        r2_share: Amount,
        error_share: Amount,
        edge: Amount = 0.0,
    ) -> TierMix:
        """A modelled mix: `lookups` KV lookups of which `misses` missed; a
        miss is answered by R2 with probability `r2_share` (else by the
        origin) and fails with probability `error_share` (both as observed)."""
        return cls(
            edge,
            lookups - misses,
            misses * r2_share,
            misses * (1 - r2_share),
            misses * error_share,
        )

    @property
    def requests(self) -> Amount:
        return self.edge + self.kv + self.r2 + self.api

    @property
    def kv_reads(self) -> Amount:
        """Every request the edge did not serve looks KV up."""
        return self.kv + self.r2 + self.api

    @property
    def kv_writes(self) -> Amount:
        """Fills after an R2 rehydration or an origin answer; a failed one
        writes nothing. Never negative (per-key rows count errors without
        their tier, see `kv_writes_sql`)."""
        return np.maximum(self.r2 + self.api - self.failed_fills, 0.0)

    @property
    def r2_reads(self) -> Amount:
        """R2 Class B gets: one per rehydration."""
        return self.r2

    def units(self, component: str) -> Amount:
        """Units of a priced component (one of COMPONENTS)."""
        return {"kv_reads": self.kv_reads, "kv_writes": self.kv_writes, "r2_class_b": self.r2}[
            component
        ]

    def cost(self, pricing: Pricing) -> Amount:
        """List cost (USD) of the mix's KV reads, KV writes and R2 gets."""
        return sum(pricing[c].list_cost(self.units(c)) for c in COMPONENTS)


def kv_writes_sql(r2: str = "r2", api: str = "api", failed: str = "fill_errors") -> str:
    """`TierMix.kv_writes` as a SQL expression over columns. The per-key
    rows keep `fill_errors`, the errors of requests answered by R2 or the
    origin (schema v9; rows written before it hold least(errors, r2 + api)),
    so edge and KV errors reduce no write (clipped at zero, as the rule is)."""
    return f"greatest({r2} + {api} - {failed}, 0)"
