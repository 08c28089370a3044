"""The tuning engine's analysis: per-cohort metrics of a TTL experiment from
the store, and a decision that holds under daily looks.

Units are keys (the randomised unit), each in the cohort its events carry.
Per key: hits (served by the edge or KV: "KV-or-better") over requests,
list cost over requests, errors over requests; ratio metrics by the delta
method (`cachemon.tuning.stats`). p95 latency per cohort comes from the cohort's
merged histogram, its variance with keys as units from each key's tier mix
(`cachemon.tuning.quantile_var`).

Decision of each treatment against the first cohort (the control):

* `collecting` — fewer than `MIN_UNITS` keys so far: results stay hidden;
* `srm` — the key counts do not fit the scheme's real allocation
  (chi-square p < `stats.SRM_P`, 0.001): no decision, and the reason;
* `winner` — the hit-rate gain's confidence-sequence lower bound (CUPED-
  adjusted), at the Holm-adjusted level across treatments, exceeds the
  margin (2 points), and no guardrail — cost per request, error rate, p95
  latency — is significantly higher (always-valid p, Holm across them);
* `loser` — the gain is significantly negative, or a guardrail is worse;
* `inconclusive` — otherwise (after the planned duration: `inconclusive (ended)`).

Beside each treatment's decision, its outlook: the days its hit-rate lower
bound still needs to clear the margin, or why it is out of reach
(`cachemon.tuning.power`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import duckdb
import numpy as np

from cachemon.clock import HOUR, Window, ceil_to, floor_to, iso, parse_instant
from cachemon.costs.tiermix import TierMix
from cachemon.events import TIERS
from cachemon.histogram import Histogram
from cachemon.pricing import Pricing, R2Lookup
from cachemon.store import horizons
from cachemon.store.queries import KEY_ROWS, key_ranges
from cachemon.tuning import power, quantile_var, stats
from cachemon.tuning.experiments import Experiment

ALPHA = 0.05
MIN_UNITS = 150


class Decision(StrEnum):
    """An experiment's (or one treatment's) decision; the value is what is
    stored and shown."""

    COLLECTING = "collecting"
    SRM = "srm"
    WINNER = "winner"
    LOSER = "loser"
    INCONCLUSIVE = "inconclusive"
    INCONCLUSIVE_ENDED = "inconclusive (ended)"


# The experiment's decision is its best treatment's, best last.
RANK = (Decision.LOSER, Decision.INCONCLUSIVE, Decision.INCONCLUSIVE_ENDED, Decision.WINNER)


class Status(StrEnum):
    """Where an experiment is in its planned span."""

    SCHEDULED = "scheduled"
    RUNNING = "running"
    ENDED = "ended"


KEYS_BY_COHORT = f"""
SELECT k.key_id, c.cohort, sum(k.edge) AS edge, sum(k.kv) AS kv, sum(k.r2) AS r2, sum(k.api) AS api,
       sum(k.errors) AS errors, sum(k.fill_errors) AS fill_errors
