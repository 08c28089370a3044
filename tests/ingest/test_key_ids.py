"""The same input gives the same store (issue 22): key ids follow key order
within a write and carry on from the largest, so the top-key summaries,
which break ties by id, are the same in two identical demos."""

from datetime import timedelta

import duckdb

from cachemon.store import db as store_db
from tests.helpers import load, simulate

TABLES = ("cache_keys", "key_minute", "key_day", "key_top", "key_top_cutoff", "samples")


def _rows(path, table):
    with duckdb.connect(str(path), read_only=True) as con:
        return sorted(con.execute(f"SELECT * FROM {table}").fetchall(), key=repr)


def test_new_keys_get_ids_in_key_order_after_the_largest(db):
    parts, df = simulate(2)
    load(db, parts[:1])
    with store_db.reader(db) as con:
        first = con.execute("SELECT key_id, key FROM cache_keys ORDER BY key_id").fetchall()
    hour1 = sorted(set(df[(df.kind == "request") & (df.timestamp < parts[1][0].start)].key))
    assert [k for _, k in first] == hour1
    assert [i for i, _ in first] == list(range(1, len(hour1) + 1))
    load(db, parts[1:])
    with store_db.reader(db) as con:
        later = con.execute(
            "SELECT key_id, key FROM cache_keys WHERE key_id > ? ORDER BY key_id", [len(hour1)]
        ).fetchall()
    new = sorted(set(df[df.kind == "request"].key) - set(hour1))
    assert [k for _, k in later] == new
    assert [i for i, _ in later] == list(range(len(hour1) + 1, len(hour1) + len(new) + 1))


def test_two_identical_loads_make_identical_stores(tmp_path):
    parts, _ = simulate(3, step=timedelta(minutes=30))
    a, b = tmp_path / "a.duckdb", tmp_path / "b.duckdb"
    load(a, parts)
    load(b, parts)
    for table in TABLES:
        assert _rows(a, table) == _rows(b, table), table
    assert _rows(a, "key_top")  # the summaries exist at all
