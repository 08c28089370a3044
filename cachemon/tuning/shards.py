"""A hit-rate curve for KV TTLs from a SHARDS sample, by exact replay.

SHARDS (Waldspurger et al., FAST 2015) keeps every request of the keys whose
hash falls under a rate R (`cachemon.keyhash`). A fixed-TTL cache treats keys
independently, so replaying the sampled keys' KV lookups exactly gives, for
each TTL, the same hits and misses those keys had, and the sample's hit ratio
estimates the whole endpoint's with no model of the arrivals (bursts and
polling included).

The cache is KV `expirationTtl`: an entry is written at a miss and lives T; a
lookup at or after the expiry misses and writes again. A miss whose fill
failed (an error row answered by r2 or api) writes nothing, as in the tier-mix
rule (`costs.tiermix`) and the simulator: the key's next lookup misses too.
A row's failure is what happened at the TTL it ran under; a lookup that hit
then is assumed to fill without error at a shorter TTL. Write times depend on
T, so each TTL of the grid is replayed on its own (all keys at once, jumping
from a write to the first lookup at or after its expiry). Only lookups inside
the window are counted; the replay starts at the sample's first request, before
the window (the warm-up), so that the cache is not empty at the window's start.
An entry's state there depends on the writes within T before it, so a TTL
longer than the history before the window is flagged `warm = False`: its point
is approximate (an empty cache at the window's start reads low; one filled a
little before it, high).

Only tiers kv, r2 and api reach KV: a KV TTL does not change what the edge
serves. Counts are row weights (`sample_interval`, 1 unless the source thinned
the rows). From the sample to the endpoint: with every key's exact lookups in
the window (`population`, from the rollups) the estimate is post-stratified by
popularity (`_estimate`), so which hot keys hash into the sample does not
swing it; without them, the sample's ratio and counts scaled by 1/R.

The sampling error is a delete-a-group jackknife: the sampled keys are split
into `GROUPS` groups by a hash of the key id, the hit ratio recomputed without
each group, and the spread of those estimates is its standard error, times the
finite-population factor √(1 − R) (a full trace, R = 1, has none).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import numpy as np

from cachemon.clock import Window
from cachemon.errors import InputError
from cachemon.events import TIERS
from cachemon.store.samples import Samples

US = 1_000_000
DAY_US = 86_400 * US
# The tiers whose requests looked KV up.
LOOKUP_TIERS = np.array([TIERS.index(t) for t in ("kv", "r2", "api")], dtype=np.int8)
# The tiers that fill KV after a miss: an error there is a failed fill, which writes nothing.
FILL_TIERS = np.array([TIERS.index(t) for t in ("r2", "api")], dtype=np.int8)
# The curve's TTL grid: log-spaced, this many points a decade, over this range
# (candidate TTLs are added to it, so they are replayed exactly, not interpolated).
CURVE_FROM = timedelta(minutes=10)
CURVE_TO = timedelta(days=30)
PER_DECADE = 8
# Always on the grid: the TTLs people ask about (and the text output shows).
LANDMARKS = tuple(timedelta(hours=h) for h in (1, 6, 12, 24, 48, 24 * 7, 24 * 30))
GROUPS = 20


@dataclass(frozen=True, eq=False)
class Curve:
    """KV hit ratio against the TTL for one endpoint's window, from a sample
    at `rate`: one element per TTL of `ttls` (ascending)."""

    endpoint: str
    rate: float
    window: Window
    warmup: timedelta  # history before the window the sample has (its first lookup)
    ttls: tuple[timedelta, ...]
    hit_ratio: np.ndarray  # share of the window's KV lookups that hit, 0..1
    error: np.ndarray  # its standard error (jackknife over key groups)
    entries: np.ndarray  # mean entries in KV over the window, for the whole endpoint
    warm: np.ndarray  # bool: the history before the window is at least the TTL (> 0)
    lookups: float  # KV lookups in the window, weighted, scaled by 1/R
    keys: int  # sampled keys with a KV lookup in the window

    def index(self, ttl: timedelta) -> int:
        """Position of `ttl` in the grid (it must be one of `ttls`)."""
        try:
            return self.ttls.index(ttl)
        except ValueError:
            raise InputError(f"TTL {ttl} is not on the replayed grid") from None


def grid(extra: Sequence[timedelta] = ()) -> tuple[timedelta, ...]:
    """The curve's log-spaced TTLs from CURVE_FROM to CURVE_TO (whole
    minutes) and LANDMARKS, with `extra` added, ascending, no duplicates."""
    lo, hi = CURVE_FROM.total_seconds() / 60, CURVE_TO.total_seconds() / 60
    n = int(np.ceil(np.log10(hi / lo) * PER_DECADE)) + 1
    points = {timedelta(minutes=round(m)) for m in np.geomspace(lo, hi, n)}
    return tuple(sorted(points | set(LANDMARKS) | set(extra)))


def _mix(key: np.ndarray) -> np.ndarray:
    """splitmix64 of the key ids: a group label independent of how ids were assigned."""
    z = key.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _check(samples: Samples, window: Window) -> None:
    if not 0 < samples.rate <= 1:
        raise InputError(f"SHARDS rate must be in (0, 1], got {samples.rate!r}")
    n = len(samples.t_us)
    for name in ("key", "tier", "error", "weight"):
        if len(getattr(samples, name)) != n:
            raise InputError(f"samples.{name} has {len(getattr(samples, name))} rows, t_us {n}")
    if n and np.any(samples.weight <= 0):
        raise InputError("samples.weight must be positive (a row's sample_interval)")


@dataclass(frozen=True, eq=False)
class _Lookups:
    """The sample's KV lookups sorted by (key, time), with a composite sort
    key `g` = key index × span + time since `t0`, so that one searchsorted
    finds, for every key at once, its first lookup at or after a time."""

    g: np.ndarray
    t: np.ndarray
    w: np.ndarray
    fail: np.ndarray  # per lookup: a fill (r2/api) that failed, so a miss there writes nothing
    k: np.ndarray  # per lookup: its key's index
    ends: np.ndarray  # per key: one past its last lookup
    group: np.ndarray  # per key: its jackknife group
    t0: int
    span: int

    @property
    def keys(self) -> int:
        return len(self.ends)


def _lookups(samples: Samples, window: Window, longest: timedelta) -> _Lookups:
    end_us = _us(window.end)
    keep = np.isin(samples.tier, LOOKUP_TIERS) & (samples.t_us < end_us)
    t = samples.t_us[keep].astype(np.int64)
    ids, k = np.unique(samples.key[keep], return_inverse=True)
    t0 = int(t.min()) if len(t) else 0
    span = end_us - t0 + int(longest.total_seconds() * US) + 1
    if len(ids) and len(ids) * span >= 2**62:
        raise InputError(
            f"{len(ids):,} sampled keys over {span / DAY_US:,.0f} days: too many to replay "
            "(lower the SHARDS rate or the history)"
        )
    g = k.astype(np.int64) * span + (t - t0)
    order = np.argsort(g, kind="stable")
    return _Lookups(
        g[order],
        t[order],
        samples.weight[keep][order].astype(np.float64),
        (samples.error[keep] & np.isin(samples.tier[keep], FILL_TIERS))[order],
        k[order].astype(np.int64),
        np.searchsorted(g[order], (np.arange(len(ids)) + 1) * span),
        (_mix(ids) % np.uint64(GROUPS)).astype(np.int64),
        t0,
        span,
    )


def _us(at) -> int:
    return round(at.timestamp() * US)


def _replay_one(lk: _Lookups, ttl: timedelta, start_us: int, ws: int, we: int):
    """Per sampled key: weighted misses in [ws, we) and entry-µs of presence
    in it, replaying from `start_us` with an empty cache."""
    step = int(ttl.total_seconds() * US)
    kidx = np.arange(lk.keys, dtype=np.int64)
    first = np.searchsorted(lk.g, kidx * lk.span + max(start_us - lk.t0, 0), side="left")
    live = first < lk.ends
    pos, end = first[live], lk.ends[live]
    miss = np.zeros(len(lk.g), dtype=bool)
    # As many rounds as the busiest key has misses; each round is one
    # searchsorted over the keys still live. A failed fill writes nothing
    # (the tier-mix rule): the key's next lookup misses again.
    while len(pos):
        miss[pos] = True
        failed = lk.fail[pos]
        nxt = np.where(failed, pos + 1, np.searchsorted(lk.g, lk.g[pos] + step, side="left"))
        live = nxt < end
        pos, end = nxt[live], end[live]
    counted = miss & (lk.t >= ws) & (lk.t < we)
    misses = np.bincount(lk.k[counted], lk.w[counted], lk.keys)
    written = miss & ~lk.fail
    tw = lk.t[written]
    present = np.clip(np.minimum(tw + step, we) - np.maximum(tw, ws), 0, None)
    entries = np.bincount(lk.k[written], present.astype(np.float64), lk.keys) / (we - ws)
    return misses, entries


def _bins(n: np.ndarray) -> np.ndarray:
    """Popularity bins: a key with n lookups in the window is in bin ⌊log2 n⌋ + 1 (0: none)."""
    return np.where(n > 0, np.floor(np.log2(np.maximum(n, 1.0))) + 1, 0).astype(np.int64)


def _estimate(
    n: np.ndarray, m: np.ndarray, e: np.ndarray, rate: float, population: np.ndarray | None
) -> tuple[float, float]:
    """(hit ratio, mean entries) of the whole endpoint from the sampled keys'
    window lookups `n`, misses `m` and mean entries `e`.

    Without `population`: the sample's ratio, entries scaled by 1/R. With it
    (every key's window lookups, exact from the rollups): post-stratified by
    popularity, so that which hot keys happen to hash into the sample does
    not swing the answer. Each bin's misses are its exact lookups times the
    sample's miss ratio there; bins no sampled key falls in take the miss
    ratio interpolated between sampled bins below the top one, and above it
    misses per key extrapolated as n^β, β the slope of log misses against
    log lookups over the top sampled bins (clipped to [0, 1]: a key's misses
    never fall, and never grow faster than its lookups)."""
    active = n > 0
    cold_entries = float(e[~active].sum()) / rate
    if population is None:
        return 1 - m.sum() / n.sum(), float(e.sum()) / rate
    pop = population[population > 0]
    pb, sb = _bins(pop), _bins(n[active])
    size = int(max(pb.max(initial=0), sb.max(initial=0))) + 1
    N, K = np.bincount(pb, pop, size), np.bincount(pb, minlength=size).astype(float)
    sn, sm = np.bincount(sb, n[active], size), np.bincount(sb, m[active], size)
    se, sk = np.bincount(sb, e[active], size), np.bincount(sb, minlength=size).astype(float)
    have = np.flatnonzero(sk > 0)
    if not len(have):
        return 1 - m.sum() / max(n.sum(), 1e-300), float(e.sum()) / rate
    top = have[-1]
    idx = np.arange(size)
    ratio = np.interp(idx, have, sm[have] / sn[have])
    per_key_entries = np.interp(idx, have, se[have] / sk[have])
    misses, entries = N * ratio, K * per_key_entries
    above = (idx > top) & (K > 0)
    if above.any():
        fit = have[-3:]
        x, y = np.log(sn[fit] / sk[fit]), np.log(np.maximum(sm[fit] / sk[fit], 1e-12))
        beta = float(np.clip(np.polyfit(x, y, 1)[0], 0, 1)) if len(fit) > 1 else 0.5
        scale = (N[above] / K[above]) / (sn[top] / sk[top])
        per_key = sm[top] / sk[top] * scale**beta
        misses[above] = np.minimum(K[above] * per_key, N[above])
        ebeta = float(np.clip(beta, 0, 1))
        entries[above] = K[above] * np.minimum(se[top] / sk[top] * scale**ebeta, 1.0)
    return 1 - misses.sum() / N.sum(), float(entries.sum()) + cold_entries


def curve(
    samples: Samples,
    window: Window,
    ttls: Sequence[timedelta] = (),
    population: np.ndarray | None = None,
    with_grid: bool = True,
) -> Curve | None:
    """The hit-ratio curve of `samples` (an endpoint's sampled requests,
    from before the window, for the warm-up, to its end) over the grid plus
    `ttls`. `population`: every key's weighted KV lookups in the window (see
    `_estimate`); needless at rate 1. `with_grid=False` replays `ttls` only.
    None when the sample has no KV lookup in the window."""
    _check(samples, window)
    if population is not None and np.any(~np.isfinite(population) | (population < 0)):
        raise InputError("population lookups must be finite and not negative")
    points = grid(ttls) if with_grid else tuple(sorted(set(ttls)))
    if not points:
        raise InputError("no TTL to replay")
    lk = _lookups(samples, window, points[-1])
    ws, we = _us(window.start), _us(window.end)
    inwin = (lk.t >= ws) & (lk.t < we)
    if not inwin.any():
        return None
    if samples.rate == 1:
        population = None  # the sample is the population
    # Whole minutes, rounded up: a sample's first lookup may trail the data's start by seconds.
    history = timedelta(minutes=-(-max(ws - int(lk.t.min()), 0) // (60 * US)))
    n = np.bincount(lk.k[inwin], lk.w[inwin], lk.keys)
    fpc = np.sqrt(1 - samples.rate)
    groups = [lk.group != g for g in range(GROUPS) if np.any(n[lk.group == g] > 0)]
    ratio, error, entries = [], [], []
    for ttl in points:
        m, e = _replay_one(lk, ttl, lk.t0, ws, we)
        h, stored = _estimate(n, m, e, samples.rate, population)
        ratio.append(h)
        entries.append(stored)
        # Delete-a-group jackknife (groups without window lookups drop out).
        if len(groups) > 1:
            loo = np.array(
                [_estimate(n[s], m[s], e[s], samples.rate, population)[0] for s in groups]
            )
            g = len(groups)
            error.append(fpc * np.sqrt((g - 1) / g * ((loo - loo.mean()) ** 2).sum()))
        else:
            error.append(0.0 if samples.rate == 1 else np.nan)
    return Curve(
        samples.endpoint,
        samples.rate,
        window,
        history,
        points,
        np.array(ratio),
        np.array(error),
        np.array(entries),
        np.array([t <= history for t in points]),
        float(lk.w[inwin].sum()) / samples.rate,
        int((n > 0).sum()),
    )


def full_trace(endpoint: str, key, t_us, tier, weight=None, error=None) -> Samples:
    """A full trace (rate 1) as Samples: key labels of any kind, request
    times in epoch µs, tier names; weights default to 1, errors to none."""
    codes = np.unique(np.asarray(key), return_inverse=True)[1]
    names = np.asarray(tier, dtype=object)
    bad = sorted(set(names) - set(TIERS))
    if bad:
        raise InputError(f"tier {bad[0]!r} is unknown (use one of {', '.join(TIERS)})")
    tier_code = np.zeros(len(names), dtype=np.int8)
    for i, name in enumerate(TIERS):
        tier_code[names == name] = i
    n = len(names)
    return Samples(
        endpoint,
        1.0,
        codes.astype(np.int64),
        np.asarray(t_us, dtype=np.int64),
        tier_code,
        np.zeros(n, dtype=bool) if error is None else np.asarray(error, dtype=bool),
        np.ones(n) if weight is None else np.asarray(weight, dtype=np.float64),
    )
