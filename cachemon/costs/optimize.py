"""The cost optimisation analyser: key classes and recommendations, each
with its evidence and a saving priced from measured volumes.

Key classes, from per-key request rates over `[costs] class_window` (or the
data there is), are the store's one rule (`store.queries.key_class_sql`):
hot > 100 requests/day, cold < 10 requests/month (30 days), warm in between
(both bounds inclusive). A key's age counts from its first request in the
store.

Where a saving depends on how long entries live in KV, it uses the
fixed-TTL model of KV `expirationTtl` (an entry written at a miss lives T):
a key asked λ times a day at KV misses λ/(1+λT) times a day and is present
a share λT/(1+λT) of the time. What its reads, writes and R2 gets cost is
the tier-mix rule (`costs.tiermix`): a miss is answered by R2 or the origin
as the key's were, and writes unless it failed, as its fills did.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

import duckdb
import numpy as np

from cachemon.clock import DAY, Window
from cachemon.costs.classes import class_of_sql, class_span, key_rows
from cachemon.costs.tiermix import TierMix, kv_writes_sql
from cachemon.pricing import Pricing, R2Lookup, days_in_month
from cachemon.settings import Config
from cachemon.store import topkeys
from cachemon.store.queries import (
    COLD_PER_DAY,
    KEY_ROWS,
    KeyClass,
    data_days,
    key_class_sql,
    key_ranges,
)

if TYPE_CHECKING:  # an annotation only (the CLI starts without pandas)
    import pandas as pd

TTL_FACTORS = (1, 2, 4, 7, 14, 30)

# The per-key table stays in DuckDB (a temp table, allowed on read-only
# connections): a month at the seed's volume is millions of one-off keys,
# and only small slices (hot offenders, warm churners, sums) come out.
_KEYS_TEMP = f"""
CREATE OR REPLACE TEMP TABLE opt_keys AS
WITH k AS (
    SELECT key_id, sum(edge) AS edge, sum(kv) AS kv, sum(r2) AS r2, sum(api) AS api, sum(errors) AS errors,
           sum(fill_errors) AS fill_errors, sum(edge + kv + r2 + api) AS requests
    FROM ({KEY_ROWS}) {{where}} GROUP BY key_id),
-- First seen of just these keys: a semi-join, not a month of key_day grouped
-- (key_day sums every per-key row, minutes included, since schema 9).
f AS (
    SELECT key_id, min(first_seen) AS first_seen FROM key_day
    WHERE key_id IN (SELECT key_id FROM k) GROUP BY key_id)
SELECT k.key_id, c.endpoint, k.edge, k.kv, k.r2, k.api, k.errors, k.fill_errors, k.requests,
       k.requests / $days AS per_day, (k.kv + k.r2 + k.api) / $days AS kv_rate,
       {key_class_sql("k.requests / $days")} AS class,
       epoch($at - f.first_seen) / 86400.0 AS age_days
FROM k JOIN cache_keys c ON c.key_id = k.key_id JOIN f ON f.key_id = k.key_id
"""
KEYS_TEMP = _KEYS_TEMP.format(where="")
# The same table for just the keys $ids (the busiest keys' candidates): the
# same sums and columns, one scan filtered by key instead of every key grouped.
KEYS_OF_TEMP = _KEYS_TEMP.format(where="WHERE key_id IN (SELECT unnest($ids))")
# Every key id of the window's per-key rows, for counting the keys (a bitmap
# in numpy: key ids are dense, and DuckDB's distinct count of millions of
# keys is several times slower).
KEY_IDS = f"SELECT key_id FROM ({KEY_ROWS})"
CLASS_COUNTS = "SELECT class, count(*) FROM opt_keys GROUP BY class"
# The key table's class over a class window instead of its own window (the
# Top keys page): the one class-window query (`classes.class_of_sql`). The
# table is rebuilt, not updated: an UPDATE of every row is several times
# slower in DuckDB. Parameters: `classes.ClassSpan.params()`.
RECLASS = "CREATE OR REPLACE TEMP TABLE opt_keys AS " + class_of_sql("opt_keys", replace=True)
# The dashboard's key table: filters are parameters (a NULL filter is off).
_KEY_FILTER = """
FROM opt_keys o JOIN cache_keys c USING (key_id)
WHERE ($endpoint IS NULL OR o.endpoint = $endpoint) AND ($class IS NULL OR o.class = $class)
  AND ($contains IS NULL OR contains(lower(c.key), lower($contains)))
