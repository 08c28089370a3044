"""The Analytics Engine source against the loopback emulator (a real HTTP
server on 127.0.0.1): same numbers as a direct import, faults, late data,
resumed pulls, and no token anywhere it should not be."""

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from datetime import timedelta

import pyarrow as pa
import pytest

from cachemon import config, settings
from cachemon.clock import HOUR, Window, parse_instant
from cachemon.errors import SourceError
from cachemon.events import EventFrame
from cachemon.ingest import load as ingest_load
from cachemon.metrics import window as metrics_window
from cachemon.sources import ae_sql, analytics_engine
from cachemon.sources.analytics_engine import Client, Credentials
from cachemon.store import db as store_db
from cachemon.testing.ae_emulator import Emulator, Fault
from tests.helpers import ROOT, T0, load, simulate

TOKEN = "s3cr3t-token-value-42"
SPAN = Window(T0, T0 + timedelta(hours=3))


@pytest.fixture
def emulator():
    with Emulator(TOKEN) as emu:
        yield emu


def _client(emu, sleeps=None, **cfg):
    creds = Credentials(emu.account, TOKEN, emu.base)
    ae = replace(settings.AnalyticsEngineConfig(), timeout=timedelta(seconds=1), **cfg)
    return Client(
        creds,
        ae,
        sleep=(sleeps.append if sleeps is not None else lambda s: None),
        jitter=lambda: 0.5,
    )


def _cfg(db):
    return config.with_db(settings.Config(), str(db))


def _metrics(db, window=SPAN):
    with store_db.reader(db) as con:
        return metrics_window.compute(con, window, "x", top=10)


def test_pull_equals_direct_import(emulator, tmp_path):
    parts, df = simulate(3)
    for _, f in parts:
        emulator.add(f)
    direct, pulled = tmp_path / "direct.duckdb", tmp_path / "pulled.duckdb"
    load(direct, parts)
    summary = ingest_load.pull(
        _cfg(pulled), _client(emulator), T0 + 3 * HOUR, since=T0, until=T0 + 3 * HOUR
    )
    assert summary.windows == 3
    a, b = _metrics(direct), _metrics(pulled)
    assert b.volume.total == pytest.approx(a.volume.total)
    for tier in ("edge", "kv", "r2", "api"):
        assert b.volume.share(tier) == pytest.approx(a.volume.share(tier), rel=1e-12)
    # Sampling weights honoured: volume is the sum of weights, not of rows.
    req = df[df.kind == "request"]
    assert b.volume.total == pytest.approx(req.sample_interval.sum()) and b.volume.total > len(req)
    for q in ("p50", "p95", "p99"):
        assert getattr(b.latency, q) == pytest.approx(getattr(a.latency, q), rel=0.01)
    assert b.latency.avg == pytest.approx(a.latency.avg, rel=1e-9)
    assert [(k.key, k.requests) for k in b.top_keys] == [(k.key, k.requests) for k in a.top_keys]
    with store_db.reader(pulled) as con, store_db.reader(direct) as dcon:
        q = "SELECT name, sum(samples), sum(value_sum) FROM gauge_minute GROUP BY name ORDER BY name"
        got, want = con.execute(q).fetchall(), dcon.execute(q).fetchall()
    assert [r[:2] for r in got] == [r[:2] for r in want]
    assert [r[2] for r in got] == pytest.approx([r[2] for r in want])
    # Only rollups travelled, never raw request rows.
    assert all("GROUP BY" in sql or "!= 'request'" in sql for sql in emulator.requests)


def test_sql_uses_only_the_dialect_and_validated_names():
    m = settings.ColumnMapping()
    for build in (ae_sql.minute_rollups, ae_sql.latency_histogram, ae_sql.gauge_points):
        sql = build("CACHE_ANALYTICS", m, SPAN)
        assert (
            "CASE" not in sql
            and "PERCENTILE" not in sql
            and "JOIN" not in sql
            and "COUNT(*)" not in sql
        )
        assert "toDateTime('2026-11-19 08:00:00')" in sql and sql.endswith("FORMAT JSON")
    with pytest.raises(config.ConfigError):
        settings.ColumnMapping(key="blob1; DROP TABLE x")
    with pytest.raises(config.ConfigError):
        settings.AnalyticsEngineConfig(dataset="CACHE ANALYTICS")


