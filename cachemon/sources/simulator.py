"""The embedded traffic simulator: the default source, no credentials needed.

It models BooksTrack's tiered cache closely enough that every page, job and
test runs on realistic data:

* key popularity Zipf-like (α ≈ 0.8, finite-N inverse CDF) per endpoint, plus
  a long tail of one-off searches that always reach the origin;
* diurnal and weekly traffic shape around the seed's ≈125,000 requests/hour;
* a per-colo edge cache and Workers KV, both with a fixed TTL counted from
  the fill (KV `expirationTtl`), an R2 cold store for archived keys, and the
  origin API with errors; log-normal latency per tier;
* the seed's `extended-title-ttl` experiment (KV TTL 24 h vs 48 h, assigned
  with the seed's own hash);
* weekly incidents: an edge purge, an origin slowdown, a queue backlog;
* Analytics Engine style sampling with `sample_interval` weights.

Requests of each UTC hour are drawn from a generator seeded by (seed, hour),
and the cache state is carried across calls, so the events of a span are the
same however it is cut into windows. `Simulator.generate` must be called on
consecutive windows; its state can be saved (`state.to_bytes()`) and restored (`restore`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa

from cachemon.clock import Window
from cachemon.errors import SourceError
from cachemon.events import ENDPOINTS, SCHEMA, TIERS, EventFrame
from cachemon.settings import SimulatorConfig
from cachemon.sources.catalog import (
    COHORTS,
    ENDPOINT_SHARE,
    EXPERIMENT,
    US,
    build_catalog,
    ttl_seconds,
)

HOUR_US = 3600 * US
STEP_US = 300 * US  # cache state is settled, and storage gauges read, every 5 min
NEVER = -(2**62)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# (median ms, log-sigma) per tier; the origin's tail is heavy. Calibrated so
# that a normal hour's p99 sits near the seed's ~200 ms, under the 500 ms
# critical threshold, and the Thursday slowdown (×6 at the origin) breaks it.
LATENCY = ((4.0, 0.5), (22.0, 0.45), (110.0, 0.4), (180.0, 0.6))
ENTRY_BYTES = 4_000.0  # a response as served
# A value as stored in KV / R2 (gzip-compressed JSON): with a month of
# one-off searches alive under their KV TTLs, KV stays under the seed's 1 GB.
STORED_BYTES = 600.0

# Weekly incidents, as offsets from Monday 00:00 UTC.
PURGE_AT = timedelta(days=1, hours=14)
SLOWDOWN = (timedelta(days=3, hours=9), timedelta(minutes=45))
BACKLOG = (timedelta(days=5, hours=2), timedelta(hours=2))
SLOWDOWN_LATENCY_FACTOR = 6.0
SLOWDOWN_ERROR_RATE = 0.12
# The simulator's output keeps its low-cardinality text columns and the key
# dictionary-encoded, which DuckDB reads directly; see EventFrame.
SIM_SCHEMA = pa.schema(
    [
        pa.field(f.name, pa.dictionary(pa.int32(), pa.string())) if f.type == pa.string() else f
        for f in SCHEMA
    ]
)


class SimState:
    """Cache state carried between windows (mutable, owned by one Simulator)."""

    def __init__(
        self, seed: int, clock_us: int, edge_fill, kv_fill, tail_writes, tail_total: float
    ):
        self.seed = seed
        self.clock_us = clock_us
        self.edge_fill = edge_fill  # per (colo, key): fill time in µs or NEVER
        self.kv_fill = kv_fill  # per key
        self.tail_writes = tail_writes  # rows of (time µs, endpoint, count)
        self.tail_total = tail_total  # long-tail entries ever written (archived to R2)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            seed=np.array([self.seed]),
            clock=np.array([self.clock_us]),
            edge=self.edge_fill,
            kv=self.kv_fill,
            tail=self.tail_writes,
            tail_total=np.array([self.tail_total]),
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> SimState:
        with np.load(io.BytesIO(data)) as z:
            return cls(
                int(z["seed"][0]),
                int(z["clock"][0]),
                z["edge"].copy(),
                z["kv"].copy(),
                z["tail"].copy(),
                float(z["tail_total"][0]),
            )


@dataclass
class _Hour:
    t: np.ndarray  # µs, sorted
    key: np.ndarray  # catalog index, or -1 for a long-tail key
    endpoint: np.ndarray
    colo: np.ndarray
    u_err: np.ndarray
    u_keep: np.ndarray
    z_lat: np.ndarray
    z_bytes: np.ndarray
    tail_token: np.ndarray
    minute_counts: np.ndarray
    queue_noise: np.ndarray


@dataclass(frozen=True)
class _Requests:
    """A segment's kept requests, column by column (numpy), before they
    become the window's one table."""

    t: np.ndarray
    tier: np.ndarray
    key: np.ndarray  # catalog index, or -1 for a long-tail key
    endpoint: np.ndarray
    cohort: np.ndarray  # index into COHORTS, or -1 outside the experiment
    error: np.ndarray
    latency: np.ndarray
    bytes: np.ndarray
    interval: np.ndarray
    tail_names: list[str]  # the long-tail keys' names, in row order


