"""Exact trace replays weigh each row by its sample_interval (an Analytics
Engine export is thinned at write time), write nothing on a failed fill,
and count only the window."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from cachemon.clock import Window
from cachemon.tuning import tracereplay

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _trace(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = 4000
    return pd.DataFrame(
        {
            "timestamp": pd.to_datetime(
                np.sort(rng.uniform(0, 3 * 86400, n)), unit="s", utc=True
            ).map(lambda t: t.replace(tzinfo=UTC))
            + (T0 - datetime(1970, 1, 1, tzinfo=UTC)),
            "key": rng.choice([f"k{i}" for i in range(60)], n),
            "tier": rng.choice(["edge", "kv", "r2", "api"], n, p=[0.5, 0.3, 0.1, 0.1]),
            "sample_interval": rng.choice([1.0, 1.0, 2.0, 10.0], n),
            "status": rng.choice(["ok", "ok", "ok", "error"], n),
        }
    )


def _plain(trace: pd.DataFrame, window: Window, ttl: timedelta) -> float:
    """Weighted KV hit % of the window's requests: a per-key loop, a miss
    writes an entry that lives `ttl`, lookups before the window warm it."""
    expires: dict[str, pd.Timestamp] = {}
    hits = 0.0
    for row in trace.sort_values("timestamp").itertuples():
        if row.tier == "edge":
            continue
        hit = row.key in expires and row.timestamp < expires[row.key]
        if not hit and not (row.status == "error" and row.tier in ("r2", "api")):
            expires[row.key] = row.timestamp + ttl  # a failed fill writes nothing
        if hit and window.start <= row.timestamp < window.end:
            hits += row.sample_interval
    inside = trace[(trace.timestamp >= window.start) & (trace.timestamp < window.end)]
    return 100 * hits / inside.sample_interval.sum()


@pytest.mark.parametrize("seed", [1, 2])
def test_replay_window_weighs_rows_by_their_sample_interval(seed):
    trace = _trace(seed)
    window = Window(T0 + timedelta(days=2), T0 + timedelta(days=3))
    ttls = [timedelta(minutes=30), timedelta(hours=6), timedelta(days=1)]
    got, warmup = tracereplay.replay_window(trace, window, ttls)
    for t in ttls:
        assert got[t] == pytest.approx(_plain(trace, window, t), abs=1e-9)
    assert warmup >= timedelta(days=1, hours=23)
