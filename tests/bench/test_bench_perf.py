"""The #22 benchmark script's pure parts (`bench/bench_perf.py`), so it cannot rot
unnoticed: the store comparison on tiny DuckDB files against a multiset
difference computed here, the per-child memory and time measurement on tiny
children of known size, the tables it prints, and its wall-clock exclusions
against the current schema. No demo runs here: the script itself is the
benchmark."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import bench_perf
from cachemon.store import schema

ROWS = [(1, "a", 1.5), (2, "b", 2.5), (3, "c", 3.5)]


def make_store(path: Path, tables: dict[str, list[tuple]]) -> Path:
    """A DuckDB file with each table (id INTEGER, key VARCHAR, v DOUBLE) holding its rows."""
    con = duckdb.connect(str(path))
    for name, rows in tables.items():
        con.execute(f"CREATE TABLE {name} (id INTEGER, key VARCHAR, v DOUBLE)")
        if rows:
            con.executemany(f"INSERT INTO {name} VALUES (?, ?, ?)", rows)
    con.close()
    return path


def by_table(diffs):
    return {d.table: d for d in diffs}


def test_stores_differing_in_one_row_report_one(tmp_path):
    a = make_store(tmp_path / "a.duckdb", {"t": ROWS, "same": ROWS})
    b = make_store(tmp_path / "b.duckdb", {"t": [*ROWS[:2], (3, "c", 9.0)], "same": ROWS})
    diffs = by_table(bench_perf.compare_stores(a, b))
    assert diffs["t"].differing == 2  # one row of each side: one changed row
    assert (diffs["t"].only_a, diffs["t"].only_b) == (1, 1)
    assert diffs["same"].differing == 0
    c = make_store(tmp_path / "c.duckdb", {"t": ROWS[:2], "same": ROWS})
    diffs = by_table(bench_perf.compare_stores(a, c))
    assert (diffs["t"].rows_a, diffs["t"].rows_b, diffs["t"].differing) == (3, 2, 1)


def test_rows_compare_as_multisets_not_sets(tmp_path):
    a = make_store(tmp_path / "a.duckdb", {"t": [ROWS[0], ROWS[0], ROWS[1]]})
    b = make_store(tmp_path / "b.duckdb", {"t": [ROWS[0], ROWS[1]]})
    assert by_table(bench_perf.compare_stores(a, b))["t"].differing == 1


def test_an_excluded_column_is_left_out_and_named(tmp_path):
    a = make_store(tmp_path / "a.duckdb", {"t": ROWS})
    b = make_store(tmp_path / "b.duckdb", {"t": [(i, k, v + 100) for i, k, v in ROWS]})
    diff = by_table(bench_perf.compare_stores(a, b, {"t": ("v",)}))["t"]
    assert (diff.differing, diff.excluded) == (0, ("v",))
    assert by_table(bench_perf.compare_stores(a, b, {"t": ("key",)}))["t"].differing == 6


def test_a_table_in_one_store_only_is_reported_missing(tmp_path):
    a = make_store(tmp_path / "a.duckdb", {"t": ROWS, "extra": ROWS})
    b = make_store(tmp_path / "b.duckdb", {"t": ROWS})
    diffs = by_table(bench_perf.compare_stores(a, b))
    assert (diffs["extra"].rows_a, diffs["extra"].rows_b, diffs["extra"].differing) == (
        3,
        None,
        None,
    )
    rows = bench_perf.diff_rows(list(diffs.values()))
    assert rows[0] == ["extra", "3", "missing", "table missing", "", ""]  # differing first
    assert rows[1] == ["t", "3", "3", "0", "", ""]


def test_a_quote_in_a_path_or_table_name_is_no_problem(tmp_path):
    d = tmp_path / "it's"
    d.mkdir()
    a = make_store(d / "a.duckdb", {'"odd""name"': ROWS})
    b = make_store(d / "b.duckdb", {'"odd""name"': ROWS[:1]})
    assert by_table(bench_perf.compare_stores(a, b))['odd"name'].differing == 2


ROW = st.tuples(st.integers(0, 3), st.sampled_from(["a", "b"]), st.sampled_from([0.5, 1.0]))


@settings(max_examples=20, deadline=None)
@given(st.lists(ROW, max_size=12), st.lists(ROW, max_size=12))
def test_differing_rows_are_the_multiset_symmetric_difference(tmp_path_factory, left, right):
    d = tmp_path_factory.mktemp("stores")
    a = make_store(d / "a.duckdb", {"t": left})
    b = make_store(d / "b.duckdb", {"t": right})
    diff = bench_perf.compare_stores(a, b)[0]
    ca, cb = Counter(left), Counter(right)
    assert (diff.only_a, diff.only_b) == (sum((ca - cb).values()), sum((cb - ca).values()))
    assert (diff.rows_a, diff.rows_b) == (len(left), len(right))


def test_wall_clock_exclusions_name_real_columns_of_the_store(tmp_path):
    """A renamed column would otherwise silently stop being left out (and the
    comparison report differences that are only the clock)."""
    con = duckdb.connect(str(tmp_path / "s.duckdb"))
    schema.migrate(con, datetime(2026, 1, 1, tzinfo=UTC))
    for table, cols in bench_perf.WALL_CLOCK_COLUMNS.items():
        have = {r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()}
        assert set(cols) <= have, table
    con.close()


def test_peak_rss_is_of_each_child_alone(tmp_path):
    """Not the maximum over all children so far (RUSAGE_CHILDREN): a small child
    after a big one reports its own, small, peak."""
    env = bench_perf.child_env(bench_perf.Checkout("t", tmp_path))
    big = "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])"
    big = bench_perf.run_measured(["-c", big], tmp_path, env)
    small = bench_perf.run_measured(
        ["-c", "import time; time.sleep(0.2); print('hi')"], tmp_path, env
    )
    assert big.rss >= 300 * 2**20
    assert small.rss < 100 * 2**20
    assert small.wall >= 0.2 and small.stdout == "hi\n"
    assert small.cpu < small.wall  # it slept: CPU time is not wall time


def test_a_failing_child_stops_the_benchmark_with_its_error(tmp_path):
    env = bench_perf.child_env(bench_perf.Checkout("t", tmp_path))
    with pytest.raises(RuntimeError, match="exited 3:\nboom"):
        bench_perf.run_measured(
            ["-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"], tmp_path, env
        )


def test_the_child_environment_is_the_checkouts_own(tmp_path, monkeypatch):
    monkeypatch.setenv("CACHEMON_CONFIG", "/elsewhere.toml")
    monkeypatch.setenv("CACHEMON_DB", "/elsewhere.duckdb")
    co = bench_perf.Checkout("t", tmp_path)
    env = bench_perf.child_env(co)
    assert env["PYTHONPATH"] == str(tmp_path)
    assert "CACHEMON_CONFIG" not in env and "CACHEMON_DB" not in env
    env = bench_perf.child_env(co, tmp_path / "s.duckdb", tmp_path / "c.toml", tmp_path / "pyc")
    assert env["CACHEMON_DB"] == str(tmp_path / "s.duckdb")
    assert env["CACHEMON_CONFIG"] == str(tmp_path / "c.toml")
    assert env["PYTHONPYCACHEPREFIX"] == str(tmp_path / "pyc")
    assert "PYTHONDONTWRITEBYTECODE" not in env


def test_markdown_table_and_cells():
    assert (
        bench_perf.markdown_table(["a", "b"], [[1, "x"]]) == "| a | b |\n| --- | --- |\n| 1 | x |"
    )
    with pytest.raises(ValueError, match="2 cells"):
        bench_perf.markdown_table(["a", "b"], [[1]])
    assert bench_perf.ratio(21.0, 8.4) == "2.50×"
    assert bench_perf.ratio(None, 1.0) == ""
    assert bench_perf.ratio(0, 0) == "same"
    assert bench_perf.seconds(0.2504) == "250 ms"
    assert bench_perf.seconds(12.34) == "12.3 s"


def test_rows_fit_the_headers_with_and_without_a_before():
    for labels in (["after"], ["before", "after"]):
        b = bench_perf.Bench([bench_perf.Checkout(x, Path(".")) for x in labels], Path("."), 1)
        row = b.row("x", [1.0] * len(labels), str, "≤ 1") + ["0.5"]
        bench_perf.markdown_table(b.headers("measure"), [row])  # no error: same width


def test_event_count_and_days_parsing():
    line = "simulated 2,075,278 events in 2 windows up to 2026-11-20T12:00Z into x.duckdb"
    assert bench_perf.events_of(line) == 2_075_278
    assert bench_perf.events_of("nothing") is None
    assert bench_perf.parse_days("1,7,30") == [1.0, 7.0, 30.0]
    for bad in ("", "1,x", "0", "-1"):
        with pytest.raises(Exception, match="days must be"):
            bench_perf.parse_days(bad)


def test_the_script_refuses_a_directory_that_is_no_checkout(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench_perf.main(["--before", str(tmp_path), "--parts", "", "--out", str(tmp_path)])
    assert "is not a cachemon checkout" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_perf.main(["--parts", "demo,speed", "--out", str(tmp_path)])
    assert "unknown --parts speed" in capsys.readouterr().err


def test_scale_points_run_cheapest_first_and_rows_fit_the_headers(tmp_path):
    points = bench_perf.scale_points([1, 7, 30], [1, 7])
    assert points == [(1, 1), (1, 10), (7, 1), (7, 10), (30, 1)]
    db = make_store(tmp_path / "s.duckdb", {"t": ROWS})
    run = bench_perf.DemoRun(20.0, 512 * 2**20, 4_000_000, db, load=1.5, cpu=30.5)
    row = bench_perf.scale_row(bench_perf.Checkout("after", tmp_path), 2, 10, run, 0.0123)
    assert row[:8] == ["10×", "2", "after", "20.0 s", "30.5 s", "10.00 s", "4,000,000", "5.00 s"]
    assert row[8:] == ["512 MiB", f"{db.stat().st_size / 2**20:,.0f} MiB", "12.3 ms", "1.5"]
    bench_perf.markdown_table(bench_perf.SCALE_HEADERS, [row])


def make_keyed_store(path: Path, keys: list[str], top: list[tuple[str, float]]) -> Path:
    """A store with cache_keys numbered in the order of `keys` and a per-key
    table naming them by key_id."""
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE cache_keys (key_id INTEGER, key VARCHAR, endpoint VARCHAR)")
    con.executemany("INSERT INTO cache_keys VALUES (?, ?, 'isbn')", list(enumerate(keys)))
    con.execute("CREATE TABLE key_top (t INTEGER, key_id INTEGER, requests DOUBLE)")
    ids = {k: i for i, k in enumerate(keys)}
    con.executemany("INSERT INTO key_top VALUES (1, ?, ?)", [(ids[k], n) for k, n in top])
    con.close()
    return path


def test_key_ids_compare_as_the_keys_they_name(tmp_path):
    """Two stores with the same keys numbered differently hold the same rows:
    per-key tables compare equal; cache_keys as stored shows the renumbering."""
    top = [("k1", 5.0), ("k2", 3.0)]
    a = make_keyed_store(tmp_path / "a.duckdb", ["k1", "k2", "k3"], top)
    b = make_keyed_store(tmp_path / "b.duckdb", ["k3", "k1", "k2"], top)
    diffs = {(d.table, d.how): d.differing for d in bench_perf.compare_stores(a, b)}
    assert diffs == {
        ("cache_keys", "key_id as stored"): 6,
        ("cache_keys", "keys only"): 0,
        ("key_top", "key_id → key"): 0,
    }
    # A tie broken the other way: one row names another key.
    c = make_keyed_store(tmp_path / "c.duckdb", ["k1", "k2", "k3"], [("k1", 5.0), ("k3", 3.0)])
    diffs = {(d.table, d.how): d.differing for d in bench_perf.compare_stores(b, c)}
    assert diffs[("key_top", "key_id → key")] == 2
    raw = {d.table: d.differing for d in bench_perf.compare_stores(a, b, resolve_keys=False)}
    assert raw == {"cache_keys": 6, "key_top": 4}  # every id moved