def test_emulator_rejects_what_analytics_engine_rejects(emulator):
    c = _client(emulator)
    with pytest.raises(
        SourceError, match=r"HTTP 422\): Invalid query: unsupported SQL: CASE.*\nSQL: SELECT CASE"
    ):
        c.query("SELECT CASE WHEN 1 THEN 2 END FROM CACHE_ANALYTICS FORMAT JSON")
    for sql in (
        "DELETE FROM CACHE_ANALYTICS FORMAT JSON",
        "SELECT 1 FROM CACHE_ANALYTICS; DROP TABLE CACHE_ANALYTICS FORMAT JSON",
    ):
        with pytest.raises(SourceError, match="only one SELECT statement"):
            c.query(sql)


def test_retries_5xx_and_timeouts_then_succeeds(emulator):
    sleeps = []
    c = _client(emulator, sleeps)
    emulator.faults.extend([Fault(status=500), Fault(delay=1.5), Fault(status=503)])
    r = c.query("SELECT count() AS n FROM CACHE_ANALYTICS FORMAT JSON")
    assert r.data == ({"n": "0"},) and c.queries == 4
    assert sleeps == [0.5, 1.0, 2.0]  # exponential backoff (jitter fixed at its middle)


def test_gives_up_after_retries_and_writes_nothing(emulator, tmp_path):
    parts, _ = simulate(1)
    emulator.add(parts[0][1])
    db = tmp_path / "s.duckdb"
    emulator.faults.extend([Fault(status=500)] * 4)
    with pytest.raises(SourceError, match="HTTP 500 after 4 attempts"):
        ingest_load.pull(_cfg(db), _client(emulator), T0 + HOUR, since=T0, until=T0 + HOUR)
    with store_db.writer(db, T0, publish=False) as con:
        assert con.execute("SELECT count(*) FROM rollup_minute").fetchall() == [(0,)]


def test_429_honours_retry_after(emulator):
    sleeps = []
    emulator.faults.extend([Fault(status=429, retry_after=7), Fault(status=429, retry_after=2)])
    _client(emulator, sleeps).query("SELECT count() AS n FROM CACHE_ANALYTICS FORMAT JSON")
    assert sleeps == [7.0, 2.0]


@pytest.mark.parametrize("status", [401, 403])
def test_auth_errors_name_the_permission_and_do_not_retry(emulator, status):
    emulator.faults.append(Fault(status=status))
    c = _client(emulator)
    with pytest.raises(SourceError, match="Account Analytics Read") as err:
        c.query("SELECT count() AS n FROM CACHE_ANALYTICS FORMAT JSON")
    assert c.queries == 1 and TOKEN not in str(err.value)


def test_wrong_token_is_refused(emulator):
    creds = Credentials(emulator.account, "wrong", emulator.base)
    with pytest.raises(SourceError, match="HTTP 401"):
        Client(creds).query("SELECT count() AS n FROM CACHE_ANALYTICS FORMAT JSON")


def test_truncated_json_is_an_error_and_nothing_is_written(emulator, tmp_path):
    parts, _ = simulate(1)
    emulator.add(parts[0][1])
    emulator.faults.append(Fault(truncate=True))
    db = tmp_path / "s.duckdb"
    with pytest.raises(SourceError, match="malformed answer"):
        ingest_load.pull(_cfg(db), _client(emulator), T0 + HOUR, since=T0, until=T0 + HOUR)
    with store_db.writer(db, T0, publish=False) as con:
        assert con.execute("SELECT count(*) FROM watermarks").fetchall() == [(0,)]


def _gauges(*rows):
    return analytics_engine._table(
        analytics_engine.QueryResult((), tuple(rows), len(rows)), "gauges"
    )


