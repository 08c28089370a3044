"""The Parquet export answers the documented analyst questions on ClickHouse.

docs/analysts.md holds each example question twice: in DuckDB SQL on the `v1` views ("Example
questions") and in ClickHouse SQL on the exported files ("The export on ClickHouse", the
```sql clickhouse blocks). This test reads both from the docs, so neither can drift from what is
tested: it exports a store built from simulated traffic, runs each ClickHouse query through chDB
(ClickHouse in process) on the export and the DuckDB query of the same number on the store, and
compares the answers row by row (floats to a relative 1e-9; percentiles are the same bucket of
the same merged histogram, so equal). Every compared answer must have rows: two empty answers
prove nothing. Beyond the documented windows: the written-out table macros equal the macros on
random windows (hypothesis), two answers agree with pandas on the raw events, and every question
answers the same from a bucket of an S3-compatible server on loopback (moto), as the docs' R2
instructions say.
"""

from __future__ import annotations

import datetime as dt
import re
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pandas as pd
import pytest
from chdb import session as chdb_session
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from moto.server import ThreadedMotoServer

from cachemon import config
from cachemon.clock import DAY, HOUR, MINUTE, Window, floor_to
from cachemon.histogram import ALPHA
from cachemon.notify import outbox
from cachemon.sources.simulator import Simulator
from cachemon.store import db as store_db
from cachemon.store import export
from cachemon.store.queries import COLD_PER_DAY, HOT_PER_DAY
from cachemon.usecases import demo
from tests.helpers import ALWAYS_RULE, EXPERIMENT_TOML, ROOT, to_pandas, weighted_quantile
from tests.helpers.clickhouse import (
    CLICKHOUSE_SECTION,
    REL,
    ExportMissing,
    assert_same_answer,
    docs,
    located,
    marked,
    pinned,
    section,
)

DOC = ROOT / "docs" / "analysts.md"
# The store's clock: 12 hours after the simulator's weekly edge purge (Tuesday 14:00 UTC), so
# question 7 (keys knocked out of the edge by a purge 12 hours ago) has rows to compare.
NOW = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)
DAYS = 1.25  # traffic from Monday 20:00: the whole of "yesterday" (question 6) and the purge
# How each engine's query names the clock, and the pinned instant put in its place.
DUCKDB_CLOCK = {
    "now()": f"TIMESTAMPTZ '{NOW.isoformat()}'",
    "current_date": f"DATE '{NOW.date().isoformat()}'",
}
CLICKHOUSE_CLOCK = {"now('UTC')": f"toDateTime('{NOW:%Y-%m-%d %H:%M:%S}', 'UTC')"}
# The R2 example's placeholders, and the loopback S3 server's stand-ins for them.
R2_URL = "https://<ACCOUNT_ID>.r2.cloudflarestorage.com/"
R2_KEY, R2_SECRET = "<R2 access key id>", "<R2 secret access key>"
BUCKET, PREFIX = "analytics", "cachemon"


# ---------------------------------------------------------------- the queries, from the docs


SETUP, DUCKDB, CLICKHOUSE = docs(DOC)
PAIRS = sorted(set(DUCKDB) & set(CLICKHOUSE))
R2_EXAMPLES = marked(section(DOC.read_text(encoding="utf-8"), CLICKHOUSE_SECTION), "sql clickhouse")


def test_every_example_question_has_its_clickhouse_version_under_the_same_title():
    assert len(DUCKDB) >= 14 and sorted(CLICKHOUSE) == sorted(DUCKDB)
    for n in PAIRS:
        assert CLICKHOUSE[n][0] == DUCKDB[n][0], f"question {n}: the titles differ"


def test_the_clickhouse_queries_read_the_clock_in_utc():
    """`now()` and `today()` are the server's zone in ClickHouse: a day cut with them would
    silently move on a server outside UTC, so the queries name UTC (and the test can pin it)."""
    for title, sql in CLICKHOUSE.values():
        rest = sql.replace("now('UTC')", "")
        assert not re.search(r"\b(now|today|yesterday)\s*\(|current_date", rest, re.I), title


def test_the_key_classes_query_uses_cachemons_thresholds():
    """Question 10 writes out the key-class rule (cachemon.store.queries.key_class_sql)."""
    sql = CLICKHOUSE[10][1]
    found = re.search(
        r"requests_per_day > ([\d.]+), 'hot', requests_per_day < ([\d./ ]+), 'cold'", sql
    )
    assert found, "question 10: the key-class multiIf is not where the test looks for it"
    hot, cold = (_number(x) for x in found.groups())
    assert (hot, cold) == (HOT_PER_DAY, COLD_PER_DAY)


