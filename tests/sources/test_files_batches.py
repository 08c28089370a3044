"""Event files read in batches: the same rollups whatever the batch size
(gauges' last readings included, rows in any order), and a bad value deep in
a file still named by its own line."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from cachemon import config, settings
from cachemon.errors import InputError
from cachemon.ingest import load as ingest_load
from cachemon.sources import files
from cachemon.store import db as store_db
from tests.helpers import T0, simulate

NOW = T0 + timedelta(hours=2)
TABLES = {
    "rollup_minute": "minute, tier, endpoint, experiment, cohort, requests, errors, bytes, latency_sum, "
    "latency_min, latency_max, events",
    "rollup_hour": "hour, tier, endpoint, experiment, cohort, requests, errors, bytes, latency_sum",
    "latency_minute": "minute, tier, endpoint, experiment, cohort, bucket, weight",
    "gauge_minute": "minute, name, value_sum, samples, value_min, value_max, value_last",
    "key_minute": "minute, k.key, edge, kv, r2, api, errors, fill_errors, first_seen, last_seen",
}


@pytest.fixture(scope="module")
def shuffled():
    """Two hours of simulated events (requests and gauges) in random order."""
    import numpy as np
    import pandas as pd

    _, df = simulate(2)
    # Several readings of a gauge per minute, so "last" means the latest timestamp.
    rng = np.random.default_rng(3)
    extra = pd.DataFrame(
        {
            "timestamp": [
                T0 + timedelta(minutes=m, seconds=10 * j) for m in range(30) for j in range(6)
            ],
            "kind": "queue_depth",
            "latency_ms": rng.uniform(0, 500, 180),
        }
    )
    df = pd.concat([df, extra], ignore_index=True)
    for col in ("tier", "key", "endpoint", "experiment", "cohort", "status"):
        df[col] = (
            df[col]
            .astype(object)
            .where(df[col].notna(), "edge" if col == "tier" else "ok" if col == "status" else "")
        )
    for col, default in (("bytes", 0.0), ("sample_interval", 1.0)):
        df[col] = df[col].fillna(default)
    df = df.sample(frac=1.0, random_state=7).reset_index(drop=True)
    df["timestamp"] = df.timestamp.dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert (df.kind != "request").sum() > 10
    return df


def _dump(db) -> dict:
    with store_db.reader(db) as con:
        out = {}
        for table, cols in TABLES.items():
            join = " JOIN cache_keys k USING (key_id)" if table == "key_minute" else ""
            out[table] = con.execute(f"SELECT {cols} FROM {table}{join} ORDER BY ALL").fetchall()
        return out


@pytest.mark.parametrize("suffix", [".ndjson", ".csv", ".parquet"])
def test_rollups_do_not_depend_on_the_batch_size(tmp_path, shuffled, suffix, monkeypatch):
    path = tmp_path / f"e{suffix}"
    {
        ".ndjson": lambda: shuffled.to_json(path, orient="records", lines=True),
        ".csv": lambda: shuffled.to_csv(path, index=False),
        ".parquet": lambda: shuffled.to_parquet(path, index=False),
    }[suffix]()
    whole = tmp_path / "whole.duckdb"
    ingest_load.import_files(config.with_db(settings.Config(), str(whole)), [path], NOW)
    monkeypatch.setattr(files, "BATCH_ROWS", 997)
    monkeypatch.setattr(files, "CHUNK_BYTES", 50_000)
    monkeypatch.setattr(files, "MAX_LINE", 50_000)  # CSV blocks
    from cachemon.ingest import imports

    monkeypatch.setattr(imports, "MERGE_ROWS", 3_000)  # merges partial rollups many times
    batched = tmp_path / "batched.duckdb"
    ingest_load.import_files(config.with_db(settings.Config(), str(batched)), [path], NOW)
    a, b = _dump(whole), _dump(batched)
    for table in TABLES:
        assert len(a[table]) == len(b[table]) > 0, table
        for x, y in zip(a[table], b[table]):
            assert all(
                u == pytest.approx(v) if isinstance(u, float) else u == v for u, v in zip(x, y)
            ), (table, x, y)
    # The last gauge reading is the one with the latest timestamp, not the last row of the file.
    g = shuffled[shuffled.kind != "request"].sort_values("timestamp")
    g = g.assign(minute=g.timestamp.str[:16]).groupby(["minute", "kind"]).latency_ms.last()
    assert sorted(round(v, 6) for v in g) == sorted(round(r[6], 6) for r in b["gauge_minute"])


def test_a_bad_value_deep_in_a_file_is_named_by_its_line(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "BATCH_ROWS", 7)
    rows = [
        {
            "timestamp": "2026-11-19T07:00:00Z",
            "tier": "edge",
            "key": f"k{i}",
            "endpoint": "title",
            "latency_ms": 1.0,
        }
        for i in range(40)
    ]
    rows[30]["latency_ms"] = -1.0
    nd = tmp_path / "deep.ndjson"
    # Blank lines count: the message gives the line an editor shows.
    nd.write_text("".join(json.dumps(r) + ("\n\n" if i == 3 else "\n") for i, r in enumerate(rows)))
    csv = tmp_path / "deep.csv"
    csv.write_text(
        "timestamp,tier,key,endpoint,latency_ms\n"
        + "".join(
            f"{r['timestamp']},{r['tier']},{r['key']},{r['endpoint']},{r['latency_ms']}\n"
            for r in rows
        )
    )
    import pandas as pd

    pq_path = tmp_path / "deep.parquet"
    pd.DataFrame(rows).to_parquet(pq_path, index=False)
    for path, where in ((nd, "line 32"), (csv, "line 32"), (pq_path, "row 31")):
        with pytest.raises(InputError, match=f"^{path}: {where}: latency_ms is negative"):
            list(files.batches(path))
