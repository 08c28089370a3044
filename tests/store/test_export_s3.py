"""Parquet export to S3-compatible object storage (a real moto server on
loopback): the same layout as a folder, read back equal to the views and
to the raw events; incremental (an unchanged day is not uploaded again, a
changed or deleted one is); the manifest written after its days; every bad
setting a clear error with exit code 2 and the secret nowhere."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from datetime import UTC, datetime, timedelta

import duckdb
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachemon.cli import main as cli_main
from cachemon.errors import ConfigError, InputError
from cachemon.redact import Redactor
from cachemon.store import db as store_db
from cachemon.store import export, objectstore
from tests.helpers import load, simulate
from tests.helpers.s3server import BUCKET, s3_server

START = datetime(2026, 11, 19, 20, 0, tzinfo=UTC)  # 8 hours across midnight
MORE = START + timedelta(hours=8)  # 2 more hours, all on the second day
DAY1, DAY2 = "2026-11-19", "2026-11-20"


@pytest.fixture(scope="module")
def s3():
    with s3_server() as server:
        yield server


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A store of 8 hours across midnight, and a copy with 2 more hours
    ingested into the second day; and the raw request events of each."""
    base = tmp_path_factory.mktemp("s3export")
    path = base / "cachemon.duckdb"
    parts, truth = simulate(8, START)
    load(path, parts, now=MORE)
    grown = base / "grown" / "cachemon.duckdb"
    grown.parent.mkdir()
    shutil.copytree(base, grown.parent, dirs_exist_ok=True, ignore=shutil.ignore_patterns("grown"))
    more, truth_more = simulate(2, MORE)
    load(grown, more, now=MORE + timedelta(hours=2))
    requests = truth[truth.kind == "request"]
    all_requests = pd.concat([requests, truth_more[truth_more.kind == "request"]])
    return path, requests, grown, all_requests


def _fs(s3):
    host = s3.endpoint.removeprefix("http://")
    return pafs.S3FileSystem(
        access_key=s3.key_id,
        secret_key=s3.secret,
        endpoint_override=host,
        scheme="http",
        region="us-east-1",
    )


def _keys(s3, prefix):
    """Every object key under `prefix`, relative to it."""
    infos = _fs(s3).get_file_info(pafs.FileSelector(f"{BUCKET}/{prefix}", recursive=True))
    cut = len(f"{BUCKET}/{prefix}/")
    return sorted(i.path[cut:] for i in infos if i.type == pafs.FileType.File)


def _dataset(s3, prefix, view):
    return ds.dataset(
        f"{BUCKET}/{prefix}/{view}", filesystem=_fs(s3), format="parquet", partitioning="hive"
    ).to_table()


def _export(con, to, s3, **kw):
    return {w.dataset: w for w in export.parquet(con, to, env=s3.env(), **kw)}


def test_s3_export_reads_back_equal_to_the_views_and_the_local_export(stores, s3, tmp_path):
    path, requests, _, _ = stores
    with store_db.reader(path) as con:
        written = _export(con, f"s3://{BUCKET}/team/cachemon", s3)
        export.parquet(con, tmp_path)
        for d in export.DATASETS:
            view = con.execute(f"SELECT * FROM v1.{d.view} ORDER BY ALL").df()
            assert written[d.view].rows == len(view)
            if not len(view):
                continue
            back = _dataset(s3, "team/cachemon", d.view).to_pandas()
            day = pd.to_datetime(back.pop("date").astype(str)).dt.date
            assert (day == pd.to_datetime(back[d.time], utc=True).dt.date).all()
            back = back.sort_values(list(view.columns)).reset_index(drop=True)
            pd.testing.assert_frame_equal(back, view, check_dtype=False, obj=d.view)
    # the same files as a folder export, plus the manifests beside them
    local = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert _keys(s3, "team/cachemon") == local
    assert f"requests_hour/date={DAY1}/data.parquet" in local
    assert "_manifest/requests_hour.json" in local
    # DuckDB reads the objects back; totals equal the raw events
    got = s3.client().get_object(
        Bucket=BUCKET, Key=f"team/cachemon/requests_day/date={DAY2}/data.parquet"
    )
    day2 = duckdb.sql(
        "SELECT sum(requests) FROM read_parquet($f)", params={"f": _tmp(tmp_path, got)}
    )
    truth = requests[requests.timestamp >= datetime(2026, 11, 20, tzinfo=UTC)].sample_interval
    assert day2.fetchall()[0][0] == pytest.approx(truth.sum(), rel=1e-12)
    total = _dataset(s3, "team/cachemon", "requests_minute").column("requests").to_numpy().sum()
    assert total == pytest.approx(requests.sample_interval.sum(), rel=1e-12)


def _tmp(tmp_path, got) -> str:
    p = tmp_path / "object.parquet"
    p.write_bytes(got["Body"].read())
    return str(p)