def _number(text: str) -> float:
    """A number of the SQL, or a quotient of two ("10 / 30"), as Python computes it."""
    parts = [float(p) for p in text.split("/")]
    return parts[0] / parts[1] if len(parts) == 2 else parts[0]


# ---------------------------------------------------------------- running them


def clickhouse(ch, sql: str, root: Path) -> pd.DataFrame:
    """A documented ClickHouse query's answer, on the export below `root`, at NOW."""
    return ch.query(located(pinned(sql, CLICKHOUSE_CLOCK), root), "DataFrame")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store of 30 hours of small simulated traffic up to NOW (cachemon's demo: alert
    history, an experiment's analyses, a cost report and the job log included), two
    notifications still in the outbox, and its Parquet export: (store, export root)."""
    tmp = tmp_path_factory.mktemp("clickhouse")
    cfg_file = tmp / "cachemon.toml"
    cfg_file.write_text(
        # sampled traffic (weights above 1), as the small test simulator's
        "[simulator]\nseed = 7\nrequests_per_hour = 6000\ncatalog_keys = 3000\n"
        "sample_threshold_per_minute = 30\n"
        + EXPERIMENT_TOML.format(start="2026-11-23T00:00:00Z")
        + ALWAYS_RULE
    )
    cfg = config.with_db(config.load(cfg_file, env={}), str(tmp / "cachemon.duckdb"))
    demo.demo(cfg, DAYS, NOW)
    with store_db.writer(cfg.store.path, NOW) as con:
        for minutes, channel in ((50, "slack"), (20, "email")):
            at = NOW - dt.timedelta(minutes=minutes)
            outbox.enqueue(
                con, outbox.OutboxRow(at, channel, "firing", "busy is firing", "busy", "{}")
            )
    with store_db.reader(cfg.store.path) as con:
        export.parquet(con, tmp / "exports")
    return Path(cfg.store.path), tmp


@pytest.fixture(scope="module")
def ch():
    """A chDB session set up as the docs say."""
    s = chdb_session.Session()
    for block in SETUP:
        for statement in filter(str.strip, block.split(";")):
            s.query(statement)
    yield s
    s.close()


@pytest.mark.parametrize("n", PAIRS, ids=[CLICKHOUSE[n][0] for n in PAIRS])
def test_the_clickhouse_query_on_the_export_equals_the_duckdb_query_on_the_views(n, store, ch):
    path, root = store
    title, ch_sql = CLICKHOUSE[n]
    with store_db.reader(path) as con:
        duck = con.execute(pinned(DUCKDB[n][1], DUCKDB_CLOCK)).df()
    assert_same_answer(duck, clickhouse(ch, ch_sql, root), f"question {title!r}")


def test_the_pinned_clock_replaces_every_clock_the_queries_read():
    """The two engines answer for the same instant only if every clock read is pinned."""
    for n in PAIRS:
        assert "now()" not in pinned(DUCKDB[n][1], DUCKDB_CLOCK)
        assert "current_date" not in pinned(DUCKDB[n][1], DUCKDB_CLOCK)
        assert "now(" not in pinned(CLICKHOUSE[n][1], CLICKHOUSE_CLOCK)


def test_a_missing_export_is_an_error_naming_it_not_an_empty_answer(store, ch, tmp_path):
    _, root = store
    sql = CLICKHOUSE[1][1]
    with pytest.raises(ExportMissing, match=re.escape(str(tmp_path / "exports/requests_hour"))):
        clickhouse(ch, sql, tmp_path)
    # a folder with the export but not this view (a view that had no rows to export)
    (tmp_path / "exports" / "other").mkdir(parents=True)
    with pytest.raises(ExportMissing, match="no exported file matches"):
        clickhouse(ch, sql, tmp_path)
    assert len(clickhouse(ch, sql, root))  # the same query on the real export answers


def test_an_empty_answer_never_counts_as_the_same(store, ch):
    """Two empty answers would compare equal: the comparison refuses them."""
    path, root = store
    ch_sql = CLICKHOUSE[1][1].replace("ORDER BY endpoint", "HAVING false ORDER BY endpoint")
    duck_sql = DUCKDB[1][1].replace("ORDER BY endpoint", "HAVING false ORDER BY endpoint")
    with store_db.reader(path) as con:
        duck = con.execute(duck_sql).df()
    with pytest.raises(AssertionError, match="empty answer"):
        assert_same_answer(duck, clickhouse(ch, ch_sql, root), "empty")


def test_a_changed_figure_is_caught(store, ch):
    """The comparison sees a difference beyond the float tolerance."""
    path, root = store
    with store_db.reader(path) as con:
        duck = con.execute(pinned(DUCKDB[1][1], DUCKDB_CLOCK)).df()
    other = clickhouse(ch, CLICKHOUSE[1][1], root)
    other.loc[0, "requests"] *= 1 + 1e-7
    with pytest.raises(AssertionError, match=r"row 0 differs in \['requests'\]"):
        assert_same_answer(duck, other, "changed")


@pytest.fixture(scope="module")
def requests_truth(store):
    """The raw request events behind the store: the demo's simulator run again over the
    demo's windows (same seed, same order, so the same events), as pandas."""
    _, root = store
    cfg = config.load(root / "cachemon.toml", env={})
    sim = Simulator(cfg.simulator)
    end = floor_to(NOW, MINUTE)
    windows = Window(floor_to(end - DAYS * DAY, MINUTE), end).split(demo.DEMO_CHUNK)
    r = to_pandas(*(sim.generate(w) for w in windows))
    return r[r.kind == "request"]


def test_the_clickhouse_answers_agree_with_the_raw_events(store, ch, requests_truth):
    """Not only the same as DuckDB: questions 1 and 4 on ClickHouse against pandas and numpy
    on the simulated events (hit rates to their rounding, percentiles within 1 %)."""
    _, root = store
    r = requests_truth
    hits = clickhouse(ch, CLICKHOUSE[1][1], root).set_index("endpoint")
    week = r[r.timestamp >= NOW - 7 * DAY]
    assert sorted(hits.index) == sorted(week.endpoint.unique())
    for endpoint, g in week.groupby("endpoint"):
        requests = g.sample_interval.sum()
        api = g.sample_interval[g.tier == "api"].sum()
        assert hits.loc[endpoint, "requests"] == pytest.approx(requests, rel=REL)
        assert abs(hits.loc[endpoint, "hit_rate_pct"] - 100 * (1 - api / requests)) <= 0.005 + 1e-9
    latency = clickhouse(ch, CLICKHOUSE[4][1], root).set_index("endpoint")
    lo, hi = floor_to(NOW, HOUR) - 24 * HOUR, floor_to(NOW, HOUR) + HOUR
    day = r[(r.timestamp >= lo) & (r.timestamp < hi)]
    assert sorted(latency.index) == sorted(["*", *day.endpoint.unique()])
    for endpoint, row in latency.iterrows():
        sel = day if endpoint == "*" else day[day.endpoint == endpoint]
        assert row.requests == pytest.approx(sel.sample_interval.sum(), rel=REL)
        for q, got in ((0.5, row.p50_ms), (0.95, row.p95_ms), (0.99, row.p99_ms)):
            want = weighted_quantile(sel.latency_ms, sel.sample_interval, q)
            assert abs(got - want) <= ALPHA * want + 1e-9, (endpoint, q, got, want)


# ---------------------------------------------------------------- the macros, on any window

# The questions whose ClickHouse SQL writes out a table macro: (number, macro).
MACROS = ((3, "latency_daily"), (4, "latency_window"), (6, "top_keys"), (10, "key_classes"))
# Traffic spans Monday 20:00 to Wednesday 02:00; windows start in it, so they have rows.
FIRST_HOUR = NOW - dt.timedelta(days=DAYS)


def _top_level_args(text: str) -> list[tuple[int, int]]:
    """(start, end) of each argument of the call whose "(" opens `text`."""
    depth, start, out = 0, 1, []
    for i, c in enumerate(text):
        if c == "(":
            depth += 1
        elif c in ",)":
            if depth == 1:
                out.append((start, i))
                start = i + 1
            if c == ")":
                depth -= 1
                if depth == 0:
                    return out
    raise AssertionError(f"unbalanced call: {text[:80]!r}")


def duckdb_window(sql: str, macro: str, lo: datetime, hi: datetime) -> str:
    """The DuckDB question with its macro called on [lo, hi) instead."""
    at = sql.index(f"v1.{macro}(") + len(f"v1.{macro}")
    (a, _), (_, b) = _top_level_args(sql[at:])[:2]
    window = f"TIMESTAMPTZ '{lo.isoformat()}', TIMESTAMPTZ '{hi.isoformat()}'"
    return f"{sql[: at + a]}{window}{sql[at + b :]}"


def clickhouse_window(sql: str, lo: datetime, hi: datetime) -> str:
    """The ClickHouse question with its `WITH … AS lo, … AS hi` set to [lo, hi)."""
    t = "toDateTime('{:%Y-%m-%d %H:%M:%S}', 'UTC')"
    out, n = re.subn(
        r"^WITH .+? AS lo, .+? AS hi\b", f"WITH {t.format(lo)} AS lo, {t.format(hi)} AS hi", sql
    )
    assert n == 1, "the query does not start WITH … AS lo, … AS hi"
    return out


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    question=st.sampled_from(MACROS),
    start=st.integers(0, 29),  # hours after the first hour of traffic
    hours=st.integers(1, 60),  # up to past its end: some windows hold a whole day
)
# Always a window holding Tuesday whole, with hours on either side, for each macro.
@example(question=MACROS[0], start=2, hours=30)
@example(question=MACROS[1], start=2, hours=30)
@example(question=MACROS[2], start=2, hours=30)
@example(question=MACROS[3], start=2, hours=30)
def test_the_macros_written_out_equal_the_macros_on_any_window_of_whole_hours(
    store, ch, question, start, hours
):
    """The ClickHouse SQL of latency_daily, latency_window, top_keys and key_classes answers
    as the macro does on every window of whole hours (whole days for latency_daily): whole
    days from the daily view, other hours from the hourly one."""
    (n, macro), (path, root) = question, store
    lo = FIRST_HOUR + dt.timedelta(hours=start)
    hi = lo + dt.timedelta(hours=hours)
    if macro == "latency_daily":  # the days the window touches
        lo, hi = floor_to(lo, DAY), floor_to(hi - dt.timedelta(microseconds=1), DAY) + DAY
    with store_db.reader(path) as con:
        duck = con.execute(duckdb_window(DUCKDB[n][1], macro, lo, hi)).df()
    got = clickhouse(ch, clickhouse_window(CLICKHOUSE[n][1], lo, hi), root)
    assert_same_answer(duck, got, f"{macro} on [{lo:%a %H:%M}, {hi:%a %H:%M})")


