"""The budgeted per-key pull: heavy keys exact, the rest from a key sample.

Per-key rows (key × minute) grow with distinct keys, that is with traffic.
Within a `KeyBudget` ([analytics_engine] key_budget rows a day, the
window's share of it), a window's per-key rows are:

* the **heavy** keys, whose weighted requests in the window are at least
  `threshold` (heavy_share of the window's requests, so at most
  1 / heavy_share keys whatever the traffic): pulled exactly, so top keys and
  hot-key advice lose nothing;
* every other key whose hash (`cachemon.keyhash`, written by the Worker)
  is under a rate R, its counts weighted by 1/R (SHARDS): R is chosen, as
  `rollups.budget_rate` chooses the TTL samples' rate, so that these rows fit
  what the budget leaves after the heavy keys' rows.

A key is counted once: heavy or sampled, never both. R = 1 (everything fits)
pulls every key exactly, the same query and rows as a pull without a budget.
The store records R and the threshold per window, and which keys were heavy
(`cachemon.ingest.estimates`), so top keys can say which counts are exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cachemon import rollups
from cachemon.clock import Window
from cachemon.sources import ae_sql

# The per-key columns that are counts (weighted by 1/R for sampled keys).
COUNTS = ("edge", "kv", "r2", "api", "errors", "fill_errors")


@dataclass(frozen=True)
class KeyBudget:
    """Per-key rows a day at most (besides the heavy keys' rows), and the
    share of a window's requests from which a key is heavy."""

    rows_per_day: float
    heavy_share: float

    def threshold(self, total: float) -> float:
        """Weighted requests from which a key of a window with `total` is heavy."""
        return self.heavy_share * total

    def allowed(self, window: Window) -> float:
        """Per-key rows the window may pull: its share of the day's budget."""
        return self.rows_per_day * rollups.window_minutes(window) / rollups.DAY_MINUTES


@dataclass(frozen=True)
class Plan:
    """What to pull: `rate` None means every key exactly; else the `heavy`
    keys' hashes and the rate R for the rest. `unhashed`: some request rows
    have no key hash (0), so no sample can be drawn; `problem`: the column
    holds values that are no key hash."""

    rate: float | None
    heavy: tuple[float, ...]
    threshold: float
    heavy_rows: int
    light_rows: int  # rows of the keys under the rate
    unhashed: bool = False
    problem: str | None = None


def plan(sizes: pa.Table, allowed: float, threshold: float) -> Plan:
    """The pull `ae_sql.key_sizes`' answer allows within `allowed` rows."""
    heavy = sizes["heavy"].to_numpy(zero_copy_only=False) == 1
    part = sizes["part"].to_numpy(zero_copy_only=False)
    rows = sizes["rows"].to_numpy(zero_copy_only=False).astype(np.int64)
    light_part, light_rows = part[~heavy], rows[~heavy]
    hashes = part[heavy]
    exact = Plan(None, (), threshold, int(rows[heavy].sum()), int(light_rows.sum()))
    bad = (light_part == ae_sql.NOT_A_HASH_BUCKET).any() or ((hashes < 0) | (hashes >= 1)).any()
    if bad:
        return Plan(
            None,
            (),
            threshold,
            0,
            0,
            problem="holds values outside [0, 1) in request rows: not the Worker's key hash "
            "(see docs/sources.md)",
        )
    if (light_part == ae_sql.NO_HASH_BUCKET).any() or (hashes == 0).any():
        return Plan(None, (), threshold, exact.heavy_rows, exact.light_rows, unhashed=True)
    edges = np.array([ae_sql.bucket_edge(b) for b in light_part], dtype=np.float64)
    heavy_rows = int(rows[heavy].sum())
    rate = rollups.budget_rate(edges, light_rows, 1.0, max(allowed - heavy_rows, 0.0))
    if rate >= 1.0:
        return exact
    return Plan(
        rate,
        tuple(sorted(float(h) for h in hashes)),
        threshold,
        heavy_rows,
        int(light_rows[edges < rate].sum()),
    )


def weighted(rows: pa.Table, p: Plan) -> tuple[pa.Table, rollups.KeyEstimate]:
    """`ae_sql.sampled_key_counts`' rows as per-key rows (`Rollups.keys`):
    the heavy keys' as they are, the sampled keys' counts divided by the
    rate; and the estimate that says so."""
    is_heavy = pc.is_in(rows["key_hash"], pa.array(p.heavy, pa.float64()))
    out = rows.drop_columns(["key_hash"])
    for name in COUNTS:
        col = out[name]
        out = out.set_column(
            out.column_names.index(name), name, pc.if_else(is_heavy, col, pc.divide(col, p.rate))
        )
    heavy_keys = pc.unique(rows["key"].filter(is_heavy)).to_pylist()
    return out, rollups.KeyEstimate(p.rate, p.threshold, tuple(sorted(heavy_keys)))
