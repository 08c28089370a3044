"""TTL what-if: predict KV hit rate and cost for candidate TTLs, recommend
one, and check against an exact replay where a request-level trace exists.

Predictions come from the exact replay of the store's SHARDS sample
(`tuning.shards`: the raw requests of the keys whose hash is under a rate R,
replayed under every TTL with a warm-up before the window) when there is one
for the endpoint; `WhatIf.method` says which, and `WhatIf.note` why, on every
surface. Without a sample (or without a KV lookup in it) they fall back to
the fixed-TTL model (`tuning.keyrates`), which is exact only for Poisson arrivals with
well-estimated rates (bursty keys, pollers and short windows mislead it).

The model (per-key rates and λT/(1+λT), in `tuning.keyrates`) is the
fixed-TTL cache of KV `expirationTtl`: an entry is written
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
from cachemon.costs.optimize import ttl_options
from cachemon.costs.tiermix import TierMix
from cachemon.errors import InputError
from cachemon.pricing import Pricing, R2Lookup, days_in_month
from cachemon.settings import Config
from cachemon.store import samples as store_samples
from cachemon.store.samples import Samples
from cachemon.tuning import shards
from cachemon.tuning.experiments import Experiment, example_toml
from cachemon.tuning.keyrates import (
    EdgePrediction,
    KeyRates,
    fit_colos,
    load_data,
    merged,
    model_hits,
    predict_edge,
    rates,
)

# How far before the window the what-if asks for SHARDS samples: the replay's
# warm-up is what the store holds of this (TTLs longer than it are flagged).
WARMUP = timedelta(weeks=8)
REPLAY = "sampled replay"
MODEL = "model"
# KV's expirationTtl limits: every TTL asked about lies between them.
KV_MIN_TTL, KV_MAX_TTL = timedelta(seconds=60), timedelta(days=365)
# The short TTLs every default candidate list shows (the long ones come from
# the recommendation's options, up to the staleness limit).
SHORT_TTLS = tuple(timedelta(hours=h) for h in (6, 12, 24, 48, 24 * 7))


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
    data, days = load_data(con, window)
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
    bad = [format_duration(t) for t in out if not KV_MIN_TTL <= t <= KV_MAX_TTL]
    if bad:
        raise InputError(f"{option} {', '.join(bad)}: a TTL must be between 60s and 365d")
    return out


def parse_staleness(text: str, option: str = "--max-staleness") -> timedelta:
    """A staleness limit: one duration within KV's TTL limits (a limit
    outside them would allow or ask for TTLs KV refuses); errors name `option`."""
    if "," in text:
        raise InputError(f"{option} takes one duration, e.g. 30d, got {text!r}")
    return parse_ttls(text, option)[0]


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


def default_candidates(current: timedelta, max_staleness: timedelta) -> list[timedelta]:
    """The candidates a what-if weighs unless told otherwise: a few short
    TTLs and the options the TTL recommendation weighs (`costs.optimize.
    ttl_options`: the current TTL's multiples up to the staleness limit), so
    the limit itself is always among them; none above the limit."""
    options = set(ttl_options(current, max_staleness)) | {max_staleness}
    return sorted({t for t in SHORT_TTLS if t <= max_staleness} | options)


def running_experiments(cfg: Config, endpoint: str, now: datetime) -> list[Experiment]:
    """The configured experiments on `endpoint` running at `now` (started,
    not yet over): a second one drafted on top would share its keys."""
    return [
        x
        for x in cfg.experiments
        if x.endpoint == endpoint and x.start <= now < x.start + x.duration
    ]


def at_ttl(w: WhatIf, ttl: timedelta) -> Prediction | None:
    """The what-if's prediction at `ttl` (a candidate or the current TTL), None if not asked."""
    if ttl == w.current_ttl:
        return w.current
    return next((p for p in w.candidates if p.ttl == ttl), None)


# A what-if's verdict on a TTL (`check`).
KEEP = "keep"  # the TTL is the current one
AGREES = "agrees"  # predicted cheaper than the current TTL
DISAGREES = "disagrees"  # predicted dearer
UNCHECKED = "unchecked"  # longer than the replay's warm-up: its figure is approximate


@dataclass(frozen=True)
class Check:
    """What the what-if says of one TTL (the recommendation's), against the current one."""

    ttl: timedelta
    verdict: str  # KEEP, AGREES, DISAGREES or UNCHECKED
    prediction: Prediction | None  # None when the TTL was not asked
    cost_change: float | None = None  # USD/day against the current TTL
    kv_hit_change: float | None = None  # points of requests against the current TTL


def check(w: WhatIf, ttl: timedelta) -> Check:
    """The what-if's verdict on `ttl`: cheaper or dearer than the current
    TTL by its own method, or unchecked where its figure is approximate
    (longer than the replay's warm-up) or missing."""
    p = at_ttl(w, ttl)
    if ttl == w.current_ttl:
        return Check(ttl, KEEP, p, 0.0, 0.0)
    if p is None:
        return Check(ttl, UNCHECKED, None)
    dc, dh = p.cost - w.current.cost, p.kv_hit_rate - w.current.kv_hit_rate
    if not p.warm:
        return Check(ttl, UNCHECKED, p, dc, dh)
    return Check(ttl, AGREES if dc <= 0 else DISAGREES, p, dc, dh)
