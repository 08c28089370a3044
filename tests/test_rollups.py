"""Rollups of events: the coded aggregation (integer minutes, key codes)
gives the same tables whatever shape the key column comes in, and equals
pandas on the raw events (issue 22: faster must not mean different)."""

from datetime import UTC, datetime

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from cachemon import rollups
from cachemon.events import SCHEMA, EventFrame

KEYS = ["a", "b", "é/ü", "search:title:q=lt-1", ""]
EPOCH_US = 0
TIERS = ["edge", "kv", "r2", "api"]


@st.composite
def events(draw):
    n = draw(st.integers(1, 60))
    ts = draw(
        st.lists(
            # Around the epoch, so minutes before 1970 (negative µs) are floored too.
            st.integers(-5 * 60_000_000, 5 * 60_000_000),
            min_size=n,
            max_size=n,
        )
    )
    return pa.table(
        {
            "timestamp": pa.array(ts, pa.timestamp("us", tz="UTC")),
            "tier": draw(st.lists(st.sampled_from(TIERS), min_size=n, max_size=n)),
            "key": draw(st.lists(st.sampled_from(KEYS), min_size=n, max_size=n)),
            "endpoint": ["title"] * n,
            "experiment": draw(st.lists(st.sampled_from(["", "x"]), min_size=n, max_size=n)),
            "cohort": [""] * n,
            "status": draw(st.lists(st.sampled_from(["ok", "error"]), min_size=n, max_size=n)),
            "kind": ["request"] * n,
            "latency_ms": draw(st.lists(st.floats(0, 1e4), min_size=n, max_size=n)),
            "bytes": [100.0] * n,
            "sample_interval": draw(
                st.lists(st.sampled_from([1.0, 2.0, 4.0]), min_size=n, max_size=n)
            ),
        },
        schema=SCHEMA,
    )


def _shapes(table: pa.Table):
    """The same events with the key column as plain text, one dictionary,
    a dictionary with repeated entries, chunks of different dictionaries,
    and chunks sharing one."""
    i = table.column_names.index("key")
    key = table["key"].combine_chunks()
    enc = key.dictionary_encode()
    doubled = pa.DictionaryArray.from_arrays(
        enc.indices, pa.concat_arrays([enc.dictionary, enc.dictionary])
    )
    half = len(table) // 2
    chunked = pa.chunked_array(
        [key[:half].dictionary_encode(), key[half:].dictionary_encode()]
        if half
        else [key.dictionary_encode()]
    )
    yield "plain", table
    yield "dictionary", table.set_column(i, "key", enc)
    yield "repeated dictionary", table.set_column(i, "key", doubled)
    yield "chunks", table.set_column(i, "key", chunked)
    # Slices of one array share its dictionary (the simulator's windows).
    yield (
        "shared slices",
        table.set_column(i, "key", pa.chunked_array([enc[:half], enc[half:]] if half else [enc])),
    )


def _sorted(t: pa.Table) -> pd.DataFrame:
    df = t.to_pandas()
    for c in df.columns:
        if isinstance(df[c].dtype, pd.CategoricalDtype):
            df[c] = df[c].astype(str)
    return df.sort_values(list(df.columns)).reset_index(drop=True)


def _truth_keys(table: pa.Table) -> pd.DataFrame:
    df = table.to_pandas()
    us = table["timestamp"].cast(pa.int64()).to_numpy()
    df["t"] = pd.to_datetime(np.floor_divide(us, 60_000_000) * 60_000_000, unit="us", utc=True)
    w = df["sample_interval"]
    for tier in TIERS:
        df[tier] = np.where(df["tier"] == tier, w, 0.0)
    df["errors"] = np.where(df["status"] == "error", w, 0.0)
    g = df.groupby(["key", "experiment", "cohort", "t"], as_index=False)
    return g.agg(
        edge=("edge", "sum"),
        kv=("kv", "sum"),
        r2=("r2", "sum"),
        api=("api", "sum"),
        errors=("errors", "sum"),
        first_seen=("timestamp", "min"),
        last_seen=("timestamp", "max"),
    )


@settings(max_examples=60, deadline=None)
@given(events())
def test_every_key_shape_gives_the_same_rollups_and_they_equal_pandas(table):
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    results = {}
    for shape, t in _shapes(table):
        r = rollups.from_events(con, EventFrame(t))
        results[shape] = {
            name: _sorted(getattr(r, name)) for name in ("minute", "latency", "gauges", "keys")
        }
    first = results.pop("plain")
    for shape, r in results.items():
        for name, df in r.items():
            pd.testing.assert_frame_equal(df, first[name], obj=f"{shape} {name}")
    truth = _truth_keys(table)
    got = first["keys"]
    cols = ["key", "experiment", "cohort", "t", "edge", "kv", "r2", "api", "errors"]
    merged = got[cols + ["first_seen", "last_seen"]].merge(
        truth, on=["key", "experiment", "cohort", "t"], suffixes=("", "_truth"), how="outer"
    )
    assert len(merged) == len(truth) == len(got)
    for c in ("edge", "kv", "r2", "api", "errors"):
        np.testing.assert_allclose(merged[c], merged[c + "_truth"])
    assert (merged["first_seen"] == merged["first_seen_truth"]).all()
    assert (merged["last_seen"] == merged["last_seen_truth"]).all()


def test_a_minute_before_1970_is_floored_not_truncated():
    """Integer minutes: -30 s is in the minute starting at -60 s (C-style
    division would put it in minute 0)."""
    t = (
        pa.table(
            {
                **{f.name: [""] for f in SCHEMA if f.type == pa.string()},
                "timestamp": pa.array([-30_000_000], pa.timestamp("us", tz="UTC")),
                "kind": ["request"],
                "tier": ["edge"],
                "status": ["ok"],
                "latency_ms": [1.0],
                "bytes": [1.0],
                "sample_interval": [1.0],
            }
        )
        .select(SCHEMA.names)
        .cast(SCHEMA)
    )
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    r = rollups.from_events(con, EventFrame(t))
    minute = datetime(1969, 12, 31, 23, 59, tzinfo=UTC)
    assert r.minute["minute"].to_pylist() == [minute]
    assert r.keys["t"].to_pylist() == [minute]
    assert r.latency["minute"].to_pylist() == [minute]