def test_answer_values_in_every_form_json_may_carry():
    t = _gauges(
        {"timestamp": "2026-11-20 00:01:00", "name": "kv_queue", "value": "12"},
        {"timestamp": "2026-11-20T00:02:30Z", "name": 7, "value": 2.5},
        {"timestamp": "2026-11-20T01:02:03+01:00", "name": None, "value": 3},
    )
    assert [x.isoformat() for x in t["timestamp"].to_pylist()] == [
        "2026-11-20T00:01:00+00:00",
        "2026-11-20T00:02:30+00:00",
        "2026-11-20T00:02:03+00:00",
    ]
    assert t["name"].to_pylist() == ["kv_queue", "7", ""]
    assert t["value"].to_pylist() == [12.0, 2.5, 3.0]
    assert _gauges().num_rows == 0


@pytest.mark.parametrize(
    "row, column",
    [
        ({"timestamp": None, "name": "q", "value": 1}, "timestamp"),
        ({"timestamp": "yesterday", "name": "q", "value": 1}, "timestamp"),
        ({"timestamp": 1763596860, "name": "q", "value": 1}, "timestamp"),
        ({"timestamp": "2026-11-20 00:01:00", "name": "q", "value": "many"}, "value"),
        ({"timestamp": "2026-11-20 00:01:00", "name": "q", "value": True}, "value"),
        ({"timestamp": "2026-11-20 00:01:00", "name": "q"}, "value"),
    ],
)
def test_a_garbled_answer_column_is_named(row, column):
    with pytest.raises(SourceError, match=f"garbles column '{column}'.*nothing was written"):
        _gauges({"timestamp": "2026-11-20 00:00:00", "name": "q", "value": 1}, row)


def test_late_data_is_picked_up_by_the_overlap(emulator, tmp_path):
    parts, df = simulate(2)
    late_cut = T0 + 2 * HOUR - timedelta(minutes=5)
    import pyarrow.compute as pc

    from cachemon.events import EventFrame

    full = parts[0][1].table, parts[1][1].table
    import pyarrow as pa

    table = pa.concat_tables(full)
    ts = pa.scalar(late_cut, pa.timestamp("us", tz="UTC"))
    emulator.add(EventFrame(table.filter(pc.less(table["timestamp"], ts))))
    db = tmp_path / "s.duckdb"
    cfg = _cfg(db)
    ingest_load.pull(cfg, _client(emulator), T0 + 2 * HOUR, since=T0)
    emulator.add(EventFrame(table.filter(pc.greater_equal(table["timestamp"], ts))))  # arrives late
    ingest_load.pull(cfg, _client(emulator), T0 + 2 * HOUR)  # from the watermark minus 10 min
    req = df[df.kind == "request"]
    assert _metrics(db, Window(T0, T0 + 2 * HOUR)).volume.total == pytest.approx(
        req.sample_interval.sum()
    )