"""
KEY_PAGE = f"""
SELECT c.key, o.key_id, o.endpoint, o.requests, o.per_day,
       100 * (o.edge + o.kv + o.r2) / o.requests AS hit_rate,
       100 * o.edge / o.requests AS edge_share, 100 * o.kv / o.requests AS kv_share,
       100 * o.r2 / o.requests AS r2_share, 100 * o.api / o.requests AS api_share,
       CASE WHEN o.edge >= greatest(o.kv, o.r2, o.api) THEN 'edge' WHEN o.kv >= greatest(o.r2, o.api) THEN 'kv'
            WHEN o.r2 >= o.api THEN 'r2' ELSE 'api' END AS tier,
       o.class, o.age_days, o.errors
{_KEY_FILTER}
ORDER BY o.requests DESC, c.key LIMIT $limit
"""
KEY_COUNT = f"SELECT count(*) {_KEY_FILTER}"
HOT_LOW = f"""
SELECT c.key, o.endpoint, o.edge, o.requests, o.per_day, 100 * o.edge / o.requests AS edge_rate
FROM opt_keys o JOIN cache_keys c USING (key_id)
WHERE o.class = '{KeyClass.HOT}' AND 100 * o.edge / o.requests < $target
"""
# Per endpoint: the expected share of time the cold old keys are in KV.
COLD_OLD = f"""
SELECT count(*), coalesce(sum(kv_rate * $t / (1 + kv_rate * $t)), 0) FROM opt_keys
WHERE class = '{KeyClass.COLD}' AND age_days > $age AND endpoint = $endpoint
"""
COLD_ENDPOINTS = (
    f"SELECT DISTINCT endpoint FROM opt_keys WHERE class = '{KeyClass.COLD}' AND age_days > $age"
)
# Warm keys whose fills (the tier-mix rule's KV writes) cost more than the KV
# hits they serve: the TTL rule's keys, from a relation with opt_keys' columns.
_CHURN = f"""
SELECT endpoint, kv_rate, {kv_writes_sql()} AS fills, kv, r2, api FROM {{keys}}
WHERE class = '{KeyClass.WARM}' AND {kv_writes_sql()} * $write > kv * $read
"""
WARM_CHURN = _CHURN.format(keys="opt_keys")
# The same keys straight from the window's per-key rows, for a reader that
# needs only them (the TTL page): no temp table, no first-seen ages.
WARM_CHURN_OF_WINDOW = _CHURN.format(
    keys=f"""(
    SELECT c.endpoint, (k.kv + k.r2 + k.api) / $days AS kv_rate, k.kv, k.r2, k.api, k.fill_errors,
           {key_class_sql("k.requests / $days")} AS class
    FROM (SELECT key_id, sum(kv) AS kv, sum(r2) AS r2, sum(api) AS api,
                 sum(fill_errors) AS fill_errors, sum(edge + kv + r2 + api) AS requests
          FROM ({KEY_ROWS}) GROUP BY key_id) k
    JOIN cache_keys c ON c.key_id = k.key_id)"""
)


def load_keys(con: duckdb.DuckDBPyConnection, window: Window, at: datetime) -> float:
    """Build the per-key table of `window` in DuckDB; returns the days of
    data it covers (rates per day divide by these)."""
    return _load_keys(con, window, at)[1]


def _load_keys(
    con: duckdb.DuckDBPyConnection, window: Window, at: datetime
) -> tuple[Window, float]:
    data, days = data_days(con, window)
    # Not `key_rows`: the report's float sums over keys (R2 archival) would
    # add in another order, changing their last digits.
    con.execute(KEYS_TEMP, key_ranges(data.start, window.end) | {"days": days, "at": at})
    return data, days


@dataclass(frozen=True)
class KeyFilter:
    """The key table's filters; None leaves one off. `contains` is matched
    case-insensitively as plain text (a parameter, never SQL)."""

    endpoint: str | None = None
    klass: KeyClass | None = None
    contains: str | None = None
    limit: int = 500

    def params(self) -> dict:
        return {"endpoint": self.endpoint, "class": self.klass, "contains": self.contains or None}


@dataclass(frozen=True)
class KeyPage:
    rows: pd.DataFrame  # KEY_PAGE's columns, busiest first
    matching: int  # keys matching the filter (rows holds at most `limit`)
    window: Window  # the span counted (compacted hours at the ends count whole, as in metrics), to the data's end
    days: float
    # The span the class column's rates are over (the data in it) and its days.
    class_window: Window | None = None
    class_days: float | None = None


def key_page(
    con: duckdb.DuckDBPyConnection,
    window: Window,
    at: datetime,
    f: KeyFilter = KeyFilter(),
    classes: Window | None = None,
) -> KeyPage:
    """The busiest keys of `window` matching `f`, with the same counts as
    the metrics' top keys. Hit rate and the tier shares are percentages of
    each key's requests. The class (column and filter) is over `window`, or
    over `classes` when given (the class window ending with it)."""
    span = topkeys.covered(con, window)
    data, days = data_days(con, span)
    rows = key_rows(con, data.start, span.end)
    ids = None if f.params() != KeyFilter().params() else _candidates(con, span, data, f.limit)
    if ids is None:
        con.execute(KEYS_TEMP, rows | {"days": days, "at": at})
    else:
        # Unfiltered: only the busiest keys' candidates are counted and
        # shown; how many keys the range has is one scan of key ids.
        con.execute(KEYS_OF_TEMP, rows | {"days": days, "at": at, "ids": ids})
    class_window, class_days = Window(data.start, data.end), days
    if classes is not None:
        cs = class_span(con, classes)
        class_window, class_days = cs.window, cs.days
        if (cs.window, cs.counted.end) != (data, span.end):  # else the classes are these
            con.execute(RECLASS, cs.params())
    page = con.execute(KEY_PAGE, f.params() | {"limit": f.limit}).df()
    shown = Window(span.start, max(span.start, data.end))
    if ids is None:
        matching = int(con.execute(KEY_COUNT, f.params()).fetchall()[0][0])
    else:
        matching = _key_count(con, rows)
    return KeyPage(page, matching, shown, days, class_window, class_days)


def _candidates(
    con: duckdb.DuckDBPyConnection, span: Window, data: Window, limit: int
) -> list[int] | None:
    """The busiest keys' candidates (`topkeys.busiest_candidates`) of the
    per-key rows counted (`span` from the data's start), or None."""
    if data.start >= span.end:
        return None  # no data in the range: the full path says so
    return topkeys.busiest_candidates(con, Window(data.start, span.end), limit)


def _key_count(con: duckdb.DuckDBPyConnection, rows: dict) -> int:
    """The number of distinct keys in the per-key rows of `rows` (`key_ranges`)."""
    ids = con.execute(KEY_IDS, rows).fetchnumpy()["key_id"]
    if len(ids) == 0:
        return 0
    seen = np.zeros(int(ids.max()) + 1, dtype=bool)
    seen[ids] = True
    return int(seen.sum())


def class_counts(con: duckdb.DuckDBPyConnection) -> dict[KeyClass, int]:
    """Keys of each class in the loaded per-key table (classes without keys left out)."""
    return {KeyClass(c): int(n) for c, n in con.execute(CLASS_COUNTS).fetchall()}


class Kind(StrEnum):
    """A recommendation's kind; the value is what the report stores and shows."""

    EDGE_OPTIMIZATION = "edge_optimization"
    R2_ARCHIVAL = "r2_archival"
    TTL_TUNING = "ttl_tuning"


@dataclass(frozen=True)
class Recommendation:
    """One change to make, with its evidence and what it saves a day."""

    type: Kind
    title: str
    evidence: tuple[str, ...]
    action: str
    saving_per_day: float  # USD, list prices

    @classmethod
    def from_json(cls, d: dict) -> Recommendation:
        """A recommendation read back from a stored report (`dataclasses.asdict`)."""
        return cls(
            Kind(d["type"]), d["title"], tuple(d["evidence"]), d["action"], d["saving_per_day"]
        )


def edge_optimization(
    con: duckdb.DuckDBPyConnection, days: float, pricing: Pricing, target: float
) -> Recommendation | None:
    """Hot keys whose edge hit rate is under `target` %: every edge miss is
    a KV read; reaching the target avoids the difference."""
    low = con.execute(HOT_LOW, {"target": target}).df()
    if low.empty:
        return None
    low["avoidable"] = (low["requests"] - low["edge"]) / days - low["requests"] / days * (
        1 - target / 100
    )
    saving = pricing["kv_reads"].list_cost(float(low["avoidable"].sum()))
    # Ties (keys with the same counts) in key order, so the report is stable.
    worst = low.sort_values(["avoidable", "key"], ascending=[False, True]).head(5)
    evidence = tuple(
        f"{r.key} ({r.endpoint}): {r.edge_rate:.0f}% edge, {r.per_day:,.0f} requests/day"
        for r in worst.itertuples()
    )
    return Recommendation(
        Kind.EDGE_OPTIMIZATION,
        f"{len(low):,} hot keys have an edge hit rate under {target:g}%",
        evidence,
        "Raise the edge TTL for these keys or pre-warm them at the edge",
        saving,
    )


def r2_archival(
    con: duckdb.DuckDBPyConnection,
    pricing: Pricing,
    ttl: dict,
    archive_after: timedelta,
    value_bytes: float,
    at: datetime,
) -> Recommendation | None:
    """Cold keys older than `archive_after`: their expected KV bytes (the
    share of time each is present, fixed-TTL model) cost less in R2."""
    age = archive_after / DAY
    count, live = 0, 0.0
    for (endpoint,) in con.execute(COLD_ENDPOINTS, {"age": age}).fetchall():
        n, share = con.execute(
            COLD_OLD, {"t": ttl.get(endpoint, DAY) / DAY, "age": age, "endpoint": endpoint}
        ).fetchall()[0]
        count, live = count + n, live + share
    if not count:
        return None
    gb = live * value_bytes / 1e9
    per_month = gb * (pricing["kv_storage"].price - pricing["r2_storage"].price)
    return Recommendation(
        Kind.R2_ARCHIVAL,
        f"Archive {count:,} cold entries to R2",
        (
            f"{count:,} keys under {COLD_PER_DAY * 30:g} requests/month, first seen over {age:g} days ago",
            f"about {gb * 1e3:,.1f} MB of them in KV at a time",
        ),
        f"Move them to R2 (one-time {count:,} Class A puts: ${pricing['r2_class_a'].list_cost(count):.4f})",
        per_month / days_in_month(at),
    )


def ttl_cost(
    lam: np.ndarray,
    t_days: float,
    pricing: Pricing,
    value_bytes: float,
    month_days: int,
    r2_share: np.ndarray | float = 0.0,
    error_share: np.ndarray | float = 0.0,
    r2_lookup: R2Lookup = R2Lookup.REHYDRATION,
) -> np.ndarray:
    """Daily cost per key of its KV lookups (λ a day) under a fixed TTL of
    `t_days`: the tier mix of its hits and misses (misses answered by R2 a
    share `r2_share` of the time and failing `error_share`, as observed),
    plus KV storage for the share of time it is present. R2 gets follow
    `r2_lookup` (`[costs] r2_lookup`)."""
    misses = lam / (1 + lam * t_days)
    mix = TierMix.from_misses(lam, misses, r2_share, error_share, r2_lookup=r2_lookup)
    stored_gb = lam * t_days / (1 + lam * t_days) * value_bytes / 1e9
    return mix.cost(pricing) + stored_gb * pricing["kv_storage"].price / month_days


@dataclass(frozen=True)
class TtlChoice:
    """The one rule's TTL decision for an endpoint (`ttl_choices`): what the
    Costs recommendation says and the TTL what-if page shows."""

    endpoint: str
    current: timedelta
    recommended: timedelta  # the cheapest option when it saves something, else the current TTL
    saving: float  # USD/day the churning keys save at `recommended` (0 when kept)
    keys: int = 0  # warm keys whose KV writes cost more than the reads they serve
    writes: float = 0.0  # their KV writes a day
    reads: float = 0.0  # their KV hits a day
    costs: tuple[tuple[timedelta, float], ...] = ()  # each option's USD/day for those keys

    @property
    def changes(self) -> bool:
        return self.recommended != self.current


# The method the rule predicts with, for every surface that shows its choice.
TTL_METHOD = (
    "the fixed-TTL model λT/(1+λT) per key on the warm keys whose KV writes cost more than "
    "the reads they serve, over the class window"
)


def ttl_options(current: timedelta, max_ttl: timedelta) -> tuple[timedelta, ...]:
    """The TTLs the rule weighs for an endpoint at `current`: `current` times
    each of `TTL_FACTORS`, capped at the staleness limit `max_ttl` (so the
    limit itself whenever a factor reaches past it), ascending."""
    return tuple(sorted({min(current * f, max_ttl) for f in TTL_FACTORS}))


def ttl_choices(
    con: duckdb.DuckDBPyConnection,
    days: float,
    pricing: Pricing,
    ttl: dict,
    max_ttl: timedelta,
    value_bytes: float,
    at: datetime,
    r2_lookup: R2Lookup = R2Lookup.REHYDRATION,
    window: dict | None = None,
) -> dict[str, TtlChoice]:
    """The one rule deciding each endpoint's KV TTL (for every endpoint of
    `ttl`, from the per-key table `load_keys` built): its warm keys whose KV
    writes cost more than the KV reads they serve (a write is 10 reads at
    list prices), priced under each of `ttl_options` by the fixed-TTL model;
    the cheapest (ties: the shorter) when it saves something against the
    current TTL, else the current one. An endpoint without such keys keeps
    its TTL. The keys come from the per-key table `load_keys` built, or,
    given `window` (`key_ranges` plus `days`), straight from that window's
    per-key rows (the same keys, without the table's other columns)."""
    w, r = pricing["kv_writes"], pricing["kv_reads"]
    prices = {"write": w.price / w.per, "read": r.price / r.per}
    churn = con.execute(
        WARM_CHURN if window is None else WARM_CHURN_OF_WINDOW, prices | (window or {})
    )
    churn = churn.df()
    month_days = days_in_month(at)
    out = {e: TtlChoice(e, t, t, 0.0) for e, t in ttl.items()}
    for endpoint, g in churn.groupby("endpoint"):
        now_ttl = ttl.get(endpoint)
        if now_ttl is None:
            continue
        lam = g["kv_rate"].to_numpy()
        # Each key's own R2 and failure shares: archived keys rehydrate, others reach the origin.
        misses = (g["r2"] + g["api"]).to_numpy()
        r2_share, error_share = g["r2"].to_numpy() / misses, 1 - g["fills"].to_numpy() / misses

        def cost(t: timedelta, lam=lam, r2_share=r2_share, error_share=error_share) -> float:
            return float(
                ttl_cost(
                    lam, t / DAY, pricing, value_bytes, month_days, r2_share, error_share, r2_lookup
                ).sum()
            )

        costs = tuple((t, cost(t)) for t in ttl_options(now_ttl, max_ttl))
        best, at_best = min(costs, key=lambda tc: tc[1])  # the first (shortest) of equal costs
        saving = cost(now_ttl) - at_best
        keep = best == now_ttl or saving <= 0
        out[endpoint] = TtlChoice(
            endpoint,
            now_ttl,
            now_ttl if keep else best,
            0.0 if keep else saving,
            len(g),
            float(g["fills"].sum() / days),
            float(g["kv"].sum() / days),
            costs,
        )
    return out


def ttl_tuning(
    con: duckdb.DuckDBPyConnection,
    days: float,
    pricing: Pricing,
    ttl: dict,
    max_ttl: timedelta,
    value_bytes: float,
    at: datetime,
    r2_lookup: R2Lookup = R2Lookup.REHYDRATION,
) -> Recommendation | None:
    """The endpoints whose TTL the one rule (`ttl_choices`) would change,
    as a recommendation: the new TTLs, the warm churning keys' evidence and
    the saving."""
    choices = ttl_choices(con, days, pricing, ttl, max_ttl, value_bytes, at, r2_lookup)
    changed = [c for c in sorted(choices.values(), key=lambda c: c.endpoint) if c.changes]
    if not changed:
        return None
    # The costs layer sits below tuning, so this cannot call the sampled replay; say so.
    evidence = [
        f"{c.endpoint}: {c.keys:,} warm keys written {c.writes:,.0f} times/day, "
        f"read back from KV {c.reads:,.0f} times/day"
        for c in changed
    ] + [
        "Predicted by the fixed-TTL model λT/(1+λT) per key, not the sampled replay: "
        "check the TTL with `ttl whatif` (the TTL what-if page) before changing it"
    ]
    return Recommendation(
        Kind.TTL_TUNING,
        "Warm keys are refreshed into KV more often than their reads justify",
        tuple(evidence),
        "Increase "
        + "; ".join(
            f"{c.endpoint} KV TTL {_days(c.current / DAY)} → {_days(c.recommended / DAY)}"
            for c in changed
        ),
        sum(c.saving for c in changed),
    )


def recommended_ttls(
    con: duckdb.DuckDBPyConnection,
    cfg: Config,
    window: Window,
    at: datetime,
    max_ttl: timedelta | None = None,
) -> dict[str, TtlChoice]:
    """Each endpoint's TTL choice by the one rule over the per-key rates of
    `window` (the report's class window), as the Costs recommendation makes
    it; `max_ttl` overrides the staleness limit `[costs] max_kv_ttl`."""
    data, days = data_days(con, window)
    c = cfg.costs
    limit = c.max_kv_ttl if max_ttl is None else max_ttl
    rows = key_rows(con, data.start, window.end) | {"days": days}
    return ttl_choices(
        con, days, cfg.pricing, dict(c.kv_ttl), limit, c.value_bytes, at, c.r2_flow, rows
    )


def _days(d: float) -> str:
    return f"{d * 24:g}h" if d < 1 else f"{d:g}d"


def recommend(
    con: duckdb.DuckDBPyConnection, cfg: Config, at: datetime, window: Window
) -> tuple[dict[KeyClass, int], float, list[Recommendation]]:
    """Key class counts, days covered, and every recommendation that applies."""
    days = load_keys(con, window, at)
    c, pricing, ttl = cfg.costs, cfg.pricing, dict(cfg.costs.kv_ttl)
    try:
        recs = [
            edge_optimization(con, days, pricing, c.edge_target),
            r2_archival(con, pricing, ttl, c.archive_after, c.value_bytes, at),
            ttl_tuning(con, days, pricing, ttl, c.max_kv_ttl, c.value_bytes, at, c.r2_flow),
        ]
        return class_counts(con), days, [r for r in recs if r is not None]
    finally:
        con.execute("DROP TABLE IF EXISTS opt_keys")  # the runner's connection lives on
