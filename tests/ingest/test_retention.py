"""Retention: compaction keeps totals and quantiles exact, and closes the compacted past."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from cachemon import config, settings
from cachemon.cli import main as cli_main
from cachemon.clock import Window
from cachemon.errors import ConfigError, StoreError
from cachemon.ingest import retention
from cachemon.ingest import write as ingest_write
from cachemon.metrics import window as metrics_window
from cachemon.store import db as store_db
from cachemon.store import horizons, queries
from tests.helpers import load, simulate, small_sim

UTC = UTC
START = datetime(2026, 11, 19, 0, 0, tzinfo=UTC)
HOURS = 40  # the 19th whole, 16 hours of the 20th
NOW = datetime(2026, 11, 21, 6, 0, tzinfo=UTC)
KEEP = settings.RetentionConfig(minute_days=1, hour_days=1)  # horizons: the 20th, 00:00
HORIZON = datetime(2026, 11, 20, tzinfo=UTC)

VIEWS = {
    "requests_day": "SELECT * FROM v1.requests_day ORDER BY ALL",
    "latency_daily": "SELECT * FROM v1.latency_daily(TIMESTAMPTZ '2026-11-01', TIMESTAMPTZ '2026-12-01')",
    "histogram_day": "SELECT * FROM v1.latency_histogram_day ORDER BY ALL",
    "gauges_hour": "SELECT * FROM v1.gauges_hour ORDER BY ALL",
    "keys_day": "SELECT * FROM v1.keys_day ORDER BY ALL",
    "requests_hour_20th": "SELECT * FROM v1.requests_hour WHERE hour >= TIMESTAMPTZ '2026-11-20' ORDER BY ALL",
}


def _views(path) -> dict[str, pd.DataFrame]:
    with store_db.reader(path) as con:
        return {name: con.execute(sql).df() for name, sql in VIEWS.items()}


@pytest.fixture(scope="module")
def compacted(tmp_path_factory):
    path = tmp_path_factory.mktemp("retention") / "cachemon.duckdb"
    parts, truth = simulate(HOURS, START)
    load(path, parts, now=START + timedelta(hours=HOURS))
    before = _views(path)
    with store_db.writer(path, NOW) as con:
        counts = {
            t: con.execute(
                f"SELECT count(*) FILTER (WHERE {c} >= $h) FROM {t}", {"h": HORIZON}
            ).fetchall()[0][0]
            for t, c in (
                ("rollup_minute", "minute"),
                ("latency_minute", "minute"),
                ("rollup_hour", "hour"),
            )
        }
        result = retention.apply(con, NOW, KEEP)
    return path, truth, before, counts, result


def test_compaction_keeps_daily_totals_quantiles_gauges_and_keys_exact(compacted):
    path, truth, before, _, _ = compacted
    after = _views(path)
    for name in VIEWS:
        pd.testing.assert_frame_equal(
            after[name], before[name], check_exact=False, rtol=1e-12, obj=name
        )
    r = truth[truth.kind == "request"]
    day19 = after["requests_day"][after["requests_day"].day == START]
    assert day19.requests.sum() == pytest.approx(
        r[r.timestamp < HORIZON].sample_interval.sum(), rel=1e-12
    )


def test_compaction_removes_only_rows_before_the_horizons(compacted):
    path, _, _, counts, result = compacted
    assert result.horizons == horizons.Horizons(HORIZON, HORIZON)
    with store_db.reader(path) as con:
        lows = con.execute(
            "SELECT (SELECT min(minute) FROM rollup_minute), (SELECT min(minute) FROM latency_minute), "
            "(SELECT min(hour) FROM rollup_hour), (SELECT min(minute) FROM key_minute), "
            "(SELECT min(day) FROM rollup_day), (SELECT max(day) FROM rollup_day)"
        ).fetchall()[0]
        left = {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in counts}
        span = queries.data_span(con)
    assert lows == (HORIZON, HORIZON, HORIZON, HORIZON, START, START)
    assert left == counts  # the 20th's rows all stay
    assert result.minute_rows > 0 and result.hour_rows > 0
    # Per-key minutes of the 19th went into hours, then (hour_days) into days.
    assert result.key_minute_rows > 0
    assert span == (
        START,
        START + timedelta(hours=HOURS),
    )  # the data still starts on the 19th (as a day)


def test_reads_needing_compacted_minutes_are_refused_later_ones_unchanged(compacted, tmp_path):
    path, truth, _, _, _ = compacted
    with store_db.reader(path) as con:
        with pytest.raises(
            StoreError, match=r"minute data before 2026-11-20T00:00:00Z has been compacted"
        ):
            metrics_window.compute(
                con, Window(HORIZON - timedelta(hours=2), HORIZON + timedelta(hours=1)), "custom"
            )
        m = metrics_window.compute(
            con, Window(HORIZON + timedelta(minutes=7), HORIZON + timedelta(hours=5)), "custom"
        )
    r = truth[
        (truth.kind == "request")
        & (truth.timestamp >= HORIZON + timedelta(minutes=7))
        & (truth.timestamp < HORIZON + timedelta(hours=5))
    ]
    assert m.volume.total == pytest.approx(r.sample_interval.sum(), rel=1e-12)


def test_writes_into_the_compacted_past_are_refused_and_lose_nothing(compacted):
    path, _, before, _, _ = compacted
    w = Window(HORIZON - timedelta(hours=1), HORIZON)
    frame = small_sim().generate(w)
    with store_db.writer(path, NOW) as con:
        with pytest.raises(
            StoreError, match="cannot write data from 2026-11-19T23:00:00Z.*retention"
        ):
            ingest_write.replace_window(con, frame, "simulator", w, NOW)
    after = _views(path)
    pd.testing.assert_frame_equal(after["requests_day"], before["requests_day"])


def test_apply_again_is_idempotent_and_horizons_never_move_back(compacted):
    path, _, before, _, _ = compacted
    with store_db.writer(path, NOW) as con:
        again = retention.apply(con, NOW, KEEP)
        longer = retention.apply(con, NOW, settings.RetentionConfig(minute_days=30, hour_days=60))
    assert (again.minute_rows, again.hour_rows) == (0, 0)
    assert longer.horizons == horizons.Horizons(HORIZON, HORIZON)
    after = _views(path)
    for name in VIEWS:
        pd.testing.assert_frame_equal(
            after[name], before[name], check_exact=False, rtol=1e-12, obj=name
        )


def test_retention_config_is_validated(tmp_path):
    for text, message in (
        ("minute_days = 0", "minute_days = 0 must be at least 1"),
        ("minute_days = 10\nhour_days = 5", "hour_days = 5 must be at least minute_days"),
        ('minute_days = "35"', "minute_days must be int"),
    ):
        p = tmp_path / "bad.toml"
        p.write_text(f"[retention]\n{text}\n")
        with pytest.raises(ConfigError, match=message):
            config.load(p, env={})
    assert config.load(None, env={}).retention == settings.RetentionConfig(35, 400)


def test_compact_command_applies_the_configured_retention(tmp_path, capsys):
    db = tmp_path / "s.duckdb"
    parts, truth = simulate(30, START)
    load(db, parts, now=START + timedelta(hours=30))
    cfg = tmp_path / "c.toml"
    cfg.write_text("[retention]\nminute_days = 2\nhour_days = 3\n")
    assert (
        cli_main.main(
            ["--db", str(db), "--config", str(cfg), "compact", "--at", "2026-11-22T01:00:00Z"]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "(kept from 2026-11-20)" in err and "(kept from 2026-11-19)" in err
    with store_db.reader(db) as con:
        assert horizons.horizons(con) == horizons.Horizons(HORIZON, START)
        total = con.execute("SELECT sum(requests) FROM v1.requests_day").fetchall()[0][0]
    assert total == pytest.approx(truth[truth.kind == "request"].sample_interval.sum(), rel=1e-12)
    assert np.isfinite(total)


def test_dropping_a_source_removes_its_compacted_rows_too(tmp_path):
    db = tmp_path / "s.duckdb"
    parts, _ = simulate(30, START)
    load(db, parts, now=START + timedelta(hours=30))
    with store_db.writer(db, NOW) as con:
        retention.apply(con, NOW, KEEP)
        assert con.execute("SELECT count(*) FROM rollup_day").fetchall()[0][0] > 0
        ingest_write.drop_source(con, "simulator")
        left = {
            t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0]
            for t in ("rollup_day", "latency_day", "gauge_hour", "rollup_hour", "key_day")
        }
    assert left == dict.fromkeys(left, 0)
