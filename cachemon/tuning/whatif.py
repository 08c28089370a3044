"""TTL what-if: predict KV hit rate and cost for candidate TTLs, recommend
one, and check against an exact replay where a request-level trace exists.

Predictions come from the exact replay of the store's SHARDS sample
(`tuning.shards`: the raw requests of the keys whose hash is under a rate R,
replayed under every TTL with a warm-up before the window) when there is one
for the endpoint; `WhatIf.method` says which, and `WhatIf.note` why, on every
surface. Without a sample (or without a KV lookup in it) they fall back to
the fixed-TTL model below, which is exact only for Poisson arrivals with
well-estimated rates (bursty keys, pollers and short windows mislead it).

The model is the fixed-TTL cache of KV `expirationTtl`: an entry is written
at a miss and lives T. Under Poisson arrivals at rate μ (a key's KV lookups,
i.e. its edge misses, per day) a lookup hits with probability μT / (1 + μT),
misses (and writes) μ / (1 + μT) times a day, and the key is present a
share μT / (1 + μT) of the time. Per-key rates are weighted request counts
divided by the days of data, so Analytics Engine sampling leaves them
unbiased (per-key gaps between sampled requests would not be). A KV TTL
does not change what the edge serves, so μ is measured, not modelled.
What the predicted hits and misses cost is the tier-mix rule
(`costs.tiermix`), with misses answered by R2 and failing in the shares
observed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import duckdb
import numpy as np

from cachemon.clock import DAY, Window, format_duration, parse_duration
from cachemon.costs.tiermix import TierMix
from cachemon.errors import InputError
from cachemon.pricing import Pricing, R2Lookup, days_in_month
from cachemon.settings import Config
from cachemon.store import samples as store_samples
from cachemon.store.queries import KEY_ROWS, TIER_TOTALS, data_days, key_ranges, window_params
from cachemon.store.samples import Samples
from cachemon.tuning import shards
from cachemon.tuning.experiments import example_toml

# How far before the window the what-if asks for SHARDS samples: the replay's
# warm-up is what the store holds of this (TTLs longer than it are flagged).
WARMUP = timedelta(weeks=8)
REPLAY = "sampled replay"
MODEL = "model"

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
    kv_hit_error: float | None = None  # ± points (standard error) of kv_hit_rate; None: the model's
    warm: bool = True  # False: the TTL is longer than the replay's warm-up (the rate reads low)


def load_window(con: duckdb.DuckDBPyConnection, window: Window) -> float:
    """Build the per-key table of `window`; returns its days of data."""
    return _load_window(con, window)[1]


def _load_window(con: duckdb.DuckDBPyConnection, window: Window) -> tuple[Window, float]:
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


def predict(
    r: KeyRates, ttl: timedelta, pricing: Pricing, value_bytes: float, month_days: int
) -> Prediction:
    """The fixed-TTL model's figures for KV TTL `ttl`."""
    t = ttl / DAY
    mu, w = r.lookups, r.weight
    hits = float((w * model_hits(mu, r.days, t)).sum())
    gb = float((w * mu * t / (1 + mu * t)).sum()) * value_bytes / 1e9
    return _prediction(r, ttl, float((w * mu).sum()), hits, gb, pricing, month_days)


def predict_replay(
    r: KeyRates,
    c: shards.Curve,
    ttl: timedelta,
    pricing: Pricing,
    value_bytes: float,
    month_days: int,
) -> Prediction:
    """The sampled replay's figures for KV TTL `ttl` (a point of `c`): its
    hit ratio of the window's exact KV lookups, its mean entries in KV."""
    i = c.index(ttl)
    lookups = float(r.lookups.sum())
    hits = lookups * float(c.hit_ratio[i])
    gb = float(c.entries[i]) * value_bytes / 1e9
    error = 100 * float(c.error[i]) * lookups / r.requests
    return _prediction(r, ttl, lookups, hits, gb, pricing, month_days, error, bool(c.warm[i]))


def _prediction(
    r: KeyRates,
    ttl: timedelta,
    lookups: float,
    hits: float,
    gb: float,
    pricing: Pricing,
    month_days: int,
    error: float | None = None,
    warm: bool = True,
) -> Prediction:
    """A day's KV lookups, hits and stored GB priced by the tier-mix rule
    (misses answered and failing in the shares observed), plus storage."""
    mix = TierMix.from_misses(
        lookups, lookups - hits, r.r2_share, r.error_share, r2_lookup=r.r2_lookup
    )
    cost = float(mix.cost(pricing)) + gb * pricing["kv_storage"].price / month_days
    edge = r.requests - lookups
    return Prediction(
        r.endpoint,
        ttl,
        100 * hits / r.requests,
        100 * (edge + hits + mix.r2) / r.requests,
        mix.kv_reads,
        float(mix.kv_writes),
        mix.r2_reads,
        gb,
        cost,
        error,
        warm,
    )