FROM ({KEY_ROWS}) k JOIN key_cohorts c ON c.key_id = k.key_id AND c.experiment = $experiment
GROUP BY k.key_id, c.cohort
"""
# Each experiment key's hits and requests in the week before the start: the
# CUPED covariate (a key's own hit rate before anything changed).
PRE_PERIOD = timedelta(days=7)
PRE_KEYS = f"""
SELECT k.key_id, sum(k.edge + k.kv) AS hits, sum(k.edge + k.kv + k.r2 + k.api) AS requests
FROM ({KEY_ROWS}) k WHERE k.key_id IN (SELECT key_id FROM key_cohorts WHERE experiment = $experiment)
GROUP BY k.key_id
"""
# Whole hours, like the per-key rows.
COHORT_LATENCY = """
SELECT cohort, tier, bucket, sum(weight) FROM latency_hour
WHERE experiment = $experiment AND hour >= $lo AND hour < $hi
GROUP BY cohort, tier, bucket ORDER BY cohort, tier, bucket
"""
# Σ w² per cohort and tier: Analytics Engine samples a minute with one weight,
# so a minute row contributes requests² / data points.
COHORT_WEIGHT_SQUARES = """
SELECT cohort, tier, sum(requests * requests / events) FROM rollup_minute
WHERE experiment = $experiment AND minute >= $lo AND minute < $hi AND events > 0
GROUP BY cohort, tier
"""


@dataclass(frozen=True)
class MetricResult:
    metric: str
    control: float
    treatment: float
    estimate: float  # treatment − control (points for rates, USD per 1M requests for cost)
    lower: float | None
    upper: float | None
    p_value: float | None


@dataclass(frozen=True)
class Comparison:
    treatment: str
    decision: Decision
    reason: str
    metrics: tuple[MetricResult, ...]
    # The days still needed to clear the margin (None in analyses stored before #20).
    outlook: power.Outlook | None = None

    def to_json(self) -> dict:
        return {
            "treatment": self.treatment,
            "decision": self.decision,
            "reason": self.reason,
            "metrics": [asdict(m) for m in self.metrics],
            "outlook": self.outlook.to_json() if self.outlook else None,
        }

    @classmethod
    def from_json(cls, d: dict) -> Comparison:
        return cls(
            d["treatment"],
            Decision(d["decision"]),
            d["reason"],
            tuple(MetricResult(**m) for m in d["metrics"]),
            power.Outlook.from_json(d.get("outlook")),
        )


@dataclass(frozen=True)
class Analysis:
    experiment: str
    at: datetime
    window_start: datetime
    window_end: datetime
    units: tuple[tuple[str, int], ...]
    srm_p: float | None
    decision: Decision  # the experiment's: the best treatment's decision, or collecting / srm
    comparisons: tuple[Comparison, ...]

    @property
    def srm_mismatch(self) -> bool:
        """Whether the key counts fail the SRM check (`stats.SRM_P`)."""
        return self.srm_p is not None and self.srm_p < stats.SRM_P

    @property
    def outlook(self) -> power.Outlook | None:
        """The experiment's days still needed: its soonest treatment's (the
        cleared first, out of reach last); None while collecting or blocked."""
        found = [c.outlook for c in self.comparisons if c.outlook]
        if not found:
            return None
        return min(found, key=lambda o: (o.days_more is None, o.days_more or 0))

    def to_json(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "comparisons"}
        for k in ("at", "window_start", "window_end"):
            d[k] = iso(getattr(self, k))
        d["comparisons"] = [c.to_json() for c in self.comparisons]
        return d

    @classmethod
    def from_json(cls, d: dict) -> Analysis:
        """An analysis read back from its stored JSON (`to_json`)."""
        return cls(
            d["experiment"],
            parse_instant(d["at"]),
            parse_instant(d["window_start"]),
            parse_instant(d["window_end"]),
            tuple((str(name), int(n)) for name, n in d["units"]),
            d["srm_p"],
            Decision(d["decision"]),
            tuple(Comparison.from_json(c) for c in d["comparisons"]),
        )


def per_key(
    con: duckdb.DuckDBPyConnection,
    e: Experiment,
    window: Window,
    pricing: Pricing,
    r2_lookup: R2Lookup = R2Lookup.REHYDRATION,
) -> dict[str, dict[str, np.ndarray]]:
    """Per-key arrays of each cohort: hits, requests, cost (USD), errors,
    and `expected`: requests × the key's pre-period hit rate (the pooled
    pre-period rate for keys not seen before the start). Cost is the
    tier-mix rule with R2 gets per `r2_lookup` (`[costs] r2_lookup`)."""
    df = con.execute(
        KEYS_BY_COHORT, key_ranges(window.start, window.end) | {"experiment": e.name}
    ).df()
    pre = con.execute(
        PRE_KEYS, key_ranges(e.start - PRE_PERIOD, e.start) | {"experiment": e.name}
    ).df()
    pooled = pre.hits.sum() / pre.requests.sum() if len(pre) and pre.requests.sum() > 0 else 0.0
    rate = dict(zip(pre.key_id, pre.hits / pre.requests.where(pre.requests > 0)))
    df["pre_rate"] = df.key_id.map(rate).fillna(pooled)
    out = {}
    for cohort, g in df.groupby("cohort"):
        # Only errors of r2/api answers are failed fills (edge and KV errors write nothing).
        mix = TierMix(*(g[c].to_numpy() for c in (*TIERS, "fill_errors")), r2_lookup=r2_lookup)
        req = mix.requests
        cost = mix.request_cost(pricing)
        out[str(cohort)] = {
            "hits": (g.edge + g.kv).to_numpy(),
            "requests": req,
            "cost": cost,
            "errors": g.errors.to_numpy(),
            "expected": req * g.pre_rate.to_numpy(),
            **{t: g[t].to_numpy() for t in quantile_var.TIERS},
        }
    return out


@dataclass(frozen=True)
class CohortLatency:
    p95: float | None
    cdf: quantile_var.Cdf
    tiers: dict  # tier -> Cdf
    weight_squares: dict  # tier -> Σ w²


def _latency(
    con: duckdb.DuckDBPyConnection, e: Experiment, window: Window
) -> dict[str, CohortLatency]:
    p = {"experiment": e.name, "lo": ceil_to(window.start, HOUR), "hi": floor_to(window.end, HOUR)}
    rows = con.execute(COHORT_LATENCY, p).fetchall()
    by: dict[str, dict[str, list]] = {}
    for cohort, tier, bucket, w in rows:
        by.setdefault(cohort, {}).setdefault(tier, []).append((bucket, w))
    w2: dict[str, dict[str, float]] = {}
    for cohort, tier, s in con.execute(COHORT_WEIGHT_SQUARES, p).fetchall():
        w2.setdefault(cohort, {})[tier] = float(s)
    out = {}
    for cohort, tiers in by.items():
        pairs = [bw for v in tiers.values() for bw in v]
        merged = Histogram.from_pairs(*zip(*pairs))
        out[cohort] = CohortLatency(
            merged.quantile(0.95),
            quantile_var.Cdf(*zip(*pairs)),
            {t: quantile_var.Cdf(*zip(*v)) for t, v in tiers.items()},
            w2.get(cohort, {}),
        )
    return out


def _p95_difference(
    control: dict, treatment: dict, lc: CohortLatency, lt: CohortLatency
) -> stats.Difference:
    """Treatment minus control p95 (ms), its variance with keys as units."""
    var = sum(
        quantile_var.quantile_variance(
            lat.p95, {t: d[t] for t in quantile_var.TIERS}, lat.tiers, lat.cdf, lat.weight_squares
        )
        for d, lat in ((control, lc), (treatment, lt))
    )
    return stats.Difference(
        lt.p95 - lc.p95, var, len(control["requests"]) + len(treatment["requests"])
    )


def analyze(
    con: duckdb.DuckDBPyConnection,
    e: Experiment,
    at: datetime,
    pricing: Pricing,
    r2_lookup: R2Lookup = R2Lookup.REHYDRATION,
) -> Analysis:
    """The experiment's state at `at` (its window: start to min(at, end));
    the cost guardrail's R2 gets per `r2_lookup`."""
    end = min(at, e.start + e.duration)
    window = Window(e.start, max(end, e.start))
    horizons.check_read(con, window.start, f"experiment {e.name!r}")
    data = per_key(con, e, window, pricing, r2_lookup)
    names = [c.name for c in e.cohorts]
    units = tuple((n, len(data.get(n, {}).get("requests", ()))) for n in names)
    total = sum(u for _, u in units)
    srm = stats.srm([u for _, u in units], [float(a) for a in e.allocation()]) if total else None
    elapsed = max((window.end - window.start) / e.duration, 1e-9)
    tuning_n = max(total / elapsed, 2.0)  # expected keys by the planned end
    base = Analysis(
        e.name,
        at,
        window.start,
        window.end,
        units,
        srm.p_value if srm else None,
        Decision.COLLECTING,
        (),
    )
    if total < MIN_UNITS or any(u < 2 for _, u in units):
        return base
    if srm and srm.mismatch:
        return _replace(base, decision=Decision.SRM)
    p95 = _latency(con, e, window)
    days = (window.end - window.start) / timedelta(days=1), e.duration / timedelta(days=1)
    comparisons = _compare(
        data, names, p95, tuning_n, at >= e.start + e.duration, e.margin, e.metrics, days, total
    )
    best = max(comparisons, key=lambda c: RANK.index(c.decision))
    return _replace(base, decision=best.decision, comparisons=tuple(comparisons))


