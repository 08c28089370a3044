"""Event files for the import-refusal tests: rows, files in each format, a
seeded store, and the all-or-nothing check of a refused import."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cachemon import config
from cachemon.clock import iso
from cachemon.errors import InputError
from cachemon.ingest import load as ingest_load
from cachemon.store import db as store_db
from tests.helpers import T0

NOW = T0 + timedelta(hours=1)
START = datetime(2026, 11, 19, 7, 0, tzinfo=UTC)  # the events' hour, before NOW


def row(i: int, **over) -> dict:
    """Event number `i` (10 s apart from START), with fields `over` replaced."""
    return {
        "timestamp": iso(START + timedelta(seconds=10 * i)),
        "tier": ("edge", "kv", "r2", "api")[i % 4],
        "key": f"search:title:q=k{i}",
        "endpoint": "title",
        "latency_ms": 2.0 + i,
        "bytes": 100.0,
        "sample_interval": 1.0,
        **over,
    }


def write(path, rows):
    """`rows` as an event file in the format of `path`'s suffix; returns `path`."""
    if path.suffix == ".ndjson":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".csv":
        cols = sorted({k for r in rows for k in r})
        path.write_text(
            ",".join(cols)
            + "\n"
            + "".join(
                ",".join(repr(r[c]) if isinstance(r[c], float) else str(r[c]) for c in cols) + "\n"
                for r in rows
            )
        )
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def cfg(tmp_path, toml: str = ""):
    """A config loaded from `toml`, its store in `tmp_path`."""
    p = tmp_path / "c.toml"
    p.write_text(toml)
    return config.with_db(config.load(p, env={}), str(tmp_path / "s.duckdb"))


def stored(cfg) -> tuple:
    """What the store holds: imports and the weighted requests."""
    with store_db.reader(cfg.store.path) as con:
        return (
            con.execute("SELECT count(*) FROM imports").fetchone()[0],
            con.execute("SELECT sum(requests) FROM rollup_minute").fetchone()[0],
        )


def seeded(tmp_path, toml: str = ""):
    """A store holding one good file (4 requests), so 'nothing changed' is visible."""
    c = cfg(tmp_path, toml)
    ingest_load.import_files(c, [write(tmp_path / "seed.ndjson", [row(i) for i in range(4)])], NOW)
    assert stored(c) == (1, 4.0)
    return c


def refused(cfg, bad, *expected: str) -> str:
    """Import a good file and `bad` in one command: refused naming `bad` and
    every `expected` part, and the store unchanged (all or nothing)."""
    good = write(bad.parent / "good.ndjson", [row(i) for i in range(10, 13)])
    before = stored(cfg)
    with pytest.raises(InputError) as err:
        ingest_load.import_files(cfg, [good, bad], NOW)
    msg = str(err.value)
    assert msg.startswith(f"{bad}: ") and "\n" not in msg, msg
    for part in expected:
        assert part in msg, (part, msg)
    assert stored(cfg) == before
    return msg
