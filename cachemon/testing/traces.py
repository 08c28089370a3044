"""Request-level KV lookup traces of known shape, for validating the TTL
what-if (tests/tuning/test_shards.py and bench/bench_ttl_validation.py).

Each trace is one endpoint's KV lookups (the requests the edge did not serve)
over `Window(start, end)`: key popularity Zipf over `keys` keys (α 0.8, the
simulator's), at `per_day` lookups a day in all, arriving

* `poisson`: as a Poisson process per key;
* `bursty`: in bursts (Poisson per key), each about 15 requests within 10
  minutes;
* `periodic`: from pollers, each asking its key every 6 to 30 hours (its own
  period and phase, ±1 minute of jitter); a key's pollers are Zipf too.

Also `shards_sample` (the keys whose `cachemon.keyhash` falls under a rate)
and `exact_hit_ratio`, the plain per-key loop every prediction is held to.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import numpy as np

from cachemon.clock import Window
from cachemon.keyhash import key_hashes
from cachemon.store.samples import Samples
from cachemon.tuning.shards import US, full_trace

SHAPES = ("poisson", "bursty", "periodic")
ALPHA = 0.8
BURST = 15  # requests per burst, on average
BURST_SPAN_US = 600 * US
HOUR_US = 3600 * US


@dataclass(frozen=True, eq=False)
class Trace:
    """KV lookups: key labels and epoch-µs times, sorted by time."""

    shape: str
    keys: np.ndarray  # str labels
    t_us: np.ndarray  # int64
    failed: np.ndarray | None = None  # bool per lookup: a failed fill, which writes nothing

    def samples(self, endpoint: str = "title") -> Samples:
        """The whole trace as a rate-1 sample (every lookup a KV miss tier,
        which is all the replay needs; `failed` its errors)."""
        api = np.full(len(self.t_us), "api")
        return full_trace(endpoint, self.keys, self.t_us, api, error=self.failed)


def zipf_shares(keys: int, alpha: float = ALPHA) -> np.ndarray:
    """Each key's share of the traffic, most popular first."""
    w = np.arange(1, keys + 1, dtype=np.float64) ** -alpha
    return w / w.sum()


def generate(shape: str, window: Window, keys: int, per_day: float, seed: int) -> Trace:
    """A trace of `shape` (one of SHAPES) over `window`."""
    rng = np.random.default_rng(seed)
    a, b = round(window.start.timestamp() * US), round(window.end.timestamp() * US)
    days = (b - a) / (86400 * US)
    share = zipf_shares(keys)
    if shape == "poisson":
        counts = rng.poisson(share * per_day * days)
        key = np.repeat(np.arange(keys), counts)
        t = rng.integers(a, b, len(key))
    elif shape == "bursty":
        bursts = rng.poisson(share * per_day * days / BURST)
        owner = np.repeat(np.arange(keys), bursts)
        at = rng.integers(a, b, len(owner))
        size = 1 + rng.poisson(BURST - 1, len(owner))
        key = np.repeat(owner, size)
        t = np.repeat(at, size) + rng.integers(0, BURST_SPAN_US, len(key))
        keep = t < b
        key, t = key[keep], t[keep]
    elif shape == "periodic":
        # A key's pollers: Zipf, at least one each; a poller asks once per period.
        pollers = np.maximum(1, rng.poisson(share * per_day * 18 / 24))
        owner = np.repeat(np.arange(keys), pollers)
        period = rng.integers(6 * HOUR_US, 30 * HOUR_US, len(owner))
        phase = rng.integers(0, period)
        n = ((b - a - phase) // period + 1).astype(np.int64)
        key = np.repeat(owner, n)
        idx = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        t = a + np.repeat(phase, n) + idx * np.repeat(period, n)
        t = t + rng.integers(-60 * US, 60 * US, len(t))
        keep = (t >= a) & (t < b)
        key, t = key[keep], t[keep]
    else:
        raise ValueError(f"unknown trace shape {shape!r} (use one of {', '.join(SHAPES)})")
    order = np.argsort(t, kind="stable")
    labels = np.array([f"title:{k}" for k in range(keys)], dtype=object)
    return Trace(shape, labels[key[order]], t[order].astype(np.int64))


def shards_sample(full: Samples, labels: np.ndarray, rate: float) -> Samples:
    """The SHARDS sample of a full trace: every row of the keys whose hash
    (`cachemon.keyhash`) is below `rate`. `labels` are the rows' key labels."""
    uniq, inverse = np.unique(np.asarray(labels, dtype=object), return_inverse=True)
    keep = (key_hashes(uniq) < rate)[inverse]
    return Samples(
        full.endpoint,
        rate,
        full.key[keep],
        full.t_us[keep],
        full.tier[keep],
        full.error[keep],
        full.weight[keep],
    )


def exact_hit_ratio(
    labels: np.ndarray,
    t_us: np.ndarray,
    window: Window,
    ttl: timedelta,
    failed: np.ndarray | None = None,
) -> float:
    """The exact fixed-TTL replay, plainly: lookups in time order from the
    first one (an empty cache then), a miss writes an entry that expires
    `ttl` later unless its fill failed (`failed`, per lookup: the tier-mix
    rule, a failed answer writes nothing); the share of the window's lookups
    that hit."""
    ws, we = round(window.start.timestamp() * US), round(window.end.timestamp() * US)
    step = int(ttl.total_seconds() * US)
    order = np.argsort(t_us, kind="stable")
    fail = np.zeros(len(t_us), bool) if failed is None else np.asarray(failed, bool)
    expiry: dict = {}
    hits = lookups = 0
    rows = zip(labels[order].tolist(), np.asarray(t_us)[order].tolist(), fail[order].tolist())
    for k, t, bad in rows:
        hit = t < expiry.get(k, -1)
        if not hit and not bad:
            expiry[k] = t + step
        if ws <= t < we:
            lookups += 1
            hits += hit
    return hits / lookups
