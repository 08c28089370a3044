import hashlib

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from cachemon.keyhash import key_hash, key_hashes, sampled


@given(st.text())
def test_key_hash_is_six_bytes_of_sha256_in_unit_interval(key):
    d = hashlib.sha256(key.encode("utf-8")).digest()
    expect = sum(b * 256 ** (5 - i) for i, b in enumerate(d[:6])) / 2**48
    h = key_hash(key)
    assert h == expect and 0 <= h < 1


def test_known_vector_matches_the_worker_formula():
    # sha256("title:dune") computed independently of the module
    d = hashlib.sha256(b"title:dune").digest()
    h = 0
    for b in d[:6]:
        h = h * 256 + b
    assert key_hash("title:dune") == h / 2**48


def test_sample_rate_is_close_to_nominal_on_many_keys():
    hs = key_hashes(f"k{i}" for i in range(200_000))
    share = sampled(hs, 0.01).mean()
    # binomial sd at n=200k, p=0.01 is 0.00022; 5 sd
    assert abs(share - 0.01) < 0.0011
    assert np.all((hs >= 0) & (hs < 1))
