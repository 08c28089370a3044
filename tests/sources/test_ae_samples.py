"""SHARDS samples from Analytics Engine (the loopback emulator): the
Worker's key hash in a double column, the rows under the rate pulled within
the budget, equal to pandas on the raw events; without the column, no
samples and a status that says so; a column that is not the key hash, refused."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pandas as pd
import pytest

from cachemon import config, settings
from cachemon.clock import Window
from cachemon.errors import ConfigError, SourceError
from cachemon.ingest import load as ingest_load
from cachemon.sources import ae_sql
from cachemon.sources.analytics_engine import Client, Credentials
from cachemon.store import db as store_db
from cachemon.store import samples
from cachemon.testing.ae_emulator import Emulator
from tests.helpers import T0, simulate
from tests.store.test_samples import END, HOURS, _budget_truth, read_df, truth

TOKEN = "ae-samples-token"
SECOND_US = 1_000_000  # Analytics Engine times are whole seconds (ClickHouse DateTime)


@pytest.fixture(scope="module")
def sim():
    return simulate(HOURS)


def _emulator(parts, key_hash=True) -> Emulator:
    emu = Emulator(TOKEN, key_hash=key_hash).start()
    for _, f in parts:
        emu.add(f)
    return emu


def _pull(emu, tmp_path, key_hash="double3", columns=None, **ttl):
    tmp_path.mkdir(exist_ok=True)
    cfg = config.with_db(settings.Config(), str(tmp_path / "s.duckdb"))
    cfg = replace(
        cfg,
        columns=columns or replace(cfg.columns, key_hash=key_hash),
        ttl=replace(cfg.ttl, **ttl),
    )
    client = Client(
        Credentials(emu.account, TOKEN, emu.base),
        replace(settings.AnalyticsEngineConfig(), timeout=timedelta(seconds=5)),
        sleep=lambda s: None,
    )
    ingest_load.pull(cfg, client, END, since=T0, until=END)
    return cfg


def test_pulled_samples_are_the_raw_rows_under_the_rate(sim, tmp_path):
    parts, df = sim
    emu = _emulator(parts)
    try:
        cfg = _pull(emu, tmp_path)
        sent = [sql for sql in emu.requests if "double3 <" in sql]
        once = read_df(cfg.store.path, "title")[0]
        _pull(emu, tmp_path)  # pulled again: replaced, not added
    finally:
        emu.stop()
    pd.testing.assert_frame_equal(read_df(cfg.store.path, "title")[0], once)
    for endpoint in ("title", "isbn", "author"):
        got, s = read_df(cfg.store.path, endpoint)
        assert s.rate == 0.1 and (s.start, s.end) == (T0, END)
        pd.testing.assert_frame_equal(got, truth(df, 0.1, endpoint, SECOND_US), check_dtype=False)
    # Two queries per window: the sizes, then the rows under the rate.
    assert len(sent) == 2 * HOURS and all(
        "kind" not in sql or "blob6 = 'request'" in sql for sql in sent
    )


def test_the_budget_chooses_the_rate_before_pulling_rows(sim, tmp_path):
    parts, df = sim
    emu = _emulator(parts)
    try:
        cfg = _pull(emu, tmp_path, sample_budget=4_000)
    finally:
        emu.stop()
    with store_db.reader(cfg.store.path) as con:
        rates = [
            r[0]
            for r in con.execute(
                "SELECT min(rate) FROM sample_minutes GROUP BY date_trunc('hour', minute) ORDER BY 1"
            ).fetchall()
        ]
    want = sorted(
        _budget_truth(df[(df.timestamp >= w.start) & (df.timestamp < w.end)], 0.1, 4_000 / 24)
        for w, _ in parts
    )
    assert rates == want and max(want) < 0.1
    got, s = read_df(cfg.store.path, "title")
    assert s.rate == min(want)
    pd.testing.assert_frame_equal(got, truth(df, s.rate, "title", SECOND_US), check_dtype=False)


def test_without_the_key_hash_column_no_samples_and_the_status_says_so(sim, tmp_path):
    parts, _ = sim
    emu = _emulator(parts)
    try:
        cfg = _pull(emu, tmp_path, key_hash="")
        sent = list(emu.requests)
    finally:
        emu.stop()
    assert not any("double3" in sql for sql in sent)
    with store_db.reader(cfg.store.path) as con:
        assert samples.read(con, "title", T0, END) is None
        st = samples.status(con, T0, END)
        assert con.execute("SELECT count(*) FROM samples").fetchone()[0] == 0
        assert samples.no_key_hash(con, T0, END) == ("analytics_engine",)
    assert st.reason == f"{samples.NO_KEY_HASH} (analytics_engine)" and not st.usable
    assert st.start == T0 and st.end == END and st.rate is None


def test_windows_where_the_worker_wrote_no_hash_have_no_samples(sim, tmp_path):
    parts, df = sim
    emu = _emulator(parts)
    try:
        # The first hour is from before the Worker wrote the hash: the double reads 0.
        emu.db.execute(
            "UPDATE CACHE_ANALYTICS SET double3 = 0 WHERE timestamp < $t",
            {"t": (T0 + timedelta(hours=1)).replace(tzinfo=None)},
        )
        cfg = _pull(emu, tmp_path)
    finally:
        emu.stop()
    later = T0 + timedelta(hours=1)
    with store_db.reader(cfg.store.path) as con:
        assert samples.read(con, "title", T0, END) is None
        assert samples.status(con, T0, END).reason == f"{samples.NO_KEY_HASH} (analytics_engine)"
        assert samples.status(con, later, END).usable
        rollup = con.execute("SELECT sum(requests) FROM rollup_minute").fetchone()[0]
    assert rollup == pytest.approx(df[df.kind == "request"].sample_interval.sum())
    got, s = read_df(cfg.store.path, "title", later, END)
    want = truth(df[df.timestamp >= later], 0.1, "title", SECOND_US)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)


def test_a_column_without_the_workers_hash_is_refused(sim, tmp_path):
    parts, _ = sim
    emu = _emulator(parts)
    try:
        # The bytes' double mapped as the hash: values of 1 and more are no hash.
        cfg = replace(settings.ColumnMapping(), bytes="double3", key_hash="double2")
        with pytest.raises(SourceError, match=r"key_hash = 'double2' holds values outside"):
            _pull(emu, tmp_path / "b", columns=cfg)
        # A Worker hashing otherwise (values in [0, 1), but not cachemon's).
        emu.db.execute("UPDATE CACHE_ANALYTICS SET double3 = double3 / 2")
        with pytest.raises(SourceError, match=r"does not hold cachemon's key hash: key"):
            _pull(emu, tmp_path / "c")
    finally:
        emu.stop()
    for name in ("b", "c"):
        with store_db.reader(tmp_path / name / "s.duckdb") as con:
            assert con.execute("SELECT count(*) FROM rollup_minute").fetchone()[0] == 0


def test_the_sample_query_selects_only_keys_under_the_rate():
    m = replace(settings.ColumnMapping(), key_hash="double4")
    w = Window(T0, END)
    sql = ae_sql.sample_rows("CACHE_ANALYTICS", m, w, 0.0625)
    assert "double4 < 0.0625" in sql and "blob6 = 'request'" in sql
    assert "toDateTime('2026-11-19 08:00:00')" in sql


@pytest.mark.parametrize(
    "value, message",
    [
        ("double1", "already the column of latency_ms"),
        ("blob1", "already the column of key"),
        ("double 3", "is not a column name"),
    ],
)
def test_a_bad_key_hash_column_is_a_config_error(tmp_path, value, message):
    p = tmp_path / "c.toml"
    p.write_text(f'[columns]\nkey_hash = "{value}"\n')
    with pytest.raises(ConfigError, match=message) as err:
        config.load(p, env={})
    assert "[columns] key_hash" in str(err.value)
