"""Input that could poison the numbers: absurd but finite values, epoch
timestamps in the wrong unit or overflowing, events from the future, nan and
inf in the configuration, an older store already holding such rows, and
absurd files (millions of repeated rows, NUL bytes, a 2 MB line). Each is
refused naming the file, line and field with nothing stored changed, or (for
an older store) shown as strict JSON and a non-negative, stale data age."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachemon import config
from cachemon import settings as cachemon_settings
from cachemon.alerts import evaluate as alerts_evaluate
from cachemon.clock import Window, iso
from cachemon.ingest import load as ingest_load
from cachemon.metrics import window as metrics_window
from cachemon.sources import files
from cachemon.store import db as store_db
from cachemon.store import queries
from tests.helpers import ROOT, T0, config_error, load, simulate
from tests.helpers.eventfiles import NOW, START
from tests.helpers.eventfiles import refused as _refused
from tests.helpers.eventfiles import row as _row
from tests.helpers.eventfiles import seeded as _seeded
from tests.helpers.eventfiles import stored as _stored
from tests.helpers.eventfiles import write as _write
from tests.helpers.servers import free_port

ABSURD = [
    ("latency_ms", 1e308, "beyond the limit"),
    ("bytes", 1e308, "beyond the limit"),
    ("sample_interval", 1e308, "beyond the limit"),
    ("latency_ms", 4e6, "beyond the limit"),
    ("bytes", 6e12, "beyond the limit"),
    ("sample_interval", 0.5, "at least 1"),
]
LINE = {".ndjson": "line 3", ".csv": "line 4", ".parquet": "row 3"}


@pytest.mark.parametrize("suffix", [".ndjson", ".csv", ".parquet"])
def test_absurd_finite_values_are_refused_with_file_line_and_field(tmp_path, suffix, results):
    cfg = _seeded(tmp_path)
    for field, value, why in ABSURD:
        rows = [_row(i) for i in range(20, 25)]
        rows[2][field] = value
        _refused(cfg, _write(tmp_path / f"bad{suffix}", rows), f"{LINE[suffix]}: {field} ", why)
    # The limits are inclusive of what real traffic sends: a 59-minute request, a 4 TB object.
    ok = [_row(30, latency_ms=3_540_000.0, bytes=4e12, sample_interval=1e6)]
    ingest_load.import_files(cfg, [_write(tmp_path / f"edge{suffix}", ok)], NOW)
    assert _stored(cfg) == (2, 4.0 + 1e6)
    results(
        f"absurd finite values ({suffix})",
        "1e308 / beyond-limit latency_ms, bytes, sample_interval",
        len(ABSURD),
        "refused with file, line, field; store unchanged",
    )


EPOCHS = [  # (integer timestamp, what the message must say)
    (int(START.timestamp()), "epoch seconds"),
    (int(START.timestamp()) * 1_000_000, "epoch microseconds"),
    (int(START.timestamp()) * 1_000_000_000, "epoch nanoseconds"),
    (2**63 - 1, "not epoch milliseconds"),  # * 1000 wraps int64 to a plausible-looking date
    (-(2**63), "not epoch milliseconds"),
    (9_223_372_036_854_775, "not epoch milliseconds"),  # * 1000 just overflows
]


def test_integer_timestamps_are_milliseconds_and_nothing_wraps(tmp_path, results):
    cfg = _seeded(tmp_path)
    for value, why in EPOCHS:
        rows = [_row(i, timestamp=int(START.timestamp()) * 1000 + i) for i in range(20, 25)]
        rows[2]["timestamp"] = value
        _refused(cfg, _write(tmp_path / "bad.ndjson", rows), "line 3: timestamp ", why)
    # Timestamp-typed Parquet columns are range-checked in their own unit, before any conversion.
    for unit, value in (("ms", 10**17), ("ms", -(10**17)), ("us", 2**62)):  # x1000 would overflow
        table = pa.Table.from_pylist([_row(i) for i in range(3)]).set_column(
            0,
            "timestamp",
            pa.array(
                [int(START.timestamp()) * {"ms": 10**3, "us": 10**6}[unit]] * 2 + [value],
                pa.timestamp(unit, tz="UTC"),
            ),
        )
        pq.write_table(table, tmp_path / "typed.parquet")
        _refused(
            cfg,
            tmp_path / "typed.parquet",
            "row 3: timestamp ",
            f"{value} ({unit} since 1970) is outside 2000-2199",
        )
    ms = int(START.timestamp()) * 1000 + 1234
    ingest_load.import_files(cfg, [_write(tmp_path / "ms.ndjson", [_row(40, timestamp=ms)])], NOW)
    with store_db.reader(cfg.store.path) as con:
        first = con.execute(
            "SELECT min(first_seen) FROM key_minute WHERE source <> "
            "(SELECT source FROM imports WHERE file = 'seed.ndjson')"
        ).fetchone()[0]
    assert first == START + timedelta(milliseconds=1234)
    results(
        "epoch timestamps",
        "seconds, µs, ns, int64 extremes",
        len(EPOCHS),
        "refused with the unit named; milliseconds stored exactly",
    )


def test_events_from_the_future_are_refused_beyond_the_configured_skew(tmp_path, results):
    cfg = _seeded(tmp_path)
    cases = [iso(datetime(2150, 1, 1, tzinfo=UTC)), iso(NOW + timedelta(minutes=6))]
    for ts in cases:
        rows = [_row(i) for i in range(20, 25)]
        rows[2]["timestamp"] = ts
        _refused(
            cfg,
            _write(tmp_path / "bad.ndjson", rows),
            "line 3: timestamp ",
            "in the future",
            "clock_skew",
        )
    # Within the default 5 minutes: a clock slightly ahead is accepted...
    ingest_load.import_files(
        cfg,
        [_write(tmp_path / "ahead.ndjson", [_row(50, timestamp=iso(NOW + timedelta(minutes=4)))])],
        NOW,
    )
    assert _stored(cfg) == (2, 5.0)
    # ...and the tolerance is configurable.
    (tmp_path / "strict").mkdir()
    strict = _seeded(tmp_path / "strict", '[ingest]\nclock_skew = "0s"\n')
    _refused(
        strict,
        _write(
            tmp_path / "strict" / "bad.ndjson",
            [_row(60, timestamp=iso(NOW + timedelta(seconds=1)))],
        ),
        "line 1: timestamp ",
        "in the future",
    )
    assert (
        "[ingest] clock_skew must be between"
        in config_error(tmp_path, '[ingest]\nclock_skew = "2d"\n')[0]
    )
    results(
        "events from the future",
        "2150 and now+6m (skew 5m), now+1s (skew 0s)",
        len(cases) + 1,
        "refused naming [ingest] clock_skew; store unchanged",
    )


def _no_constant(name):
    raise AssertionError(f"non-strict JSON: {name}")


def _poisoned_store(db):
    """Rows written before the bounds existed (inserted directly): a
    request count of 1e308, inf bytes, nan latency, and one minute in 2150.
    Returns where the real data ends."""
    load(db, simulate(3)[0])
    end = T0 + timedelta(hours=3)
    with store_db.writer(db, end) as con:
        con.execute(
            "INSERT INTO rollup_minute VALUES ('simulator', $m, 'edge', 'title', '', '', 1e308, 0, "
            "'inf'::DOUBLE, 'nan'::DOUBLE, 'nan'::DOUBLE, 'inf'::DOUBLE, 1)",
            {"m": end - timedelta(minutes=5)},
        )
        con.execute(
            "INSERT INTO rollup_minute VALUES ('simulator', $m, 'edge', 'title', '', '', 1, 0, 0, 1, 1, 1, 1)",
            {"m": datetime(2150, 1, 1, tzinfo=UTC)},
        )
        con.execute(
            "INSERT INTO latency_minute VALUES ('simulator', $m, 'edge', 'title', '', '', 3, 'inf'::DOUBLE)",
            {"m": end - timedelta(minutes=5)},
        )
    return end


def test_an_older_store_with_poisoned_rows_gives_strict_json_and_an_honest_data_age(
    tmp_path, results
):
    db = tmp_path / "old.duckdb"
    end = _poisoned_store(db)
    cfg = config.with_db(cachemon_settings.Config(), str(db))
    at = end + timedelta(days=1)  # a day after the data: it is stale, whatever 2150 says
    with store_db.reader(db) as con:
        m = metrics_window.compute(
            con, Window(at - timedelta(minutes=30), at), "30m", latest=True
        )  # minute rows
        data_until = queries.data_span(con, at)[1]
    out = metrics_window.to_json(m, cfg.metrics.stale_after)
    text = json.dumps(out, allow_nan=False)  # raises on nan/inf
    back = json.loads(text, parse_constant=_no_constant)
    assert data_until == end
    assert back["dataAgeSeconds"] == 24 * 3600 and back["stale"] is True
    assert back["dataUntil"] == iso(end)
    assert back["latency"]["avg"] is None and back["volume"]["response_bytes"] is None
    # The data_stale alert fires instead of going quiet.
    with store_db.writer(db, at) as con:
        ev = alerts_evaluate.check(con, cfg, at)
    stale = next(s for s in ev.states if s.rule == "data_stale")
    assert stale.value == pytest.approx(24 * 3600) and ev.data_until == end
    # The dashboard's number formatting never shows nan or inf.
    from pages.shared.common import fmt

    for v in (math.nan, math.inf, -math.inf, 1e308):
        for kind in ("num", "count", "usd"):
            shown = fmt(v, kind)
            assert "nan" not in shown.lower() and "inf" not in shown.lower(), shown
    results(
        "older store with poisoned rows",
        "1e308 requests, inf bytes, nan latency, a minute in 2150",
        4,
        "strict JSON (nulls); data age 86400 s, stale; data_stale alert evaluates the real age",
    )


def test_the_metrics_api_on_a_poisoned_store_is_strict_and_says_stale(tmp_path):
    """The running API (wall clock: days after the data) on the store above:
    /healthz and /metrics are strict JSON, the data age is positive and
    the data stale, whatever the row dated 2150 says."""
    db = tmp_path / "old.duckdb"
    end = _poisoned_store(db)
    port = free_port()
    env = dict(os.environ, CACHEMON_DB=str(db), PYTHONPATH=str(ROOT))
    env.pop("CACHEMON_API_TOKEN", None)
    env.pop("CACHEMON_CONFIG", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cachemon", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                health = httpx.get(base + "/healthz", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None, "server exited"
                time.sleep(0.1)
        h = json.loads(health.text, parse_constant=_no_constant)
        body = json.loads(
            httpx.get(base + "/metrics", params={"period": "15m"}).text, parse_constant=_no_constant
        )
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    age = (datetime.now(UTC) - end).total_seconds()
    # No runner ever wrote this store, so /healthz says degraded (not ok), and
    # the data's age is named among its problems.
    assert (
        h["status"] == "degraded"
        and h["dataUntil"] == iso(end)
        and abs(h["dataAgeSeconds"] - age) < 120
    ), h
    assert any("the newest data is" in p for p in h["problems"]), h
    assert body["stale"] is True and body["dataUntil"] == iso(end) and body["dataAgeSeconds"] > 0, (
        body
    )


NON_FINITE = ["nan", "+nan", "-nan", "inf", "+inf", "-inf"]
FLOAT_FIELDS = [  # (TOML with {v}, the dotted name the error must give)
    ("[alerts]\nmin_requests = {v}\n", "alerts.min_requests"),
    ("[costs]\nedge_target = {v}\n", "costs.edge_target"),
    ("[costs]\nvalue_bytes = {v}\n", "costs.value_bytes"),
    ("[simulator]\nzipf_alpha = {v}\n", "simulator.zipf_alpha"),
    ("[simulator]\nrequests_per_hour = {v}\n", "simulator.requests_per_hour"),
    ("[simulator]\norigin_error_rate = {v}\n", "simulator.origin_error_rate"),
    ("[pricing.kv_reads]\nprice = {v}\n", "pricing.kv_reads.price"),
    ("[pricing.kv_reads]\nincluded = {v}\n", "pricing.kv_reads.included"),
    (
        '[[alerts.rules]]\nname = "x"\nmetric = "p95_latency"\nthreshold = {v}\n',
        "alerts.rules[0].threshold",
    ),
    (
        '[[alerts.rules]]\nname = "x"\nmetric = "p95_latency"\nthreshold = 5\nmin_requests = {v}\n',
        "alerts.rules[0].min_requests",
    ),
    ('[[experiments]]\nname = "e"\nmde = {v}\n', "experiments[0].mde"),
    (
        '[[experiments]]\nname = "e"\n[[experiments.cohorts]]\nname = "a"\nweight = {v}\n',
        "experiments[0].cohorts[0].weight",
    ),
]
CONFIG_SEEN: set = set()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=st.sampled_from(FLOAT_FIELDS), value=st.sampled_from(NON_FINITE))
def test_nan_and_inf_in_the_config_are_refused_naming_file_and_field(tmp_path, case, value):
    text, name = case
    msg, path = config_error(tmp_path, text.format(v=value))
    assert msg.startswith(f"{path}: {name} = ") and "not a finite number" in msg, msg
    CONFIG_SEEN.add(name)


def test_config_outcomes(results):
    results(
        "nan/inf in the configuration",
        "nan, inf, -inf in thresholds, prices, min_requests, weights, simulator",
        len(CONFIG_SEEN),
        "refused naming the file and the dotted field",
    )
    assert len(CONFIG_SEEN) >= len(FLOAT_FIELDS) // 2


# --- absurd files: bounded memory, clear messages ---------------------------------

IMPORT_RSS = """
import resource, sys
from datetime import datetime
from cachemon import config, settings
from cachemon.errors import CachemonError
from cachemon.ingest import load as ingest_load
cfg = config.with_db(settings.Config(), sys.argv[1])
try:
    s = ingest_load.import_files(cfg, sys.argv[3:], datetime.fromisoformat(sys.argv[2]))
    print("imported", sum(r.events for r in s.imported))