def _replace(a: Analysis, **changes) -> Analysis:
    return Analysis(**{**a.__dict__, **changes})


def _ratio(d: dict, numerator: str) -> stats.RatioStats:
    return stats.RatioStats.of(d[numerator], d["requests"])


def _hit_difference(control: dict, treatment: dict) -> stats.Difference:
    """The hit-rate difference, CUPED-adjusted with the keys' pre-period
    hit rates (no pre-period data: θ = 0, the plain difference)."""
    _, (mc, mt) = stats.cuped(
        [control["hits"], treatment["hits"]],
        [control["requests"], treatment["requests"]],
        [control["expected"], treatment["expected"]],
    )
    return stats.Difference.of(
        stats.RatioStats.of(mc, control["requests"]), stats.RatioStats.of(mt, treatment["requests"])
    )


def _compare(
    data,
    names,
    p95,
    tuning_n: float,
    ended: bool,
    margin: float,
    metrics: tuple[str, ...],
    days: tuple[float, float],
    total: int,
) -> list[Comparison]:
    """Each treatment against the control; `days` = (days analysed, planned
    days), `total` = keys in every cohort (for the outlook)."""
    control = data[names[0]]
    diffs = {t: _hit_difference(control, data[t]) for t in names[1:]}
    adjusted = dict(zip(diffs, stats.holm([d.sequence_p(tuning_n) for d in diffs.values()])))
    out = []
    for t, hit in diffs.items():
        level = ALPHA / (
            len(diffs) - sorted(adjusted.values()).index(adjusted[t])
        )  # Holm's step level
        lo, hi = hit.sequence_interval(level, tuning_n)
        results = [
            MetricResult(
                "hit_rate",
                100 * _ratio(control, "hits").ratio,
                100 * _ratio(data[t], "hits").ratio,
                100 * hit.estimate,
                100 * lo,
                100 * hi,
                adjusted[t],
            )
        ]
        # Guardrails: higher is worse; Holm across them, on always-valid p-values.
        guards = [
            (metric, key, scale, stats.Difference.of(_ratio(control, key), _ratio(data[t], key)))
            for metric, key, scale in (
                ("cost_per_request", "cost", 1e6),
                ("error_rate", "errors", 100.0),
            )
            if metric in metrics
        ]
        lc, lt = p95.get(names[0]), p95.get(t)
        if "p95_latency" in metrics and lc and lt and lc.p95 and lt.p95:
            guards.append(("p95_latency", None, 1.0, _p95_difference(control, data[t], lc, lt)))
        held = stats.holm([d.sequence_p(tuning_n) for *_, d in guards])
        worse = []
        for (metric, key, scale, d), p_adj in zip(guards, held):
            glo, ghi = d.sequence_interval(ALPHA, tuning_n)
            c_val, t_val = (
                (lc.p95, lt.p95)
                if key is None
                else (scale * _ratio(control, key).ratio, scale * _ratio(data[t], key).ratio)
            )
            results.append(
                MetricResult(
                    metric, c_val, t_val, scale * d.estimate, scale * glo, scale * ghi, p_adj
                )
            )
            if p_adj < ALPHA and d.estimate > 0:
                worse.append(metric)
        if worse:
            decision, reason = Decision.LOSER, "guardrail worse: " + ", ".join(worse)
        elif 100 * lo > margin:
            decision, reason = (
                Decision.WINNER,
                f"hit-rate gain ≥ {100 * lo:.2f} points (> {margin:g}) at every look",
            )
        elif 100 * hi < 0:
            decision, reason = Decision.LOSER, "hit rate significantly lower"
        else:
            decision = Decision.INCONCLUSIVE_ENDED if ended else Decision.INCONCLUSIVE
            reason = f"gain in [{100 * lo:.2f}, {100 * hi:.2f}] points; needs its lower bound above {margin:g}"
        outlook = power.outlook(t, hit, level, margin, *days, total)
        out.append(Comparison(t, decision, reason, tuple(results), outlook))
    return out