def test_unchanged_days_are_not_uploaded_and_changed_ones_are(stores, s3):
    path, _, grown, all_requests = stores
    to = f"s3://{BUCKET}/incremental"
    with store_db.reader(path) as con:
        first = _export(con, to, s3)
    assert all(w.uploaded == w.days for w in first.values())
    manifest_of = json.loads(
        s3.client()
        .get_object(Bucket=BUCKET, Key="incremental/_manifest/keys_hour.json")["Body"]
        .read()
    )
    assert sorted(manifest_of["days"]) == [DAY1, DAY2]

    s3.requests.clear()
    with store_db.reader(path) as con:
        again = _export(con, to, s3)
    assert s3.writes() == []  # not one PUT: the store did not change
    assert all(w.uploaded == 0 for w in again.values())
    assert {w.dataset: w.rows for w in again.values()} == {
        w.dataset: w.rows for w in first.values()
    }

    s3.requests.clear()
    with store_db.reader(grown) as con:
        grew = _export(con, to, s3)
    paths = {p for _, p in s3.writes()}
    assert paths, "the second day grew: it must be uploaded again"
    assert not [p for p in paths if f"date={DAY1}" in p]  # the first day did not change
    assert f"/{BUCKET}/incremental/requests_minute/date={DAY2}/data.parquet" in paths
    assert f"/{BUCKET}/incremental/_manifest/requests_minute.json" in paths
    assert grew["requests_minute"].uploaded == 1
    total = _dataset(s3, "incremental", "requests_minute").column("requests").to_numpy().sum()
    assert total == pytest.approx(all_requests.sample_interval.sum(), rel=1e-12)


def test_manifest_is_written_after_the_days_it_lists(stores, s3):
    path, _, _, _ = stores
    s3.requests.clear()
    with store_db.reader(path) as con:
        written = _export(con, f"s3://{BUCKET}/ordered", s3)
    order = [p for _, p in s3.writes()]
    for d in export.DATASETS:
        if not written[d.view].days:
            continue
        manifest = f"/{BUCKET}/ordered/_manifest/{d.view}.json"
        days = [i for i, p in enumerate(order) if p.startswith(f"/{BUCKET}/ordered/{d.view}/")]
        assert days and max(days) < min(i for i, p in enumerate(order) if p == manifest)
        body = json.loads(
            s3.client()
            .get_object(Bucket=BUCKET, Key=f"ordered/_manifest/{d.view}.json")["Body"]
            .read()
        )
        listed = {k for k in _keys(s3, f"ordered/{d.view}")}
        assert {f"date={day}/data.parquet" for day in body["days"]} == listed
        assert sum(e["rows"] for e in body["days"].values()) == written[d.view].rows


def test_a_deleted_object_is_uploaded_again_and_since_leaves_earlier_days(stores, s3):
    path, _, _, _ = stores
    to = f"s3://{BUCKET}/since"
    with store_db.reader(path) as con:
        written = _export(con, to, s3, since=datetime(2026, 11, 20, 3, tzinfo=UTC))
    assert written["requests_hour"].days == 1
    assert not [k for k in _keys(s3, "since") if f"date={DAY1}" in k]
    s3.client().delete_object(Bucket=BUCKET, Key=f"since/gauges_minute/date={DAY2}/data.parquet")
    s3.requests.clear()
    with store_db.reader(path) as con:
        again = _export(con, to, s3, since=datetime(2026, 11, 20, tzinfo=UTC))
    # only the missing object; its manifest entry, the same again, stays as it was
    assert [p for _, p in s3.writes()] == [
        f"/{BUCKET}/since/gauges_minute/date={DAY2}/data.parquet"
    ]
    assert again["gauges_minute"].uploaded == 1


