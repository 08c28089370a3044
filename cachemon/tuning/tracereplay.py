"""Exact replays of a request-level trace (a file, or the simulator's
events) through a fixed-TTL cache: the check of the what-if's predictions
where the whole traffic is at hand (`shards.curve` at rate 1).
"""

from __future__ import annotations

from datetime import timedelta

import pandas as pd

from cachemon.clock import Window
from cachemon.errors import InputError
from cachemon.store.samples import Samples
from cachemon.tuning import shards


def _weights(trace: pd.DataFrame) -> pd.Series:
    """Requests each row stands for: its `sample_interval` (an Analytics
    Engine export is thinned at write time), 1 where the trace has none."""
    if "sample_interval" in trace:
        return trace["sample_interval"].astype(float)
    return pd.Series(1.0, index=trace.index)


def _trace_samples(trace: pd.DataFrame) -> Samples:
    t_us = trace.timestamp.dt.tz_convert("UTC").astype("datetime64[us, UTC]").astype("int64")
    return shards.full_trace(
        "trace",
        trace.key.to_numpy(),
        t_us.to_numpy(),
        trace.tier.to_numpy(),
        _weights(trace).to_numpy(),
        # A failed fill writes nothing (the tier-mix rule), in the exact replay too.
        (trace["status"] == "error").to_numpy() if "status" in trace else None,
    )


def replay_window(
    trace: pd.DataFrame, window: Window, ttls: list[timedelta]
) -> tuple[dict[timedelta, float], timedelta]:
    """KV hit rate (% of the trace's requests in `window`, weighted by
    `sample_interval`) under each TTL of a request-level trace (columns key,
    timestamp, tier, optionally sample_interval) replayed
    exactly through a fixed-TTL cache (`shards.curve` at rate 1): counting
    the window's lookups only, with the trace's requests before it as the
    warm-up (returned; an empty cache only where the trace starts there)."""
    inside = trace[(trace.timestamp >= window.start) & (trace.timestamp < window.end)]
    if inside.empty:
        raise InputError(f"the trace has no request in {window}")
    c = shards.curve(_trace_samples(trace), window, ttls, with_grid=False)
    if c is None:
        return {t: 0.0 for t in ttls}, timedelta(0)
    return {
        t: 100 * float(c.hit_ratio[c.index(t)]) * c.lookups / float(_weights(inside).sum())
        for t in ttls
    }, c.warmup


def replay(trace: pd.DataFrame, ttl: timedelta) -> float:
    """KV hits of a whole request-level trace replayed exactly through a
    fixed-TTL cache that starts empty (`shards.curve` at rate 1, the window
    being the whole trace): the requests that reached KV (tiers kv, r2,
    api), each key's first lookup a miss that writes, and an entry expiring
    `ttl` after its write. Exact for an unsampled trace (columns key,
    timestamp, tier)."""
    if trace.empty:
        return 0.0
    window = Window(trace.timestamp.min(), trace.timestamp.max() + timedelta(microseconds=1))
    c = shards.curve(_trace_samples(trace), window, [ttl], with_grid=False)
    return 0.0 if c is None else float(round(c.hit_ratio[0] * c.lookups))