def test_token_never_in_logs_errors_or_reprs(emulator, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    c = _client(emulator)
    emulator.faults.extend(
        [Fault(status=500), Fault(status=429, retry_after=0), Fault(status=422, body="bad")]
    )
    with pytest.raises(SourceError) as err:
        c.query("SELECT count() AS n FROM CACHE_ANALYTICS FORMAT JSON")
    text = caplog.text + str(err.value) + repr(err.value) + repr(c) + repr(c.creds)
    assert "retry 1 of 3" in caplog.text and TOKEN not in text
    with pytest.raises(config.ConfigError, match="CF_API_TOKEN") as err:
        Credentials.from_env({"CF_ACCOUNT_ID": "a"})


def test_cli_pull_against_the_emulator_and_resume_after_kill(emulator, tmp_path):
    parts, df = simulate(12, step=timedelta(hours=6))
    for _, f in parts:
        emulator.add(f)
    db = tmp_path / "cli.duckdb"
    env = dict(
        os.environ,
        CACHEMON_DB=str(db),
        PYTHONPATH=str(ROOT),
        CF_ACCOUNT_ID=emulator.account,
        CF_API_TOKEN=TOKEN,
        CF_API_BASE=emulator.base,
    )
    env.pop("CACHEMON_CONFIG", None)
    args = [
        sys.executable,
        "-m",
        "cachemon",
        "pull",
        "--since",
        T0.isoformat(),
        "--until",
        (T0 + 12 * HOUR).isoformat(),
        "--quiet",
    ]
    p = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 60
    while len(emulator.requests) < 10 and time.time() < deadline:
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    p = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "pulled" in p.stderr and TOKEN not in p.stderr + p.stdout
    req = df[df.kind == "request"]
    m = _metrics(db, Window(T0, T0 + 12 * HOUR))
    assert m.volume.total == pytest.approx(req.sample_interval.sum())
    bad = subprocess.run(
        args, cwd=ROOT, env=dict(env, CF_API_TOKEN="nope"), capture_output=True, text=True
    )
    assert (
        bad.returncode == 2 and "Account Analytics Read" in bad.stderr and "nope" not in bad.stderr
    )
    none = subprocess.run(
        args,
        cwd=ROOT,
        env={k: v for k, v in env.items() if k != "CF_API_TOKEN"},
        capture_output=True,
        text=True,
    )
    assert none.returncode == 2 and "CF_API_TOKEN" in none.stderr


def test_connection_refused_is_retried_then_reported(tmp_path):
    with Emulator(TOKEN) as emu:
        base = emu.base
    c = Client(
        Credentials("test-account", TOKEN, base),
        replace(settings.AnalyticsEngineConfig(), retries=2),
        sleep=lambda s: None,
    )
    with pytest.raises(SourceError, match="could not connect .* after 3 attempts"):
        c.query("SELECT 1 FORMAT JSON")
    assert c.queries == 3  # every attempt made, none hung


def test_a_poisoned_answer_is_refused_and_nothing_is_written(emulator, tmp_path):
    """Rollups pulled from Analytics Engine meet the same bar as imported
    events: a negative count (here from a negative _sample_interval the
    Worker wrote) is refused with the column named, and nothing is stored."""
    parts, _ = simulate(1)
    table = parts[0][1].table
    si = table["sample_interval"].to_pylist()
    si[0] = -1000.0
    emulator.add(
        EventFrame(
            table.set_column(
                table.schema.get_field_index("sample_interval"),
                "sample_interval",
                pa.array(si, table.schema.field("sample_interval").type),
            )
        )
    )
    db = tmp_path / "s.duckdb"
    with pytest.raises(
        SourceError,
        match=r"\(minute\) has 1 row\(s\) with a value that is not a finite, "
        r"non-negative number in column 'requests'.*nothing was written",
    ):
        ingest_load.pull(_cfg(db), _client(emulator), T0 + HOUR, since=T0, until=T0 + HOUR)
    with store_db.writer(db, T0, publish=False) as con:
        assert con.execute("SELECT count(*) FROM watermarks").fetchall() == [(0,)]
        assert con.execute("SELECT count(*) FROM rollup_minute").fetchall() == [(0,)]


@pytest.mark.parametrize(
    "row, why",
    [
        (
            {"timestamp": "2150-01-01 00:00:00", "name": "q", "value": 1},
            "a time outside the pulled window",
        ),
        ({"timestamp": "2026-11-20 00:01:00", "name": "q", "value": "inf"}, "not a finite"),
        ({"timestamp": "2026-11-20 00:01:00", "name": "q", "value": "nan"}, "not a finite"),
    ],
)
def test_an_answer_row_from_the_future_or_not_finite_is_refused(row, why):
    table = _gauges({"timestamp": "2026-11-20 00:00:00", "name": "q", "value": 1}, row)
    window = Window(parse_instant("2026-11-20T00:00:00Z"), parse_instant("2026-11-20T01:00:00Z"))
    with pytest.raises(SourceError, match=f"{why}.*nothing was written"):
        analytics_engine._check_answer("gauges", table, window)
    analytics_engine._check_answer("gauges", table.slice(0, 1), window)  # the good row alone passes
