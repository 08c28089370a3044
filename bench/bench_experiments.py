"""Evidence that the experiment statistics hold: A/A false promotions and
power, ours against the seed's method, on key-level traffic like the
title endpoint's, looked at every day for 14 days. It calls the statistics
directly; `bench_experiments_product.py` runs the daily job's own analysis.

    .venv/bin/python -m bench.bench_experiments [--experiments 500] [--keys 30000]

Traffic: `--keys` title keys with Zipf(0.8) popularity, 1.6 M requests/day
scaled by `--scale` (default 160 k/day: a KV-or-better hit rate near 80 %); each key's KV-or-better hit
probability from the fixed-TTL model (λT/(1+λT), T = 24 h), so popular keys
hit almost always and rare ones seldom — the heterogeneity that makes
per-request statistics wrong. Each day every key draws Poisson(λ) requests
and Binomial hits. Keys are split 50/50 at random.

* ours: per-key ratio metric, delta method, confidence sequence (α = 0.05,
  N* = expected keys by day 14); promote when the lower bound of the gain
  exceeds 2 points (`tuning.analyze`'s rule), at the first day it does;
* seed: its daily test on pooled request proportions; promote when
  p < 0.05 and the gain exceeds 2 points.

A/A: no true difference. Power: the treatment's misses shrink so that its
request-weighted hit rate is 3 points higher.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from scipy import stats as sps

from cachemon.tuning import stats

DAYS, MARGIN = 14, 0.02


def population(keys: int, scale: float, rng) -> tuple[np.ndarray, np.ndarray]:
    ranks = np.arange(1, keys + 1)
    w = ranks**-0.8
    lam = w / w.sum() * 1.6e6 * scale  # requests/day
    hit = lam / (1 + lam)  # T = 1 day
    return lam, np.clip(hit, 0, 1)


def run(
    n_exp: int, keys: int, scale: float, effect: float, seed: int
) -> tuple[float, float, float]:
    rng = np.random.default_rng(seed)
    lam, hit = population(keys, scale, rng)
    # The effect is on the request-weighted hit rate: each key's misses
    # shrink by the same share g, so the overall rate rises by `effect`.
    miss = float((lam * (1 - hit)).sum() / lam.sum())
    g = min(1.0, effect / miss) if effect else 0.0
    ours = seed_method = fixed_only = adjusted = 0
    for _ in range(n_exp):
        arm = rng.integers(0, 2, keys)
        p = np.where(arm == 1, 1 - (1 - hit) * (1 - g), hit)
        # A pre-experiment week: every key under the control TTL.
        pre_d = rng.poisson(lam * 7)
        pre_m = rng.binomial(pre_d, hit)
        pre_rate = np.where(pre_d > 0, pre_m / np.maximum(pre_d, 1), pre_m.sum() / pre_d.sum())
        m_cum, d_cum = np.zeros(keys), np.zeros(keys)
        done_ours = done_seed = done_fixed = done_adj = False
        for day in range(1, DAYS + 1):
            d = rng.poisson(lam)
            m_cum += rng.binomial(d, p)
            d_cum += d
            seen = d_cum > 0
            units = int(seen.sum())
            c, t = seen & (arm == 0), seen & (arm == 1)
            diff = stats.Difference.of(
                stats.RatioStats.of(m_cum[c], d_cum[c]), stats.RatioStats.of(m_cum[t], d_cum[t])
            )
            tuning_n = units / (day / DAYS)
            if not done_ours:
                lo, _ = diff.sequence_interval(0.05, tuning_n)
                done_ours = lo > MARGIN
            if not done_fixed:
                lo, _ = diff.fixed_interval(0.05)
                done_fixed = lo > MARGIN
            if not done_adj:
                cov = d_cum * pre_rate
                _, (mc, mt) = stats.cuped(
                    [m_cum[c], m_cum[t]], [d_cum[c], d_cum[t]], [cov[c], cov[t]]
                )
                adj = stats.Difference.of(
                    stats.RatioStats.of(mc, d_cum[c]), stats.RatioStats.of(mt, d_cum[t])
                )
                lo, _ = adj.sequence_interval(0.05, tuning_n)
                done_adj = lo > MARGIN
            if not done_seed:
                x1, n1, x2, n2 = m_cum[c].sum(), d_cum[c].sum(), m_cum[t].sum(), d_cum[t].sum()
                pool = (x1 + x2) / (n1 + n2)
                z = (x2 / n2 - x1 / n1) / math.sqrt(pool * (1 - pool) * (1 / n1 + 1 / n2))
                pv = 2 * sps.norm.sf(abs(z))
                done_seed = pv < 0.05 and (x2 / n2 - x1 / n1) > MARGIN
        ours += done_ours
        seed_method += done_seed
        fixed_only += done_fixed
        adjusted += done_adj
    return ours / n_exp, adjusted / n_exp, seed_method / n_exp, fixed_only / n_exp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", type=int, default=500)
    ap.add_argument("--keys", type=int, default=60_000)
    ap.add_argument(
        "--scale", type=float, default=0.1, help="traffic relative to 1.6 M title requests/day"
    )
    args = ap.parse_args()
    t0 = time.time()
    lam, hit = population(args.keys, args.scale, None)
    base = float((lam * hit).sum() / lam.sum())
    print(
        f"{args.experiments} experiments × {DAYS} daily looks, {args.keys:,} keys, {lam.sum():,.0f} requests/day, "
        f"hit rate {base:.1%}"
    )
    print(
        "case                 | ours (CS, per key) | ours + CUPED | seed (pooled, daily p<0.05) | per key, fixed daily"
    )
    for name, effect in (("A/A: promoted", 0.0), ("+3 points: promoted", 0.03)):
        o, a, s, f = run(args.experiments, args.keys, args.scale, effect, seed=7 if effect else 5)
        print(f"{name:20} | {o:18.1%} | {a:12.1%} | {s:27.1%} | {f:.1%}")
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