def test_a_folder_export_is_incremental_too(stores, tmp_path):
    path, _, grown, _ = stores
    with store_db.reader(path) as con:
        export.parquet(con, tmp_path)
        before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.parquet")}
        time.sleep(0.01)
        again = export.parquet(con, tmp_path)
    assert all(w.uploaded == 0 for w in again)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.parquet")} == before
    with store_db.reader(grown) as con:
        export.parquet(con, tmp_path)
    changed = {
        p.relative_to(tmp_path).parts[1] for p in before if p.stat().st_mtime_ns != before[p]
    }
    assert changed == {f"date={DAY2}"}


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong secret", "refused the credentials"),
        ("wrong key id", "refused the credentials"),
        ("missing bucket", "bucket 'no-such-bucket' does not exist"),
        ("unreachable", "cannot be reached"),
        ("bad endpoint", "must be an http(s)://host[:port] URL"),
        ("no secret", "CACHEMON_S3_SECRET_ACCESS_KEY or AWS_SECRET_ACCESS_KEY"),
        ("credentials in the endpoint", "no user, path, query or fragment"),
        ("secret in the path", "no user, path, query or fragment"),
        ("secret in the query", "no user, path, query or fragment"),
        ("secret in the fragment", "no user, path, query or fragment"),
        ("malformed host", "must be an http(s)://host[:port] URL"),
        ("bad bucket name", "is not a bucket name"),
    ],
)
def test_a_bad_setting_is_a_clear_error_without_the_secret(
    stores, s3, case, expected, monkeypatch, capfd, caplog
):
    path, _, _, _ = stores
    secret = s3.secret if case != "wrong secret" else "Wr0ngSecretValue/+xyzzy1234567"
    env = s3.env(CACHEMON_S3_SECRET_ACCESS_KEY=secret)
    bucket = BUCKET
    if case == "wrong key id":
        env["CACHEMON_S3_ACCESS_KEY_ID"] = "AKIAWRONGWRONGWRONG1"
    elif case == "missing bucket":
        bucket = "no-such-bucket"
    elif case == "unreachable":
        env["CACHEMON_S3_ENDPOINT"] = f"http://127.0.0.1:{_closed_port()}"
    elif case == "bad endpoint":
        env["CACHEMON_S3_ENDPOINT"] = "127.0.0.1:9000/path"
    elif case == "credentials in the endpoint":
        env["CACHEMON_S3_ENDPOINT"] = s3.endpoint.replace("//", f"//{s3.key_id}:{secret}@")
    elif case == "secret in the path":
        env["CACHEMON_S3_ENDPOINT"] = f"{s3.endpoint}/{secret}"
    elif case == "secret in the query":
        env["CACHEMON_S3_ENDPOINT"] = f"{s3.endpoint}?k={secret}"
    elif case == "secret in the fragment":  # urllib keeps it out of the netloc
        env["CACHEMON_S3_ENDPOINT"] = f"{s3.endpoint}#{secret}"
    elif case == "malformed host":  # urllib raises ValueError on these
        env["CACHEMON_S3_ENDPOINT"] = "http://[::1"
    elif case == "no secret":
        del env["CACHEMON_S3_SECRET_ACCESS_KEY"]
    elif case == "bad bucket name":
        bucket = "Bad_Bucket"
    for k in [k for k in os.environ if k.startswith(("AWS_", "CACHEMON_S3_"))]:
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    caplog.set_level(logging.DEBUG)
    s3.requests.clear()
    t = time.monotonic()
    code = cli_main.main(["--db", str(path), "export", "--to", f"s3://{bucket}/x"])
    assert time.monotonic() - t < 20  # fails fast: no long retries, no hang
    out, err = capfd.readouterr()
    assert code == 2
    assert err.startswith("cachemon: error: ") and expected in err, err
    assert s3.writes() == []
    for text in (out, err, caplog.text):
        assert secret not in text
        assert s3.secret not in text


def test_the_aws_names_work_and_the_settings_hide_the_secret(stores, s3):
    path, _, _, _ = stores
    settings = objectstore.S3Settings.from_env(s3.env("AWS_"))
    assert s3.secret not in repr(settings) and s3.key_id not in repr(settings)
    assert settings.region == "auto" and settings.endpoint == s3.endpoint
    assert objectstore.S3Settings.from_env(s3.env() | {"CACHEMON_S3_REGION": ""}).region == "auto"
    with store_db.reader(path) as con:
        written = export.parquet(con, f"s3://{BUCKET}/aws-names", env=s3.env("AWS_"))
    assert sum(w.rows for w in written) > 0
    with pytest.raises(ConfigError, match="CACHEMON_S3_ENDPOINT"):
        objectstore.S3Settings.from_env({})
    with pytest.raises(InputError, match="prefix"):
        objectstore.S3Target(f"s3://{BUCKET}/a//b", settings, Redactor())


@given(
    st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=8),
            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
            max_leaves=10,
        ).map(lambda v: json.dumps({"format": export.FORMAT, "days": v}).encode()),
    )
)
def test_any_manifest_text_reads_as_some_days_or_none(data):
    """A damaged or foreign manifest never stops an export: it lists no day
    (so every day is written again) or only well-formed entries."""
    days = export._manifest(data)
    assert isinstance(days, dict)
    for e in days.values():
        assert set(e) == {"rows", "bytes", "fingerprint"}