def status(e: Experiment, at: datetime) -> Status:
    """scheduled (before its start), running, or ended (its duration is over)."""
    if at < e.start:
        return Status.SCHEDULED
    return Status.RUNNING if at < e.start + e.duration else Status.ENDED


ENDPOINT_KEYS = f"""
SELECT sum(k.edge + k.kv) AS hits, sum(k.edge + k.kv + k.r2 + k.api) AS requests
FROM ({KEY_ROWS}) k JOIN cache_keys c ON c.key_id = k.key_id AND c.endpoint = $endpoint
GROUP BY k.key_id
"""


def plan(
    con: duckdb.DuckDBPyConnection,
    e: Experiment,
    at: datetime,
    lookback: timedelta = timedelta(days=7),
) -> int | None:
    """Before (or at) the start: days needed to prove a gain of `mde` over
    the margin at the endpoint's current traffic (the last `lookback` of
    per-key hit rates, keys split by the scheme's allocation; without CUPED,
    so it errs long). None when it would not fit in 90 days or no data."""
    df = con.execute(ENDPOINT_KEYS, key_ranges(at - lookback, at) | {"endpoint": e.endpoint}).df()
    if len(df) < 2:
        return None
    s = stats.RatioStats.of(df.hits, df.requests)
    shares = [float(a) for a in e.allocation()]
    unit_var = s.variance * s.n * (1 / shares[0] + 1 / shares[1]) * 1e4  # points², per key
    per_day = s.n / (lookback / timedelta(days=1))
    return stats.days_needed(
        unit_var, per_day, e.mde, e.margin, ALPHA, per_day * (e.duration / timedelta(days=1))
    )
