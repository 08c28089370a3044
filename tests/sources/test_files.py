"""Event files: NDJSON, CSV and Parquet import, idempotency and bad input."""

import json
from datetime import timedelta

import pytest

from cachemon import config, settings
from cachemon.clock import Window
from cachemon.errors import InputError
from cachemon.ingest import load as ingest_load
from cachemon.metrics import window as metrics_window
from cachemon.sources import files
from cachemon.store import db as store_db
from tests.helpers import T0, simulate

SPAN = Window(T0, T0 + timedelta(hours=2))
NOW = SPAN.end  # imports happen after the events (events from the future are refused)


@pytest.fixture(scope="module")
def events():
    _, df = simulate(2)
    df = df.copy()
    df["timestamp"] = df.timestamp.dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return df


def _write(df, path):
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_json(path, orient="records", lines=True, force_ascii=False)
    return path


def _cfg(db):
    return config.with_db(settings.Config(), str(db))


def _volume(db):
    with store_db.reader(db) as con:
        return metrics_window.compute(con, SPAN, "2h", top=0).volume


@pytest.mark.parametrize("suffix", [".ndjson", ".csv", ".parquet"])
def test_import_matches_raw_events(tmp_path, events, suffix):
    path = _write(events, tmp_path / f"events{suffix}")
    db = tmp_path / "s.duckdb"
    summary = ingest_load.import_files(_cfg(db), [path], NOW)
    assert summary.imported[0].events == len(events)
    req = events[events.kind == "request"]
    v = _volume(db)
    assert v.total == pytest.approx(req.sample_interval.sum())
    assert v.kv == pytest.approx(req[req.tier == "kv"].sample_interval.sum())


def test_same_file_twice_is_a_no_op_and_different_files_add_up(tmp_path, events):
    db = tmp_path / "s.duckdb"
    a = _write(events.iloc[::2], tmp_path / "a.ndjson")
    b = _write(events.iloc[1::2], tmp_path / "b.csv")
    ingest_load.import_files(_cfg(db), [a], NOW)
    once = _volume(db)
    again = ingest_load.import_files(_cfg(db), [a], NOW)
    assert again.imported == () and again.skipped == (a,)
    assert _volume(db) == once
    ingest_load.import_files(_cfg(db), [b], NOW)
    req = events[events.kind == "request"]
    assert _volume(db).total == pytest.approx(req.sample_interval.sum())


BAD = [
    (lambda df: df.drop(columns=["latency_ms"]), "missing required column(s) latency_ms"),
    (
        lambda df: df.assign(timestamp=df.timestamp.where(df.index != df.index[3], "not-a-time")),
        "4: timestamp 'not-a-time' is not an ISO 8601 time",
    ),
    (
        lambda df: df.assign(latency_ms=df.latency_ms.where(df.index != df.index[5], -3.0)),
        "6: latency_ms is negative (-3.0)",
    ),
    (
        lambda df: df.assign(tier=df.tier.where(df.index != df.index[0], "disk")),
        "1: tier 'disk' is unknown",
    ),
    (
        lambda df: df.assign(kind=df.kind.where(df.index != df.index[2], "bogus")),
        "3: kind 'bogus' is unknown",
    ),
    (
        lambda df: df.assign(sample_interval=0.5),
        "1 (and 19 more rows): sample_interval must be at least 1",
    ),
    # A missing (null) key or endpoint used to pass and then break the store's NOT NULL constraint.
    (lambda df: df.assign(key=df.key.where(df.index != df.index[4], None)), "5: key is empty"),
    (
        lambda df: df.assign(endpoint=df.endpoint.where(df.index != df.index[1], None)),
        "2: endpoint is empty",
    ),
]


@pytest.mark.parametrize("suffix,first_line", [(".ndjson", 1), (".csv", 2), (".parquet", None)])
@pytest.mark.parametrize("mutate,message", BAD, ids=[m for _, m in BAD])
def test_bad_rows_name_file_line_and_field(tmp_path, events, suffix, first_line, mutate, message):
    df = mutate(events.head(20).reset_index(drop=True).copy())
    path = _write(df, tmp_path / f"bad{suffix}")
    with pytest.raises(InputError) as err:
        files.read(path)
    text = str(err.value)
    assert str(path) in text
    if message[0].isdigit():
        row = int(message.split(":")[0].split(" ")[0])
        where = f"line {row + first_line - 1}" if first_line else f"row {row}"
        assert where + message[len(str(row)) :] in text, text
    else:
        assert message in text


def test_bad_json_line_and_bad_csv_number(tmp_path, events):
    good = events.head(3).to_json(orient="records", lines=True)
    p = tmp_path / "x.ndjson"
    p.write_text(good + "\n{not json}\n")
    with pytest.raises(InputError, match=r"line 5: not valid JSON"):
        files.read(p)
    c = tmp_path / "x.csv"
    events.head(3).assign(latency_ms=["1.5", "fast", "2"]).to_csv(c, index=False)
    with pytest.raises(InputError, match=r"x.csv: line 3: latency_ms 'fast' is not a number"):
        files.read(c)
    with pytest.raises(InputError, match="unknown file type"):
        files.read(tmp_path / "events.xlsx")
    with pytest.raises(InputError, match="no such file"):
        files.read(tmp_path / "missing.csv")


def test_a_bad_file_stops_the_whole_import_before_anything_is_written(tmp_path, events):
    db = tmp_path / "s.duckdb"
    ingest_load.import_files(_cfg(db), [_write(events.iloc[::2], tmp_path / "a.ndjson")], NOW)
    before = _volume(db)
    good = _write(events.iloc[1::2], tmp_path / "b.ndjson")
    bad = _write(events.head(5).assign(tier="disk"), tmp_path / "c.ndjson")
    with pytest.raises(InputError, match="c.ndjson"):
        ingest_load.import_files(_cfg(db), [good, bad], NOW)
    assert _volume(db) == before


def test_hostile_keys_travel_intact(tmp_path, events):
    keys = [
        "<script>alert(1)</script>",
        "x'; DROP TABLE rollup_minute; --",
        "tab\there\x01",
        "ü" * 4000,
    ]
    df = events[events.kind == "request"].head(len(keys)).copy()
    df["key"] = keys
    db = tmp_path / "s.duckdb"
    ingest_load.import_files(_cfg(db), [_write(df, tmp_path / "h.ndjson")], NOW)
    with store_db.reader(db) as con:
        stored = {r[0] for r in con.execute("SELECT key FROM cache_keys").fetchall()}
        m = metrics_window.compute(con, SPAN, "2h", top=10)
    assert stored == set(keys) and {k.key for k in m.top_keys} == set(keys)
    assert json.loads(json.dumps(metrics_window.to_json(m)))["topKeys"][0]["key"] in keys
