"""Per-key failed fills (issue 20 §2): the errors of requests answered by R2
or the origin, kept per key by every source, so KV writes from per-key rows
subtract those only (edge and KV errors write nothing either way)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cachemon import config, events
from cachemon import settings as cm_settings
from cachemon.clock import Window
from cachemon.costs.tiermix import TierMix, kv_writes_sql
from cachemon.ingest import load as ingest_load
from cachemon.sources.analytics_engine import Client, Credentials
from cachemon.store import db as store_db
from cachemon.store import schema
from cachemon.store.queries import KEY_ROWS, TIER_TOTALS, key_ranges, window_params
from cachemon.testing.ae_emulator import Emulator
from tests.helpers import load, simulate, to_pandas

START = datetime(2026, 11, 18, 22, tzinfo=UTC)
HOURS = 4  # across midnight
END = START + timedelta(hours=HOURS)
TOKEN = "fill-errors-token"


def _with_errors(frame: events.EventFrame, seed: int) -> events.EventFrame:
    """`frame` with about 3 % of its requests of every tier failed (edge
    and KV errors included, as a bad deploy makes them)."""
    df = frame.table.cast(events.SCHEMA).to_pandas()
    hit = (df.kind == "request") & (np.random.default_rng(seed).random(len(df)) < 0.03)
    df.loc[hit, "status"] = "error"
    return events.validate(pa.Table.from_pandas(df, preserve_index=False), "test")


@pytest.fixture(scope="module")
def failing():
    parts, _ = simulate(HOURS, start=START, step=timedelta(minutes=50))
    parts = [(w, _with_errors(f, i)) for i, (w, f) in enumerate(parts)]
    df = to_pandas(*[f for _, f in parts])
    df = df[df.kind == "request"]
    errors = df[df.status == "error"]
    assert set(errors.tier) == {"edge", "kv", "r2", "api"}  # every tier fails somewhere
    return parts, df


def _cfg(db):
    return config.with_db(cm_settings.Config(), str(db))


def _file(path, parts):
    f = path.parent / "events.parquet"
    pq.write_table(pa.concat_tables([f.table for _, f in parts]), f)
    ingest_load.import_files(_cfg(path), [f], END + timedelta(days=1))


def _ae(path, parts):
    with Emulator(TOKEN) as emu:
        for _, f in parts:
            emu.add(f)
        ae = replace(cm_settings.AnalyticsEngineConfig(), timeout=timedelta(seconds=5))
        client = Client(
            Credentials(emu.account, TOKEN, emu.base), ae, sleep=lambda s: None, jitter=lambda: 0.5
        )
        ingest_load.pull(_cfg(path), client, END, since=START, until=END)


BUILDERS = {"simulator": load, "file": _file, "analytics_engine": _ae}


@pytest.fixture(scope="module", params=list(BUILDERS))
def store(request, failing, tmp_path_factory):
    parts, df = failing
    path = tmp_path_factory.mktemp(request.param) / "s.duckdb"
    BUILDERS[request.param](path, parts)
    return path, df


def _fills_truth(df):
    fails = df[(df.status == "error") & df.tier.isin(["r2", "api"])]
    return fails.groupby("key").sample_interval.sum()


PER_KEY = {
    "key_minute": "SELECT k.key, sum(m.fill_errors) FROM key_minute m JOIN cache_keys k USING (key_id) GROUP BY 1",
    "key_day": "SELECT k.key, sum(d.fill_errors) FROM key_day d JOIN cache_keys k USING (key_id) GROUP BY 1",
    "keys_day view": "SELECT key, sum(fill_errors) FROM v1.keys_day GROUP BY 1",
}


def test_per_key_fill_errors_are_the_failed_fills(store):
    path, df = store
    want = _fills_truth(df)
    with store_db.reader(path) as con:
        for name, sql in PER_KEY.items():
            got = {k: v for k, v in con.execute(sql).fetchall() if v}
            assert got.keys() == set(want.index), name
            assert [got[k] for k in want.index] == pytest.approx(list(want), rel=1e-12), name
        # The hour summaries of the busiest keys carry them too.
        top = con.execute(
            "SELECT k.key, t.t, t.fill_errors FROM key_top t JOIN cache_keys k USING (key_id) "
            "WHERE t.part = 'hour'"
        ).fetchall()
    hourly = (
        df[(df.status == "error") & df.tier.isin(["r2", "api"])]
        .assign(hour=lambda d: d.timestamp.dt.floor("h"))
        .groupby(["key", "hour"])
        .sample_interval.sum()
    )
    assert top and all(v == pytest.approx(hourly.get((k, t), 0.0)) for k, t, v in top)


def test_kv_writes_from_per_key_rows_equal_the_window_rule(store):
    """Summed over keys, KV writes from per-key rows are the window's fills
    that succeeded: edge and KV errors no longer reduce them."""
    path, df = store
    window = Window(START + timedelta(minutes=17), END - timedelta(minutes=9))
    r = df[(df.timestamp >= window.start) & (df.timestamp < window.end)]
    fills = r[r.tier.isin(["r2", "api"])]
    truth = fills[fills.status != "error"].sample_interval.sum()
    per_key_sql = f"""
        SELECT sum({kv_writes_sql()}) FROM (
            SELECT key_id, sum(r2) AS r2, sum(api) AS api, sum(fill_errors) AS fill_errors
            FROM ({KEY_ROWS}) GROUP BY key_id)"""
    with store_db.reader(path) as con:
        per_key = con.execute(per_key_sql, key_ranges(window.start, window.end)).fetchall()[0][0]
        tiers = {
            t: (req, err)
            for t, req, err, *_ in con.execute(
                TIER_TOTALS, window_params(window) | {"endpoint": None}
            ).fetchall()
        }
    rule = TierMix(
        r2=tiers["r2"][0], api=tiers["api"][0], failed_fills=tiers["r2"][1] + tiers["api"][1]
    )
    assert per_key == pytest.approx(truth, rel=1e-12)
    assert float(rule.kv_writes) == pytest.approx(per_key, rel=1e-12)


# -- existing stores ---------------------------------------------------------------


def test_migration_9_backfills_fill_errors_and_the_days_of_pending_minutes(tmp_path, monkeypatch):
    path = tmp_path / "v8.duckdb"
    now = datetime(2026, 11, 19, 12, tzinfo=UTC)
    monkeypatch.setattr(schema, "SCHEMA_VERSION", 8)
    with store_db.writer(path, now):
        pass
    hour = datetime(2026, 11, 19, 9, tzinfo=UTC)
    with duckdb.connect(str(path)) as con:
        con.execute("INSERT INTO cache_keys VALUES (1, 'a', 'title'), (2, 'b', 'title')")
        # A compacted hour (summed into key_day, as schema 8 kept it) and
        # minutes of a later hour, not yet in key_day.
        con.execute(
            "INSERT INTO key_hour VALUES ('s', $h, 1, 5, 1, 2, 3, 9, $h, $h), "
            "('s', $h, 2, 1, 1, 1, 1, 1, $h, $h)",
            {"h": hour},
        )
        con.execute(
            "INSERT INTO key_day SELECT source, date_trunc('day', hour), key_id, edge, kv, r2, api, "
            "errors, first_seen, last_seen FROM key_hour"
        )
        con.execute(
            "INSERT INTO key_minute VALUES ('s', $m, 1, 0, 0, 4, 0, 1, $m, $m)",
            {"m": hour + timedelta(hours=1, minutes=3)},
        )
    monkeypatch.setattr(schema, "SCHEMA_VERSION", 9)
    with store_db.writer(path, now) as con:
        assert schema.schema_version(con) == 9
        fills = con.execute("SELECT key_id, fill_errors FROM key_hour ORDER BY 1").fetchall()
        day = con.execute(
            "SELECT key_id, r2, errors, fill_errors FROM key_day ORDER BY 1"
        ).fetchall()
        tops = con.execute(
            "SELECT t, key_id, requests FROM key_top WHERE part = 'hour' ORDER BY 1, 2"
        ).fetchall()
        view = con.execute("SELECT key, fill_errors FROM v1.keys_day ORDER BY 1").fetchall()
    # least(errors, r2 + api): errors beyond a key's fills were not fills.
    assert fills == [(1, 5.0), (2, 1.0)]
    assert day == [(1, 6.0, 10.0, 6.0), (2, 1.0, 1.0, 1.0)]
    assert (hour + timedelta(hours=1), 1, 4.0) in tops
    assert view == [("a", 6.0), ("b", 1.0)]
