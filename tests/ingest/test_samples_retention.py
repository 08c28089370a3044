"""SHARDS samples: retention deletes them after `[retention] sample_days`,
and the `[ttl]` and `[retention]` settings refuse bad values by name."""

from __future__ import annotations

import pytest

from cachemon import config, settings
from cachemon.clock import DAY
from cachemon.ingest import retention
from cachemon.ingest import write as ingest_write
from cachemon.store import db as store_db
from cachemon.store import samples
from tests.helpers import T0, config_error, simulate

START = T0.replace(hour=0)  # 2026-11-19 00:00: two days of 3 hours each
NOW = START + 4 * DAY


@pytest.fixture
def two_days(tmp_path):
    path = tmp_path / "s.duckdb"
    p1, _ = simulate(3, START)
    p2, _ = simulate(3, START + DAY)
    with store_db.writer(path, NOW) as con:
        for w, frame in p1 + p2:
            ingest_write.replace_window(con, frame, "simulator", w, NOW)
    return path


def _counts(con) -> tuple[int, int, int]:
    return tuple(
        con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
        for t in ("samples", "sample_minutes", "sample_keys")
    )


def test_retention_deletes_samples_older_than_sample_days(two_days):
    path = two_days
    with store_db.reader(path) as con:
        day2 = con.execute(
            "SELECT count(*), count(DISTINCT key_id) FROM samples WHERE t >= $d",
            {"d": START + DAY},
        ).fetchone()
        total = _counts(con)
    keep = settings.RetentionConfig(sample_days=3)  # NOW's day minus 3: the 20th stays
    with store_db.writer(path, NOW) as con:
        result = retention.apply(con, NOW, keep)
        left = _counts(con)
        first = samples.status(con).start
        rollups = con.execute(
            "SELECT count(*) FROM rollup_hour WHERE hour < $d", {"d": START + DAY}
        )
        assert rollups.fetchone()[0] > 0  # the rollups are another rule's
    assert result.sample_rows == total[0] - day2[0] > 0
    assert left == (day2[0], 3 * 60, day2[1]) and first == START + DAY
    # The default keeps 37 days: nothing of these goes.
    with store_db.writer(path, NOW) as con:
        assert retention.apply(con, NOW, settings.RetentionConfig()).sample_rows == 0
        assert _counts(con) == left


@pytest.mark.parametrize(
    "text, where",
    [
        ("[ttl]\nsample_rate = 0\n", "[ttl] sample_rate = 0.0 must be in (0, 1]"),
        ("[ttl]\nsample_rate = 1.5\n", "[ttl] sample_rate = 1.5 must be in (0, 1]"),
        ("[ttl]\nsample_rate = -0.1\n", "[ttl] sample_rate = -0.1 must be in (0, 1]"),
        ('[ttl]\nsample_rate = "10%"\n', "[ttl] sample_rate must be float"),
        ("[ttl]\nsample_rate = true\n", "[ttl] sample_rate must be float"),
        ("[ttl]\nsample_budget = 0\n", "[ttl] sample_budget = 0 must be at least 1"),
        ("[ttl]\nsample_budget = 1.5\n", "[ttl] sample_budget must be int"),
        ("[ttl]\nsample_rates = 0.1\n", "[ttl] has unknown key 'sample_rates'"),
        ("[retention]\nsample_days = 0\n", "[retention] sample_days = 0 must be at least 1"),
    ],
)
def test_bad_sample_settings_are_config_errors_naming_the_key(tmp_path, text, where):
    msg, path = config_error(tmp_path, text)
    assert where in msg and str(path) in msg, msg


def test_good_sample_settings_load(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[ttl]\nsample_rate = 1\nsample_budget = 5000\n[retention]\nsample_days = 60\n")
    cfg = config.load(p, env={})
    assert (cfg.ttl.sample_rate, cfg.ttl.sample_budget, cfg.retention.sample_days) == (
        1.0,
        5000,
        60,
    )