class Simulator:
    """Generates events for consecutive windows from a warm cache."""

    def __init__(self, cfg: SimulatorConfig, incidents: bool = True):
        self.cfg = cfg
        self.incidents = incidents
        self.catalog = build_catalog(cfg)
        self.kv_ttl_us = ttl_seconds(cfg.kv_ttl) * US  # per endpoint, for long-tail writes
        w = np.arange(1, cfg.colos + 1, dtype=np.float64) ** -0.7
        self.colo_p = w / w.sum()
        self._key_array = pa.array(self.catalog.keys, pa.string())
        self.state: SimState | None = None
        self._hour_cache: tuple[int, _Hour] | None = None

    # -- state ---------------------------------------------------------------
    def start(self, at: datetime) -> None:
        """Begin at `at` with every cache at its steady-state occupancy."""
        t0 = _us(at)
        rng = np.random.default_rng([self.cfg.seed, 0x57A7E])
        cat = self.catalog
        lam_key = cat.daily_rate / (86400 * US)  # per µs
        lam_edge = (self.colo_p[:, None] * lam_key[None, :]).ravel()
        edge_ttl = np.tile(cat.edge_ttl_us, self.cfg.colos)
        edge_fill = _stationary_fill(rng, t0, lam_edge, edge_ttl)
        edge_hit = lam_edge * edge_ttl / (1 + lam_edge * edge_ttl)
        miss_rate = (lam_edge * (1 - edge_hit)).reshape(self.cfg.colos, -1).sum(axis=0)
        kv_fill = _stationary_fill(rng, t0, miss_rate, cat.kv_ttl_us)
        self.state = SimState(self.cfg.seed, t0, edge_fill, kv_fill, np.zeros((0, 3)), 0.0)

    def restore(self, data: bytes) -> None:
        state = SimState.from_bytes(data)
        if state.seed != self.cfg.seed or state.edge_fill.shape != (
            self.cfg.colos * len(self.catalog.keys),
        ):
            raise SourceError("saved simulator state does not match the simulator configuration")
        self.state = state

    @property
    def clock(self) -> datetime | None:
        return None if self.state is None else EPOCH + timedelta(microseconds=self.state.clock_us)

    # -- generation ----------------------------------------------------------
    def generate(self, window: Window) -> EventFrame:
        """Events of `window`, which must start where the last one ended."""
        if self.state is None:
            self.start(window.start)
        a, b = _us(window.start), _us(window.end)
        if a != self.state.clock_us:
            raise SourceError(
                f"simulator is at {self.clock.isoformat()}, asked for a window starting {window.start.isoformat()}"
            )
        requests: list[_Requests] = []
        gauges = [SIM_SCHEMA.empty_table()]
        for s, e in self._segments(a, b):
            req, *gauge_tables = self._segment(s, e)
            requests.append(req)
            gauges.extend(gauge_tables)
            self.state.clock_us = e
        # One table, and one key dictionary, per window: a dictionary per
        # 5-minute segment copied the 60,000 catalog keys 288 times a day.
        table = self._request_table(requests)
        return EventFrame(pa.concat_tables([table] + [g.cast(SIM_SCHEMA) for g in gauges]))

    def _segments(self, a: int, b: int):
        cuts = set(range((a // STEP_US + 1) * STEP_US, b, STEP_US))
        cuts |= set(range((a // HOUR_US + 1) * HOUR_US, b, HOUR_US))
        if self.incidents:
            cuts |= {p for p in self._weekly(a, b, PURGE_AT) if a < p < b}
        points = [a] + sorted(cuts) + [b]
        return [(s, e) for s, e in zip(points, points[1:]) if e > s]

    def _weekly(self, a: int, b: int, offset: timedelta):
        week = 7 * 86400 * US
        monday0 = 4 * 86400 * US  # 1970-01-05 was a Monday
        base = (a - monday0) // week * week + monday0
        off = int(offset.total_seconds()) * US
        return [base + k * week + off for k in range(0, (b - base) // week + 2)]

    def _in_incident(self, t: np.ndarray, incident) -> np.ndarray:
        start, length = incident
        if not self.incidents:
            return np.zeros(t.shape, bool)
        week = 7 * 86400 * US
        pos = (t - 4 * 86400 * US) % week
        s = int(start.total_seconds()) * US
        return (pos >= s) & (pos < s + int(length.total_seconds()) * US)

    def _requests(self, a: int, b: int) -> _Hour:
        """Requests of [a, b), which lies within one hour (segments do)."""
        h = self._hour(a // HOUR_US)
        lo, hi = np.searchsorted(h.t, [a, b])
        per_request = {
            k: v[lo:hi] for k, v in vars(h).items() if k not in ("minute_counts", "queue_noise")
        }
        return _Hour(**per_request, minute_counts=h.minute_counts, queue_noise=h.queue_noise)

    def _hour(self, hour: int) -> _Hour:
        if self._hour_cache and self._hour_cache[0] == hour:
            return self._hour_cache[1]
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, hour])
        n = int(rng.poisson(cfg.requests_per_hour * _shape(hour)))
        t = np.sort(hour * HOUR_US + rng.integers(0, HOUR_US, n))
        endpoint = rng.choice(len(ENDPOINTS), size=n, p=ENDPOINT_SHARE)
        tail = rng.random(n) < cfg.long_tail_share
        key = np.empty(n, np.int64)
        for e, cdf in enumerate(self.catalog.cdfs):
            m = endpoint == e
            idx = np.searchsorted(cdf, rng.random(int(m.sum())) * cdf[-1], side="right")
            key[m] = np.minimum(idx, len(cdf) - 1) + self.catalog.offsets[e]
        key[tail] = -1
        minute_counts = np.bincount((t - hour * HOUR_US) // (60 * US), minlength=60)
        h = _Hour(
            t=t,
            key=key,
            endpoint=endpoint,
            colo=rng.choice(cfg.colos, size=n, p=self.colo_p),
            u_err=rng.random(n),
            u_keep=rng.random(n),
            z_lat=rng.standard_normal(n),
            z_bytes=rng.standard_normal(n),
            tail_token=rng.integers(0, 2**62, n),
            minute_counts=minute_counts,
            queue_noise=rng.poisson(3.0, 60).astype(float),
        )
        self._hour_cache = (hour, h)
        return h

    def _segment(self, a: int, b: int) -> tuple[_Requests, pa.Table, pa.Table]:
        st, cat = self.state, self.catalog
        if self.incidents and a in self._weekly(a, a + 1, PURGE_AT):
            st.edge_fill[:] = NEVER
        r = self._requests(a, b)
        slow = self._in_incident(r.t, SLOWDOWN)
        err_rate = np.where(slow, SLOWDOWN_ERROR_RATE, self.cfg.origin_error_rate)
        cat_rows = np.flatnonzero(r.key >= 0)
        k = r.key[cat_rows]
        tier = np.full(len(r.t), 3)  # long tail: origin
        edge_group = r.colo[cat_rows] * len(cat.keys) + k
        edge_hit = _ttl_hits(
            edge_group,
            r.t[cat_rows],
            np.tile(cat.edge_ttl_us, self.cfg.colos),
            st.edge_fill,
            None,
            a,
            b,
        )
        miss = cat_rows[~edge_hit]
        km = r.key[miss]
        fails = (r.u_err[miss] < err_rate[miss]) & ~cat.archived[km]
        kv_hit = _ttl_hits(km, r.t[miss], cat.kv_ttl_us, st.kv_fill, fails, a, b)
        tier[cat_rows[edge_hit]] = 0
        tier[miss[kv_hit]] = 1
        cold = miss[~kv_hit]
        tier[cold] = np.where(cat.archived[r.key[cold]], 2, 3)
        error = (tier == 3) & (r.u_err < err_rate)
        self._note_tail_writes(r, error, b)
        return (
            self._kept_requests(r, tier, error, slow),
            self._queue_gauges(r, a, b),
            self._storage_gauges(b),
        )

    def _note_tail_writes(self, r: _Hour, error: np.ndarray, at: int) -> None:
        st = self.state
        written = (r.key < 0) & ~error
        counts = np.bincount(r.endpoint[written], minlength=len(ENDPOINTS)).astype(float)
        rows = np.column_stack(
            [np.full(len(ENDPOINTS), float(at)), np.arange(len(ENDPOINTS)), counts]
        )
        st.tail_writes = np.vstack([st.tail_writes, rows[counts > 0]])
        st.tail_total += counts.sum()
        # A long-tail write lives for its endpoint's KV TTL; older rows are dead.
        alive = st.tail_writes[:, 0] + self.kv_ttl_us[st.tail_writes[:, 1].astype(int)] > at
        st.tail_writes = st.tail_writes[alive]

    def _kept_requests(self, r: _Hour, tier, error, slow) -> _Requests:
        """The requests Analytics Engine keeps (its sampling), with their columns."""
        cat = self.catalog
        keep_prob = 1.0 / self._sample_interval(r)
        idx = np.flatnonzero(r.u_keep < keep_prob)
        tr, kk, ep = tier[idx], r.key[idx], r.endpoint[idx]
        med = np.array([m for m, _ in LATENCY])[tr]
        sig = np.array([s for _, s in LATENCY])[tr]
        lat = med * np.exp(sig * r.z_lat[idx])
        lat = np.where((tr == 3) & slow[idx], lat * SLOWDOWN_LATENCY_FACTOR, lat)
        tail = kk < 0
        return _Requests(
            t=r.t[idx],
            tier=tr,
            key=kk,
            endpoint=ep,
            cohort=np.where(kk >= 0, cat.cohort[np.maximum(kk, 0)], -1),
            error=error[idx],
            latency=lat,
            bytes=np.round(ENTRY_BYTES * np.exp(0.6 * r.z_bytes[idx])),
            interval=1.0 / keep_prob[idx],
            tail_names=[
                f"search:{ENDPOINTS[e]}:q=lt-{tok:x}"
                for e, tok in zip(ep[tail], r.tail_token[idx][tail])
            ],
        )

    def _request_table(self, parts: list[_Requests]) -> pa.Table:
        """The window's requests as one SIM_SCHEMA table."""

        def col(name: str) -> np.ndarray:
            return np.concatenate([getattr(p, name) for p in parts]) if parts else np.zeros(0)

        kk = col("key").astype(np.int64)
        # Keys travel dictionary-encoded: catalog keys are indices into the
        # catalog's array; the window's long-tail keys are appended after it.
        tail_names = [name for p in parts for name in p.tail_names]
        key_idx = kk.copy()
        tail = kk < 0
        key_idx[tail] = len(self.catalog.keys) + np.arange(tail.sum())
        key_dict = pa.concat_arrays([self._key_array, pa.array(tail_names, pa.string())])
        cohort = col("cohort").astype(np.int64)
        n = len(kk)
        table = pa.table(
            {
                "timestamp": pa.array(col("t").astype(np.int64), pa.timestamp("us", tz="UTC")),
                "tier": _dict(col("tier"), TIERS),
                "key": pa.DictionaryArray.from_arrays(pa.array(key_idx.astype(np.int32)), key_dict),
                "endpoint": _dict(col("endpoint"), ENDPOINTS),
                "experiment": _dict((cohort >= 0).astype(int), ("", EXPERIMENT)),
                "cohort": _dict(cohort + 1, ("",) + tuple(c for c, _, _ in COHORTS)),
                "status": _dict(col("error").astype(int), ("ok", "error")),
                "kind": _dict(np.zeros(n, int), ("request",)),
                "latency_ms": pa.array(col("latency").astype(float)),
                "bytes": pa.array(col("bytes").astype(float)),
                "sample_interval": pa.array(col("interval").astype(float)),
            }
        )
        # One chunk per segment (slices: the buffers and the dictionary are
        # shared). DuckDB scans a chunk in one thread, so each minute's float
        # sums add up in one order, and the same window gives the same store.
        offsets = np.cumsum([0] + [len(p.t) for p in parts])
        return pa.concat_tables(
            [table.slice(a, b - a) for a, b in zip(offsets[:-1], offsets[1:])] or [table]
        )

    def _sample_interval(self, r: _Hour) -> np.ndarray:
        """Analytics Engine samples busy minutes: interval 2^k above the threshold."""
        counts = r.minute_counts[(r.t % HOUR_US) // (60 * US)]
        ratio = counts / self.cfg.sample_threshold_per_minute
        return np.where(ratio > 1, 2.0 ** np.floor(np.log2(np.maximum(ratio, 1))), 1.0)

    def _storage_gauges(self, at: int) -> pa.Table:
        if at % STEP_US:
            return SIM_SCHEMA.empty_table()
        st, cat = self.state, self.catalog
        live = st.kv_fill + cat.kv_ttl_us > at
        kv_bytes = (live.sum() + st.tail_writes[:, 2].sum()) * STORED_BYTES
        r2_bytes = (cat.archived.sum() + st.tail_total) * STORED_BYTES
        return _gauge_table(
            [at - 1, at - 1], ["kv_storage_bytes", "r2_storage_bytes"], [kv_bytes, r2_bytes]
        )

    def _queue_gauges(self, r: _Hour, a: int, b: int) -> pa.Table:
        """Warming queue depth at each minute start in [a, b)."""
        minutes = np.arange(-(-a // (60 * US)), -(-b // (60 * US)), dtype=np.int64) * 60 * US
        depth = 40.0 * _shape(int(a // HOUR_US)) + r.queue_noise[(minutes % HOUR_US) // (60 * US)]
        backlog = self._in_incident(minutes, BACKLOG)
        pos = (minutes - 4 * 86400 * US) % (7 * 86400 * US) - int(BACKLOG[0].total_seconds()) * US
        frac = pos / (BACKLOG[1].total_seconds() * US)
        depth = np.where(backlog, depth + 2600.0 * (1 - np.abs(2 * frac - 1)), depth)
        return _gauge_table(minutes, ["queue_depth"] * len(minutes), depth)


def _shape(hour: int) -> float:
    """Traffic multiplier of an epoch hour: diurnal peak at 18:00 UTC, quieter
    weekends; averages to 1 over a week."""
    hod = hour % 24
    weekday = ((hour // 24) + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    diurnal = 1 + 0.45 * np.sin(2 * np.pi * (hod - 12) / 24)
    weekly = 0.8 if weekday >= 5 else 1.0
    return float(diurnal * weekly / ((5 + 2 * 0.8) / 7))


def _stationary_fill(rng, t0: int, rate: np.ndarray, ttl: np.ndarray) -> np.ndarray:
    """Fill times of a fixed-TTL cache in steady state under Poisson arrivals:
    cached with probability λT/(1+λT), age uniform over the TTL."""
    occupied = rng.random(len(rate)) < rate * ttl / (1 + rate * ttl)
    age = (rng.random(len(rate)) * ttl).astype(np.int64)
    return np.where(occupied, t0 - age, NEVER).astype(np.int64)


def _ttl_hits(group, t, ttl, fill, no_fill, a: int, b: int) -> np.ndarray:
    """Hits of a fixed-TTL-from-fill cache, one cache line per group.

    A request is a miss when it comes at or after fill + TTL; a miss refills
    the line unless `no_fill` says it failed. Vectorised over groups: each
    pass finds every group's next miss by binary search, so the number of
    passes is the largest number of misses of one group in the window.
    `fill` is updated in place.
    """
    n = len(group)
    hit = np.ones(n, bool)
    if n == 0:
        return hit
    order = np.lexsort((t, group))
    g, ts = group[order], t[order] - a
    nf = np.zeros(n, bool) if no_fill is None else no_fill[order]
    span = (b - a) + 2
    comp = g * span + ts
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    ends = np.r_[starts[1:], n]
    groups = g[starts]
    thr = np.clip(fill[groups] + ttl[groups] - a, 0, span - 1)
    p = np.searchsorted(comp, groups * span + thr)
    while True:
        live = p < ends
        if not live.any():
            break
        groups, p, ends = groups[live], p[live], ends[live]
        hit[p] = False
        fills = ~nf[p]
        fill[groups[fills]] = ts[p[fills]] + a
        nxt = np.clip(ts[p] + ttl[groups], 0, span - 1)
        p = np.where(fills, np.searchsorted(comp, groups * span + nxt), p + 1)
    out = np.empty(n, bool)
    out[order] = hit
    return out


def _dict(indices: np.ndarray, values: tuple) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(
        pa.array(np.asarray(indices, np.int32)), pa.array(list(values), pa.string())
    )


def _gauge_table(times, names, values) -> pa.Table:
    n = len(times)
    return pa.table(
        {
            "timestamp": pa.array(np.asarray(times, np.int64), pa.timestamp("us", tz="UTC")),
            "tier": pa.array([""] * n, pa.string()),
            "key": pa.array([""] * n, pa.string()),
            "endpoint": pa.array([""] * n, pa.string()),
            "experiment": pa.array([""] * n, pa.string()),
            "cohort": pa.array([""] * n, pa.string()),
            "status": pa.array(["ok"] * n, pa.string()),
            "kind": pa.array(names, pa.string()),
            "latency_ms": pa.array(np.asarray(values, float)),
            "bytes": pa.array(np.zeros(n)),
            "sample_interval": pa.array(np.ones(n)),
        }
    )


def _us(dt: datetime) -> int:
    return (dt - EPOCH) // timedelta(microseconds=1)