# ---------------------------------------------------------------- the same export in a bucket


def on_s3(sql: str) -> str:
    """A documented query reading the bucket instead of the folder, by the docs' rule:
    file('exports/<view>/*/*.parquet', Parquet) becomes s3(cachemon_r2, filename = …)."""
    out, n = re.subn(
        r"\bfile\('exports/([^']+)', Parquet\)",
        r"s3(cachemon_r2, filename = '\1', format = 'Parquet')",
        sql,
    )
    assert n and "file(" not in out, f"not every file() follows the documented form:\n{sql}"
    return out


@pytest.fixture(scope="module")
def bucket(store, ch):
    """The export copied to a bucket of an S3-compatible server on loopback (moto), and
    the docs' R2 example run against it: (its answer, the DuckDB view's answer)."""
    path, root = store
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="cachemon-test",
            aws_secret_access_key="cachemon-test-secret",
            region_name="us-east-1",
        )
        s3.create_bucket(Bucket=BUCKET)
        files = sorted((root / "exports").rglob("*.parquet"))
        assert files
        for f in files:
            key = f"{PREFIX}/{f.relative_to(root / 'exports').as_posix()}"
            s3.upload_file(str(f), BUCKET, key)
        (r2_sql,) = R2_EXAMPLES
        for placeholder in (R2_URL, R2_KEY, R2_SECRET, f"/{BUCKET}/{PREFIX}/"):
            assert placeholder in r2_sql, f"the R2 example no longer has {placeholder!r}"
        r2_sql = (
            r2_sql.replace(R2_URL, f"{endpoint}/")
            .replace(R2_KEY, "cachemon-test")
            .replace(R2_SECRET, "cachemon-test-secret")
        )
        ch.query("DROP NAMED COLLECTION IF EXISTS cachemon_r2")
        *setup, query = [s for s in r2_sql.split(";") if s.strip()]
        for statement in setup:
            ch.query(statement)
        got = ch.query(query, "DataFrame")
        with store_db.reader(path) as con:
            want = con.execute(
                "SELECT CAST(hour AS DATE) AS date, sum(requests) AS requests "
                "FROM v1.requests_hour WHERE hour >= TIMESTAMPTZ '2026-11-01 00:00:00+00' "
                "GROUP BY ALL ORDER BY date"
            ).df()
        yield got, want
    finally:
        ch.query("DROP NAMED COLLECTION IF EXISTS cachemon_r2")
        server.stop()


def test_the_r2_example_reads_the_export_from_a_bucket(bucket):
    got, want = bucket
    assert_same_answer(want, got, "the R2 example")
    assert len(got) == 3  # Monday to Wednesday


@pytest.mark.parametrize("n", PAIRS, ids=[CLICKHOUSE[n][0] for n in PAIRS])
def test_every_question_answers_the_same_from_the_bucket(n, store, ch, bucket):
    path, _ = store
    with store_db.reader(path) as con:
        duck = con.execute(pinned(DUCKDB[n][1], DUCKDB_CLOCK)).df()
    got = ch.query(on_s3(pinned(CLICKHOUSE[n][1], CLICKHOUSE_CLOCK)), "DataFrame")
    assert_same_answer(duck, got, f"question {CLICKHOUSE[n][0]!r} on S3")
