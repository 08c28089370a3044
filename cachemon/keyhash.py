"""The key hash: one number in [0, 1) per cache key, the same everywhere.

SHARDS-style spatial sampling (the TTL what-if, the budgeted Analytics Engine
pull) keeps the keys whose hash falls under a rate R. The hash must be the
same in the simulator, in imported files and in the Worker (which writes it
into an Analytics Engine double column), so it is defined here once:

    hash(key) = first 6 bytes of SHA-256(UTF-8 key), big-endian, / 2**48

48 bits fit a double exactly, so the Worker's value round-trips through
Analytics Engine unchanged. SHA-256 of the key alone is independent of the
cohort hashes (SHA-256 of key + experiment name), so a sample is not skewed
towards one cohort. The Worker computes it as:

    const d = new Uint8Array(await crypto.subtle.digest("SHA-256",
        new TextEncoder().encode(key)));
    let h = 0; for (let i = 0; i < 6; i++) h = h * 256 + d[i];
    const keyHash = h / 2 ** 48;
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

SCALE = float(2**48)


def key_hash(key: str) -> float:
    """The key's hash in [0, 1)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:6], "big") / SCALE


def key_hashes(keys: Iterable[str]) -> np.ndarray:
    """`key_hash` of each key, as a float64 array (hash unique keys once)."""
    return np.fromiter((key_hash(k) for k in keys), dtype=np.float64)


def sampled(hashes: np.ndarray, rate: float) -> np.ndarray:
    """Which hashes fall in a SHARDS sample at `rate` (0 < rate ≤ 1)."""
    return hashes < rate
