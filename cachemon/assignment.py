"""Cohort assignment schemes for TTL experiments.

`seed_sha256_byte` reproduces the original design's JavaScript byte for
byte (first byte of SHA-256 of key+name, divided by 255, cumulative weights
compared with `<`, fallback to the first cohort), bias included: a 50/50 split
is really 129/256 vs 127/256, because byte 255 maps to 1.0 and falls through.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def seed_sha256_byte(key: str, experiment: str, weights: Sequence[float]) -> int:
    """Index of the cohort the seed's `assignCohort` picks for `key`."""
    value = hashlib.sha256((key + experiment).encode("utf-8")).digest()[0] / 255
    cum = 0.0
    for i, w in enumerate(weights):
        cum += w  # float accumulation, as JavaScript does
        if value < cum:
            return i
    return 0
