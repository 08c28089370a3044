"""SHARDS samples in the store: what every source stores equals the raw
events filtered by `keyhash.key_hash(key) < R` (pandas, independently), a
window re-ingested replaces its rows, the row budget lowers R as documented,
a span keeps one consistent rate, and a source without a key hash says so."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachemon import config, keyhash, rollups
from cachemon.clock import DAY, MINUTE, Window
from cachemon.events import TIERS, EventFrame
from cachemon.ingest import load as ingest_load
from cachemon.ingest import write as ingest_write
from cachemon.rollups import Sampling
from cachemon.sources.simulator import Simulator
from cachemon.store import db as store_db
from cachemon.store import samples
from tests.helpers import T0, simulate, to_pandas

HOURS = 3
END = T0 + timedelta(hours=HOURS)


def truth(df: pd.DataFrame, rate: float, endpoint: str | None = None, unit_us=1) -> pd.DataFrame:
    """The raw request rows of keys hashing under `rate`, as the tests compare
    them; times floored to `unit_us` (Analytics Engine's are whole seconds)."""
    r = df[df.kind == "request"]
    if endpoint is not None:
        r = r[r.endpoint == endpoint]
    r = r[r.key.map(keyhash.key_hash) < rate]
    return _canonical(
        pd.DataFrame(
            {
                "key": r.key.to_numpy(),
                "t_us": r.timestamp.astype("datetime64[us, UTC]").astype("int64").to_numpy()
                // unit_us
                * unit_us,
                "tier": r.tier.map(TIERS.index).astype("int8").to_numpy(),
                "error": (r.status == "error").to_numpy(),
                "weight": r.sample_interval.to_numpy(),
            }
        )
    )


def read_df(path, endpoint: str, start=T0, end=END) -> tuple[pd.DataFrame, samples.Samples]:
    """`samples.read` of the store at `path`, key ids named."""
    with store_db.reader(path) as con:
        s = samples.read(con, endpoint, start, end)
        names = dict(con.execute("SELECT key_id, key FROM cache_keys").fetchall())
    assert s is not None
    df = pd.DataFrame(
        {
            "key": [names[k] for k in s.key],
            "t_us": s.t_us,
            "tier": s.tier,
            "error": s.error,
            "weight": s.weight,
        }
    )
    return _canonical(df), s


def _canonical(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(["t_us", "key", "tier", "weight"]).reset_index(drop=True)


def _store(tmp_path, parts, sampling=None):
    path = tmp_path / "s.duckdb"
    with store_db.writer(path, END) as con:
        for w, frame in parts:
            kw = {"sampling": sampling} if sampling else {}
            ingest_write.replace_window(con, frame, "simulator", w, END, **kw)
    return path


@pytest.fixture(scope="module")
def sim():
    return simulate(HOURS)


def test_simulator_samples_are_the_raw_rows_of_keys_under_the_rate(sim, tmp_path):
    parts, df = sim
    path = _store(tmp_path, parts)
    for endpoint in ("title", "isbn", "author"):
        got, s = read_df(path, endpoint)
        want = truth(df, 0.1, endpoint)
        assert s.rate == 0.1 and len(want) > 50
        assert s.t_us.dtype == np.int64 and s.tier.dtype == np.int8 and s.key.dtype == np.int64
        pd.testing.assert_frame_equal(got, want, check_dtype=False)
        assert (s.start, s.end, s.missing_minutes) == (T0, END, 0)
    # AE-style thinned minutes keep their weights: not every weight is 1.
    assert (truth(df, 0.1).weight > 1).any()


def _slice(parts, w: Window) -> EventFrame:
    """The events of `parts` inside `w`."""
    table = pa.concat_tables([f.table for _, f in parts])
    ts = table["timestamp"]
    inside = pc.and_(
        pc.greater_equal(ts, pa.scalar(w.start, ts.type)), pc.less(ts, pa.scalar(w.end, ts.type))
    )
    return EventFrame(table.filter(inside))


def test_reingesting_windows_replaces_their_samples(sim, tmp_path):
    parts, df = sim
    # Half-hour windows (per-key minutes, never compacted here), so a
    # re-pulled window may straddle two of them as Analytics Engine's overlap does.
    halves = [(w, _slice(parts, w)) for w in Window(T0, END).split(MINUTE * 30)]
    path = _store(tmp_path, halves)
    with store_db.reader(path) as con:
        before = samples.status(con)
    with store_db.writer(path, END) as con:
        for w, frame in reversed(halves):
            ingest_write.replace_window(con, frame, "simulator", w, END)
        mid = Window(T0 + MINUTE * 15, T0 + MINUTE * 75)
        ingest_write.replace_window(con, _slice(parts, mid), "simulator", mid, END)
    with store_db.reader(path) as con:
        after = samples.status(con)
        per_minute = con.execute(
            "SELECT count(*), count(DISTINCT (source, minute)) FROM sample_minutes"
        ).fetchone()
    assert after == before and per_minute == (HOURS * 60, HOURS * 60)
    got, _ = read_df(path, "title")
    pd.testing.assert_frame_equal(got, truth(df, 0.1, "title"), check_dtype=False)


def test_an_imported_file_is_sampled_like_the_simulator(sim, tmp_path):
    parts, df = sim
    file = tmp_path / "events.parquet"
    pq.write_table(pa.concat_tables([f.table for _, f in parts]), file)
    cfg = config.with_db(config.load(None, env={}), str(tmp_path / "s.duckdb"))
    ingest_load.import_files(cfg, [file], END + timedelta(hours=1))
    got, s = read_df(cfg.store.path, "isbn")
    pd.testing.assert_frame_equal(got, truth(df, 0.1, "isbn"), check_dtype=False)
    first = df.timestamp.min().floor("min")
    assert s.start == first and s.end == df.timestamp.max().floor("min") + MINUTE
    # Imported again (same bytes): nothing added.
    ingest_load.import_files(cfg, [file], END + timedelta(hours=1))
    assert len(read_df(cfg.store.path, "isbn")[0]) == len(got)


def test_configured_rate_reaches_the_store(sim, tmp_path):
    parts, df = sim
    toml = tmp_path / "c.toml"
    toml.write_text("[ttl]\nsample_rate = 0.25\n")
    cfg = config.with_db(config.load(toml, env={}), str(tmp_path / "s.duckdb"))
    file = tmp_path / "events.parquet"
    pq.write_table(pa.concat_tables([f.table for _, f in parts]), file)
    ingest_load.import_files(cfg, [file], END + timedelta(hours=1))
    got, s = read_df(cfg.store.path, "author")
    assert s.rate == 0.25
    pd.testing.assert_frame_equal(got, truth(df, 0.25, "author"), check_dtype=False)


def _budget_truth(df: pd.DataFrame, rate: float, allowed: float) -> float:
    """The documented rule, computed in pandas: keys under `rate` by hash,
    the longest prefix whose rows fit `allowed`, the next key's hash."""
    r = df[df.kind == "request"]
    h = r.key.map(keyhash.key_hash)
    counts = h[h < rate].value_counts().sort_index()
    if counts.sum() <= allowed:
        return rate
    fits = counts.cumsum() <= allowed
    return float(counts.index[int(fits.sum())])


def test_the_budget_lowers_the_rate_to_the_first_key_left_out(sim, tmp_path):
    parts, df = sim
    budget = 4_000.0  # rows a day: 167 an hour, fewer than an hour's ~190 at R = 0.1
    path = _store(tmp_path, parts, Sampling(0.1, budget))
    with store_db.reader(path) as con:
        rates = con.execute(
            "SELECT date_trunc('hour', minute) h, min(rate), max(rate) FROM sample_minutes "
            "GROUP BY h ORDER BY h"
        ).fetchall()
        rows = con.execute(
            "SELECT date_trunc('hour', t) h, count(*) FROM samples GROUP BY h ORDER BY h"
        ).fetchall()
    for (w, _), (hour, lo, hi), (_, n) in zip(parts, rates, rows):
        window_df = df[(df.timestamp >= w.start) & (df.timestamp < w.end)]
        want = _budget_truth(window_df, 0.1, budget / 24)
        assert hour == w.start and lo == hi == want and want < 0.1
        assert n <= budget / 24
        assert n == len(truth(window_df, want))
    # A span over windows of different rates is a sample at the smallest.
    got, s = read_df(path, "title")
    assert s.rate == min(r[1] for r in rates)
    pd.testing.assert_frame_equal(got, truth(df, s.rate, "title"), check_dtype=False)


@settings(max_examples=200, deadline=None)
@given(
    counts=st.lists(st.integers(1, 50), min_size=0, max_size=40),
    rate=st.floats(0.01, 1.0),
    allowed=st.floats(0, 600),
    seed=st.integers(0, 2**32 - 1),
)
def test_budget_rate_keeps_a_maximal_prefix_of_keys_within_the_budget(counts, rate, allowed, seed):
    rng = np.random.default_rng(seed)
    hashes = np.sort(rng.choice(2**20, size=len(counts), replace=False) / 2**20) * rate
    rows = np.array(counts, dtype=np.int64)
    order = rng.permutation(len(counts))  # the answer does not depend on the order
    cut = rollups.budget_rate(hashes[order], rows[order], rate, allowed)
    kept = hashes < cut
    assert cut <= rate
    assert rows[kept].sum() <= allowed or cut == rate
    if cut < rate:  # lowered: the next key would not have fit
        assert rows[kept].sum() <= allowed < rows[kept].sum() + rows[~kept][0]
        assert cut == hashes[~kept][0]
    else:
        assert rows.sum() <= allowed


def test_a_span_with_two_rates_drops_the_keys_above_the_smaller(sim, tmp_path):
    parts, df = sim
    path = tmp_path / "s.duckdb"
    with store_db.writer(path, END) as con:
        for (w, frame), r in zip(parts, (0.1, 0.04, 0.1)):
            ingest_write.replace_window(con, frame, "simulator", w, END, sampling=Sampling(r, 1e9))
    got, s = read_df(path, "title")
    assert s.rate == 0.04
    pd.testing.assert_frame_equal(got, truth(df, 0.04, "title"), check_dtype=False)
    first, _ = read_df(path, "title", T0, T0 + timedelta(hours=1))
    in_first = df[df.timestamp < T0 + timedelta(hours=1)]
    pd.testing.assert_frame_equal(first, truth(in_first, 0.1, "title"), check_dtype=False)
    with store_db.reader(path) as con:
        status = samples.status(con)
    assert (status.rate, status.max_rate, status.minutes) == (0.04, 0.1, HOURS * 60)


def test_spans_without_samples_say_so(sim, tmp_path):
    parts, _ = sim
    path = _store(tmp_path, parts[1:])  # the first hour was never ingested
    got, s = read_df(path, "title")
    assert (s.start, s.end, s.missing_minutes) == (T0 + timedelta(hours=1), END, 0)
    with store_db.reader(path) as con:
        assert samples.read(con, "title", T0 - DAY, T0) is None
        st_ = samples.status(con, T0 - DAY, T0)
        assert not st_.usable and st_.reason == samples.NO_SAMPLES and st_.rows == 0
        assert samples.no_key_hash(con) == ()


def test_the_analyst_view_names_keys_hashes_and_rates(sim, tmp_path):
    parts, df = sim
    path = _store(tmp_path, parts)
    with store_db.reader(path) as con:
        view = con.execute(
            "SELECT key, key_hash, tier, status, sample_interval, sample_rate, timestamp "
            "FROM v1.samples"
        ).df()
    want = df[(df.kind == "request") & (df.key.map(keyhash.key_hash) < 0.1)]
    assert len(view) == len(want) and (view.sample_rate == 0.1).all()
    assert (view.key.map(keyhash.key_hash) == view.key_hash).all()
    assert view.sample_interval.sum() == pytest.approx(want.sample_interval.sum(), rel=1e-12)
    assert (view.status == "error").sum() == (want.status == "error").sum()


def test_dropping_a_source_drops_its_samples(sim, tmp_path):
    parts, _ = sim
    path = _store(tmp_path, parts)
    with store_db.writer(path, END) as con:
        ingest_write.drop_source(con, "simulator")
    with store_db.reader(path) as con:
        assert samples.status(con) == replace(samples.status(con), rate=None, minutes=0, rows=0)
        assert con.execute("SELECT count(*) FROM samples").fetchone()[0] == 0
        assert samples.read(con, "title", T0, END) is None


def test_the_live_simulator_samples_at_the_configured_rate(tmp_path):
    cfg = config.with_db(config.load(None, env={}), str(tmp_path / "s.duckdb"))
    small = replace(cfg.simulator, requests_per_hour=6000, catalog_keys=3000)
    cfg = replace(cfg, simulator=small, ttl=replace(cfg.ttl, sample_rate=0.3))
    ingest_load.simulate_until(cfg, END)
    # The runner's first hour, generated again from the same seed: the truth.
    df = to_pandas(Simulator(small).generate(Window(END - timedelta(hours=1), END)))
    got, s = read_df(cfg.store.path, "title", END - timedelta(hours=1), END)
    assert s.rate == 0.3
    pd.testing.assert_frame_equal(got, truth(df, 0.3, "title"), check_dtype=False)
