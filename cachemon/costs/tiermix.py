"""The tier-mix cost rule, in one place: what requests cost in KV and R2
given the tier that answered each.

The Worker looks a key up edge → KV → R2 → origin, so of requests counted by
the tier that served them:

* every request the edge did not serve reads KV once (tiers kv, r2, api);
* a fill is written to KV after an R2 rehydration or an origin answer, and
  an error writes nothing: KV writes = r2 + api − the failed fills;
* an R2 Class B get per R2 lookup: with the seed's flow
  (`R2Lookup.REHYDRATION`, the default) the Worker asks R2 only for
  archived keys, so one per request R2 served; with
  `R2Lookup.EVERY_KV_MISS` it asks R2 on every KV miss, so one per request
  R2 or the origin served (`[costs] r2_lookup`).

Measured usage (`costs.usage`), the per-key cost of an experiment
(`tuning.analysis`) and of a key class (`costs.classes`, both
`TierMix.request_cost`), the fixed-TTL model's predictions (`tuning.whatif`) and
the optimiser (`costs.optimize`, in SQL through `kv_writes_sql`) all take
these three numbers from here, each with the configured R2 flow;
`tests/costs/test_tiermix.py` and `tests/costs/test_usage_rule.py` hold
them to independent computations.

Counts may be floats or numpy arrays (one element per key); the rule is
elementwise either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

from cachemon.pricing import Pricing, R2Lookup

if TYPE_CHECKING:
    import numpy as np

# numpy only where arrays come in: `cachemon metrics` prices floats and starts without it.
Amount: TypeAlias = "float | np.ndarray"

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
    r2_lookup: R2Lookup = R2Lookup.REHYDRATION  # when the Worker asks R2

    def __post_init__(self):
        # A plain string from a config is checked here, once, and kept as the enum.
        object.__setattr__(self, "r2_lookup", R2Lookup.parse(self.r2_lookup, "r2_lookup"))

    @classmethod
    def from_misses(
        cls,
        lookups: Amount,
        misses: Amount,
        r2_share: Amount,
        error_share: Amount,
        edge: Amount = 0.0,
        r2_lookup: R2Lookup = R2Lookup.REHYDRATION,
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
            r2_lookup,
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
        fills = self.r2 + self.api - self.failed_fills
        if isinstance(fills, int | float):
            return 0.0 if fills <= 0.0 else float(fills)  # np.maximum(fills, 0.0) of a number
        import numpy as np

        return np.maximum(fills, 0.0)

    @property
    def r2_reads(self) -> Amount:
        """R2 Class B gets: one per R2 lookup, i.e. per rehydration, or per
        KV miss when the Worker asks R2 on every one."""
        if self.r2_lookup is R2Lookup.EVERY_KV_MISS:
            return self.r2 + self.api
        return self.r2

    def units(self, component: str) -> Amount:
        """Units of a priced component (one of COMPONENTS)."""
        return {
            "kv_reads": self.kv_reads,
            "kv_writes": self.kv_writes,
            "r2_class_b": self.r2_reads,
        }[component]

    def cost(self, pricing: Pricing) -> Amount:
        """List cost (USD) of the mix's KV reads, KV writes and R2 gets."""
        return sum(pricing[c].list_cost(self.units(c)) for c in COMPONENTS)

    def request_cost(self, pricing: Pricing) -> Amount:
        """List cost (USD) of the requests themselves: a Worker run each
        plus the mix's KV reads, KV writes and R2 gets. The per-key cost
        rule (an experiment's cost per request, the Costs page's cost of
        each key class); storage and Analytics Engine are not per key."""
        return pricing["workers_requests"].list_cost(self.requests) + self.cost(pricing)


def kv_writes_sql(r2: str = "r2", api: str = "api", failed: str = "fill_errors") -> str:
    """`TierMix.kv_writes` as a SQL expression over columns. The per-key
    rows keep `fill_errors`, the errors of requests answered by R2 or the
    origin (schema v9; rows written before it hold least(errors, r2 + api)),
    so edge and KV errors reduce no write (clipped at zero, as the rule is)."""
    return f"greatest({r2} + {api} - {failed}, 0)"