def test_a_day_is_written_again_when_a_new_secret_must_come_out_of_it(tmp_path):
    """The message views are fingerprinted as written, redacted: a secret
    set after an export (an older store holds it in an error) rewrites the
    days that hold it, and only them."""
    db, secret = tmp_path / "old.duckdb", "canary-export-secret-5be1"
    parts, _ = simulate(2, START)
    load(db, parts, now=MORE)
    with store_db.writer(db, MORE) as con:
        con.execute(
            "INSERT INTO job_runs VALUES ('ingest', $t, $t, 'error', $e, 1, 0)",
            {"t": START + timedelta(hours=1), "e": f"HTTP 401: token {secret} refused"},
        )
    with store_db.reader(db) as con:
        export.parquet(con, tmp_path / "out", redactor=Redactor(), env={})
        assert pd.read_parquet(tmp_path / "out" / "job_runs")["error"].str.contains(secret).all()
        again = {
            w.dataset: w
            for w in export.parquet(con, tmp_path / "out", redactor=Redactor().plus(secret), env={})
        }
    assert again["job_runs"].uploaded == 1
    assert sum(w.uploaded for w in again.values()) == 1
    errors = pd.read_parquet(tmp_path / "out" / "job_runs")["error"].tolist()
    assert errors == ["HTTP 401: token [redacted] refused"]


def test_a_large_day_goes_up_whole_in_parts(s3):
    """A busy day's file (tens of MB) is a multipart upload: it appears
    only when complete, and reads back byte for byte."""
    env = s3.env()
    target = objectstore.open_target(
        f"s3://{BUCKET}/large", env, Redactor().plus(env["CACHEMON_S3_SECRET_ACCESS_KEY"])
    )
    data = bytes(range(256)) * (12 * 4096 + 7)  # 12 MB and a bit: more than one part
    s3.requests.clear()
    target.put("keys_hour/date=2026-11-20/data.parquet", data)
    methods = [(m, q.split("=")[0]) for m, p, q in s3.requests if m in ("PUT", "POST")]
    assert ("POST", "uploads") in methods and methods[-1] == ("POST", "uploadId")
    assert target.sizes("keys_hour") == {"keys_hour/date=2026-11-20/data.parquet": len(data)}
    assert target.read("keys_hour/date=2026-11-20/data.parquet") == data
    assert target.read("keys_hour/date=2026-11-21/data.parquet") is None


def test_a_server_that_never_answers_fails_in_attempts_times_the_timeout(stores, s3, monkeypatch):
    """A server that accepts and says nothing cost 3 minutes (60 s a try)."""
    path, _, _, _ = stores
    monkeypatch.setattr(objectstore, "REQUEST_TIMEOUT", 1.0)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        env = s3.env() | {"CACHEMON_S3_ENDPOINT": f"http://127.0.0.1:{silent.getsockname()[1]}"}
        t = time.monotonic()
        with store_db.reader(path) as con, pytest.raises(InputError, match="cannot be reached"):
            export.parquet(con, f"s3://{BUCKET}/silent", env=env)
        assert time.monotonic() - t < objectstore.ATTEMPTS * 1.0 + 10
    finally:
        silent.close()


@pytest.mark.parametrize(
    "data",
    [
        b'{"format": %d, "days": {"2026-11-19": {"rows": Infinity, "bytes": 1, "fingerprint": "f"}}}',
        b'{"format": %d, "days": {"2026-11-19": {"rows": 1, "bytes": 1e999, "fingerprint": "f"}}}',
        b"[" * 100_000 + b"]" * 100_000,
    ],
    ids=["infinite rows", "huge bytes", "deep nesting"],
)
def test_a_manifest_with_numbers_or_nesting_json_allows_reads_as_none(data):
    """json.loads accepts Infinity and 1e999, and recursion has a limit:
    the export crashed with a traceback on them."""
    if b"%d" in data:
        data = data % export.FORMAT
    assert export._manifest(data) == {}


@pytest.mark.parametrize("to", ["s3:/b/p", "s3//b/p", "S3:b/p"])
def test_a_mistyped_bucket_is_refused_not_written_as_a_folder(to, tmp_path):
    with pytest.raises(InputError, match="neither a folder nor s3://bucket/prefix"):
        objectstore.open_target(to, {}, Redactor())
    assert isinstance(
        objectstore.open_target(str(tmp_path / "s3"), {}, Redactor()), objectstore.DirTarget
    )


def test_a_planted_symlink_at_a_temporary_name_is_never_followed(stores, tmp_path):
    """The temporary file had a predictable name: a symlink planted there
    made the export overwrite the link's target."""
    path, _, _, _ = stores
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    with store_db.reader(path) as con:
        export.parquet(con, out)
    days = [p.parent for p in out.rglob("data.parquet")]
    for day in days:
        (day / "data.parquet").unlink()
        for pid in range(os.getpid() - 5, os.getpid() + 300):
            (day / f".data.parquet.{pid}.tmp").symlink_to(victim)
    with store_db.reader(path) as con:
        export.parquet(con, out)
    assert victim.read_text() == "keep me"
    for day in days:
        f = day / "data.parquet"
        assert f.is_file() and not f.is_symlink() and f.stat().st_mode & 0o777 == 0o644