def span_text(d: timedelta) -> str:
    """A warm-up's length for people: '55.9d', '6.0h'."""
    return f"{d / DAY:.1f}d" if d >= DAY else f"{d / timedelta(hours=1):.1f}h"


def stored_samples(
    con: duckdb.DuckDBPyConnection, endpoint: str, start: datetime, end: datetime
) -> Samples | None:
    """The store's SHARDS sample of `endpoint` in [start, end), None when
    there is none (the one place the what-if reads it)."""
    return store_samples.read(con, endpoint, start, end)


@dataclass(frozen=True)
class Method:
    """How an endpoint's predictions were made, for every surface to say."""

    name: str  # REPLAY or MODEL
    note: str  # why, in a sentence
    rate: float | None = None  # the sample's rate R
    keys: int = 0  # sampled keys with a KV lookup in the window
    warmup: timedelta | None = None  # history replayed before the window
    # Observed − replayed KV hit rate at the current TTL, points of requests
    # (None: not comparable, see the note); folded into every replayed error.
    calibration: float | None = None


def _other_ttls(cfg: Config, endpoint: str, window: Window, current: timedelta) -> list[str]:
    """Experiments on `endpoint` overlapping `window` that give some keys a
    TTL other than the current one: the observed hit rate is then not that
    of one TTL, which the replay and the model assume."""
    return [
        x.name
        for x in cfg.experiments
        if x.endpoint == endpoint
        and x.start < window.end
        and x.start + x.duration > window.start
        and any(c.ttl != current for c in x.cohorts)
    ]


def calibrated(
    c: shards.Curve, r: KeyRates, current: timedelta, others: list[str]
) -> tuple[shards.Curve, float | None, str]:
    """`c` with the bias the replay shows where it can be checked folded into
    its errors: the observed KV hit ratio at the current TTL minus the
    replayed one (sampling-weighted rows replayed as if complete, the
    warm-up's start from an empty cache) is added in quadrature to every
    TTL's standard error. Also that difference in points of requests (None
    when not comparable) and the note's words."""
    i = c.index(current)
    if others:
        return (
            c,
            None,
            (
                f"; assumes one TTL for every key, but {', '.join(others)} ran others for some "
                "(not calibrated against the observed rate)"
            ),
        )
    if not c.warm[i]:
        return c, None, "; the current TTL lacks warm-up (not calibrated against the observed rate)"
    lookups = float(r.lookups.sum())
    d = r.kv_hits / lookups - float(c.hit_ratio[i]) if lookups else 0.0
    points = 100 * d * lookups / r.requests
    return (
        replace(c, error=np.sqrt(c.error**2 + d**2)),
        points,
        f"; observed − replayed at the current TTL: {points:+.2f} points, in every error",
    )


def _curve(
    con,
    samples_of,
    r: KeyRates,
    data: Window,
    ttls: list[timedelta],
    current: timedelta,
    others: list[str],
) -> tuple[shards.Curve | None, Method]:
    s = samples_of(con, r.endpoint, data.start - WARMUP, data.end)
    if s is None or not len(s):
        st = store_samples.status(con, data.start - WARMUP, data.end)
        why = st.reason or store_samples.NO_KEY_UNDER_RATE.format(rate=st.rate or 0)
        return None, Method(
            MODEL,
            f"no SHARDS sample of {r.endpoint} ({why}): the fixed-TTL "
            "model λT/(1+λT) on per-key rates, exact only for Poisson arrivals",
        )
    c = shards.curve(s, data, ttls, r.lookups * r.days)
    if c is None:
        return None, Method(
            MODEL,
            f"the SHARDS sample (rate {s.rate:g}) has no KV lookup of {r.endpoint} in the "
            "window: the fixed-TTL model λT/(1+λT) on per-key rates",
            s.rate,
        )
    cold = [t for t, w in zip(c.ttls, c.warm) if not w]
    c, calibration, said = calibrated(c, r, current, others)
    return c, Method(
        REPLAY,
        f"exact replay of a SHARDS sample (rate {c.rate:g}, {c.keys:,} keys, "
        f"{span_text(c.warmup)} of warm-up), ± one standard error"
        + (f"; TTLs over {span_text(c.warmup)} lack warm-up (approximate)" if cold else "")
        + ("; too few sampled keys to estimate the error" if np.isnan(c.error).any() else "")
        + said,
        c.rate,
        c.keys,
        c.warmup,
        calibration,
    )


