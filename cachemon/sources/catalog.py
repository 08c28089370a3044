"""The simulator's fixed key population of one seed: per endpoint a Zipf-like
popularity over named keys (titles and authors as syllable pairs, ISBNs with
a valid check digit), each key's edge and KV TTLs, its cohort of the seed's
`extended-title-ttl` experiment (assigned with the seed's own hash), and
whether it has an archived copy in R2.

`cachemon.sources.simulator` draws the traffic over it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cachemon.assignment import seed_sha256_byte
from cachemon.events import ENDPOINTS
from cachemon.settings import SimulatorConfig

US = 1_000_000  # microseconds per second: the simulator's time unit

ENDPOINT_SHARE = np.array([0.55, 0.30, 0.15])  # in ENDPOINTS order
CATALOG_SHARE = np.array([0.50, 0.33, 0.17])
EXPERIMENT = "extended-title-ttl"
COHORTS = (("control", 24 * 3600, 0.5), ("treatment", 48 * 3600, 0.5))
# Keys expected to be asked for less often than this per day have an archived
# copy in R2 (Phase 3), so their KV misses rehydrate instead of calling origin.
ARCHIVE_BELOW_PER_DAY = 30.0


@dataclass(frozen=True)
class Catalog:
    """The fixed key population of one seed."""

    keys: np.ndarray  # object array of key strings
    endpoint: np.ndarray  # endpoint index per key
    cdfs: tuple  # per endpoint: cumulative popularity over its keys
    offsets: np.ndarray  # first key index of each endpoint
    edge_ttl_us: np.ndarray
    kv_ttl_us: np.ndarray
    cohort: np.ndarray  # -1 none, else index in COHORTS
    archived: np.ndarray  # bool
    daily_rate: np.ndarray  # expected requests/day at mean volume


def ttl_seconds(pairs) -> np.ndarray:
    """Configured (endpoint, TTL) pairs as seconds in ENDPOINTS order."""
    ttl = dict(pairs)
    return np.array([int(ttl[e].total_seconds()) for e in ENDPOINTS], dtype=np.int64)


def build_catalog(cfg: SimulatorConfig) -> Catalog:
    """Deterministic key population for `cfg.seed`."""
    rng = np.random.default_rng([cfg.seed, 0xCA7])
    n = max(cfg.catalog_keys, len(ENDPOINTS))
    sizes = np.maximum(1, np.round(CATALOG_SHARE * n).astype(int))
    keys, endpoint, cdfs, rates = [], [], [], []
    for e, (name, size) in enumerate(zip(ENDPOINTS, sizes)):
        weights = np.arange(1, size + 1, dtype=np.float64) ** -cfg.zipf_alpha
        p = weights / weights.sum()
        cdfs.append(np.cumsum(p))
        rates.append(p * cfg.requests_per_hour * 24 * ENDPOINT_SHARE[e] * (1 - cfg.long_tail_share))
        keys.extend(_key_names(name, size, rng))
        endpoint.append(np.full(size, e))
    endpoint = np.concatenate(endpoint)
    keys = np.array(keys, dtype=object)
    cohort = np.full(len(keys), -1)
    weights = [w for _, _, w in COHORTS]
    for i in np.flatnonzero(endpoint == 0):
        cohort[i] = seed_sha256_byte(keys[i], EXPERIMENT, weights)
    kv_ttl = ttl_seconds(cfg.kv_ttl)[endpoint]
    for c, (_, ttl, _) in enumerate(COHORTS if cfg.experiment else ()):
        kv_ttl[cohort == c] = ttl
    daily = np.concatenate(rates)
    return Catalog(
        keys=keys,
        endpoint=endpoint,
        cdfs=tuple(cdfs),
        offsets=np.concatenate([[0], np.cumsum(sizes)[:-1]]),
        edge_ttl_us=ttl_seconds(cfg.edge_ttl)[endpoint] * US,
        kv_ttl_us=kv_ttl * US,
        cohort=cohort,
        archived=daily < ARCHIVE_BELOW_PER_DAY,
        daily_rate=daily,
    )


_SYLLABLES = np.array(
    "ka lo mi ne ru sa te vo bri dan el fen gor hal ix jun kor lem mar nor ost pel "
    "quin ros sil tor ul ven wyn yar zed ash bel cor dun".split()
)


def _key_names(endpoint: str, size: int, rng: np.random.Generator) -> list[str]:
    if endpoint == "isbn":
        body = rng.choice(10**9, size=size, replace=False) + 978 * 10**9
        return [f"search:isbn:{b}{_isbn_check(b)}" for b in body]
    parts = rng.integers(0, len(_SYLLABLES), size=(size, 4))
    names, seen = [], set()
    for i, row in enumerate(parts):
        word = "".join(_SYLLABLES[row[:2]]) + "-" + "".join(_SYLLABLES[row[2:]])
        if word in seen:
            word = f"{word}-{i}"
        seen.add(word)
        names.append(f"search:{endpoint}:q={word}")
    return names


def _isbn_check(body12: int) -> int:
    digits = [int(c) for c in str(body12)]
    total = sum(d * (1 if i % 2 == 0 else 3) for i, d in enumerate(digits))
    return (10 - total % 10) % 10