except CachemonError as exc:
    print("refused", exc)
print("rss_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def _import_in_subprocess(db, *paths) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_RSS, str(db), NOW.isoformat(), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=True,
    ).stdout.splitlines()
    return out[0], int(out[1].split()[1])


def _repeated_parquet(path, rows: int):
    """`rows` identical events in a file of a few kB (run-length encoded)."""
    one = pa.Table.from_pylist([_row(1, timestamp=START + timedelta(seconds=5))])
    block = pa.concat_tables([one] * 100_000).combine_chunks()
    with pq.ParquetWriter(path, block.schema) as w:
        for _ in range(rows // len(block)):
            w.write_table(block, row_group_size=1_000_000)
    return path


def test_absurd_files_import_in_bounded_memory_or_are_refused_clearly(tmp_path, results):
    small, base = _import_in_subprocess(
        tmp_path / "a.duckdb", _write(tmp_path / "small.ndjson", [_row(1)])
    )
    assert small == "imported 1"
    big = _repeated_parquet(tmp_path / "repeated.parquet", 3_000_000)
    assert big.stat().st_size < 1 << 20
    outcome, rss = _import_in_subprocess(tmp_path / "b.duckdb", big)
    assert outcome == "imported 3000000"
    with store_db.reader(tmp_path / "b.duckdb") as con:
        assert con.execute("SELECT sum(requests), sum(bytes) FROM rollup_minute").fetchone() == (
            3e6,
            3e8,
        )
    # Reading the file whole took ~130 bytes per row (~400 MB here); batches stay near the baseline.
    assert rss - base < 200, (base, rss)
    nul = tmp_path / "nul.ndjson"
    nul.write_bytes(b"\0" * (8 << 20))
    outcome, rss_nul = _import_in_subprocess(tmp_path / "c.duckdb", nul)
    assert (
        outcome == f"refused {nul}: line 1 is longer than 1,048,576 bytes (the limit of one event)"
    )
    nul_csv = tmp_path / "nul.csv"
    nul_csv.write_bytes(b"timestamp,tier\n" + b"\0" * (4 << 20))
    outcome, rss_csv = _import_in_subprocess(tmp_path / "c.duckdb", nul_csv)
    assert outcome == (
        f"refused {nul_csv}: a line from line 1 on is longer than 1,048,576 bytes "
        "(the limit of one event; is this a text file?)"
    ), outcome
    long_line = tmp_path / "long.ndjson"
    long_line.write_text(
        json.dumps(_row(1)) + "\n" + json.dumps(_row(2, key="k" * (2 << 20))) + "\n"
    )
    outcome, rss_long = _import_in_subprocess(tmp_path / "c.duckdb", long_line)
    assert (
        outcome
        == f"refused {long_line}: line 2 is longer than 1,048,576 bytes (the limit of one event)"
    )
    assert max(rss_nul, rss_csv, rss_long) - base < 100, (base, rss_nul, rss_csv, rss_long)
    assert not (tmp_path / "c.duckdb").exists()
    results(
        "absurd files",
        "3 M repeated Parquet rows (<1 MB), 8 MB of NUL bytes, a 2 MB NDJSON line",
        4,
        f"imported in {rss - base} MB over baseline / refused clearly; peak RSS ≤ {max(rss, rss_nul, rss_long)} MB",
    )


def test_a_parquet_file_over_the_row_limit_is_refused_from_its_footer(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "MAX_ROWS", 250_000)
    cfg = _seeded(tmp_path)
    _refused(
        cfg,
        _repeated_parquet(tmp_path / "many.parquet", 300_000),
        "300,000 rows, more than the limit of 250,000",
    )
    # Text formats count as they stream.
    _refused(
        cfg,
        _write(tmp_path / "many.ndjson", [_row(i % 50) for i in range(250_001)]),
        "more than 250,000 rows",
    )