@dataclass(frozen=True)
class WhatIf:
    endpoint: str
    window: Window
    days: float
    current_ttl: timedelta
    observed_kv_hit_rate: float  # measured at the current TTL
    current: Prediction  # the model at the current TTL (its calibration)
    candidates: tuple[Prediction, ...]
    current_edge_ttl: timedelta | None = None
    observed_edge_hit_rate: float = 0.0
    colos: float = 1.0  # fitted effective number of edge caches
    edge: tuple[EdgePrediction, ...] = ()  # candidate edge TTLs
    method: Method = Method(MODEL, "the fixed-TTL model λT/(1+λT) on per-key rates")
    curve: tuple[Prediction, ...] = ()  # the same figures over a log grid of TTLs (shards.grid)
    r2_lookup: R2Lookup = R2Lookup.REHYDRATION  # the flow the costs were priced with


def whatif(
    con: duckdb.DuckDBPyConnection,
    cfg: Config,
    endpoints: list[str],
    ttls: list[timedelta],
    window: Window,
    at: datetime,
    edge_ttls: list[timedelta] = (),
    samples_of=stored_samples,
) -> list[WhatIf]:
    """Predictions for each endpoint at each candidate KV TTL and its current
    one, and over the curve's grid, from the sampled replay where
    `samples_of(con, endpoint, start, end)` has a sample, else the model; and
    at each candidate edge TTL (with the colos fitted at the current edge
    TTL, `[costs] edge_ttl`)."""
    current, edge_current = dict(cfg.costs.kv_ttl), dict(cfg.costs.edge_ttl)
    unknown = [e for e in endpoints if e not in current]
    if unknown:
        raise InputError(
            f"unknown endpoint {unknown[0]!r}: [costs] kv_ttl has {', '.join(current)}"
        )
    data, days = _load_window(con, window)
    month = days_in_month(at)
    out = []
    for e in endpoints:
        r = replace(rates(con, e, window, days), r2_lookup=cfg.costs.r2_flow)
        others = _other_ttls(cfg, e, window, current[e])
        c, method = _curve(con, samples_of, r, data, [*ttls, current[e]], current[e], others)
        if c is None:
            p = lambda t, r=r: predict(r, t, cfg.pricing, cfg.costs.value_bytes, month)  # noqa: E731
            m = merged(r)
            on_grid = lambda t, m=m: predict(m, t, cfg.pricing, cfg.costs.value_bytes, month)  # noqa: E731
        else:
            p = on_grid = lambda t, r=r, c=c: predict_replay(  # noqa: E731
                r, c, t, cfg.pricing, cfg.costs.value_bytes, month
            )
        grid = c.ttls if c is not None else shards.grid()
        edge_now = edge_current.get(e)
        colos = fit_colos(r, edge_now) if edge_now else 1.0
        edge = tuple(predict_edge(r, t, colos) for t in sorted(set(edge_ttls))) if edge_now else ()
        out.append(
            WhatIf(
                e,
                window,
                days,
                current[e],
                100 * r.kv_hits / r.requests,
                p(current[e]),
                tuple(p(t) for t in sorted(set(ttls))),
                edge_now,
                100 * r.edge_hits / r.requests,
                colos,
                edge,
                method,
                tuple(on_grid(t) for t in grid),
                cfg.costs.r2_flow,
            )
        )
    return out


def recommend(w: WhatIf, max_staleness: timedelta) -> Prediction | None:
    """The cheapest of the candidates and the current TTL within the
    staleness limit (ties: the higher hit rate); the current one means keep
    it. A candidate whose figure is approximate (`warm=False`: longer than
    the replay's warm-up, so it reads like longer TTLs) is never picked: if
    no warm candidate beats the current TTL, the current is kept. None when
    nothing is allowed."""
    warm = [p for p in w.candidates if p.warm]
    allowed = [p for p in (*warm, w.current) if p.ttl <= max_staleness]
    return min(allowed, key=lambda p: (round(p.cost, 9), -p.hit_rate)) if allowed else None


def parse_ttls(text: str, option: str = "--ttl") -> list[timedelta]:
    """'6h,12h,24h' → durations, each between 60 s and 365 days (KV's limits);
    errors name `option` (the flag the text came from)."""
    out = [parse_duration(part.strip(), option) for part in text.split(",") if part.strip()]
    if not out:
        raise InputError(f"{option} needs at least one duration, e.g. 6h,12h,24h")
    bad = [format_duration(t) for t in out if not timedelta(seconds=60) <= t <= timedelta(days=365)]
    if bad:
        raise InputError(f"{option} {', '.join(bad)}: a TTL must be between 60s and 365d")
    return out


def draft_experiment(
    endpoint: str, current: timedelta, candidate: timedelta, start: datetime
) -> str:
    """A `[[experiments]]` block testing `candidate` against the current TTL."""
    return example_toml(
        f"{endpoint}-ttl-{format_duration(candidate)}",
        endpoint,
        (("control", current, 0.5), ("treatment", candidate, 0.5)),
        start,
        description=f"KV TTL {format_duration(candidate)} for {endpoint} vs "
        f"{format_duration(current)} (drafted by ttl whatif)",
        scheme=None,
    )
