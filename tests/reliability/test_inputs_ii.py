"""Inputs, arguments, outbound URLs and dashboard settings that used to end
in a traceback, a hang or unbounded memory: each is now one clear message
(`cachemon: error: ...`, exit 2, or a warning) and nothing stored changes.

- a config "file" that is a device, a pipe or a huge file;
- event files with a duplicate column, uint64 values of 2**64-1, control
  characters in names, gauge rows only, or a path that is a folder or a pipe;
- `export --to` an empty path, a path under /proc, a folder holding a file
  where a view's folder must go;
- an outbound URL (CF_API_BASE, the heartbeat URL) with a port out of range
  or a broken IPv6 literal, and any failure inside the async HTTP stack;
- a silence reason with ESC or CR, and one in an older store;
- CACHEMON_REFRESH_SECONDS that is not a number of seconds.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cachemon import config, outbound
from cachemon.alerts import silences
from cachemon.clock import utcnow
from cachemon.errors import ConfigError, InputError
from cachemon.ingest import load as ingest_load
from cachemon.runner import heartbeat
from cachemon.sources import files
from cachemon.store import db as store_db
from cachemon.store import export
from tests.helpers import ROOT
from tests.helpers.eventfiles import NOW, START
from tests.helpers.eventfiles import cfg as _cfg
from tests.helpers.eventfiles import refused as _refused
from tests.helpers.eventfiles import row as _row
from tests.helpers.eventfiles import seeded as _seeded
from tests.helpers.eventfiles import stored as _stored
from tests.helpers.eventfiles import write as _write

SECRET = "5f0c7a2e-secret"


def _cli(env, *args, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "cachemon", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _env(tmp_path, **extra):
    env = dict(os.environ, PYTHONPATH=str(ROOT), CACHEMON_DB=str(tmp_path / "s.duckdb"))
    env.update(extra)
    env.pop("CACHEMON_CONFIG", None)
    return env


def _one_line_error(p, *expected):
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cachemon: error: "), p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    for part in expected:
        assert part in lines[0], (part, lines[0])
    return lines[0]


# --- 7: the config loader reads only a regular file of bounded size ---------


def test_a_config_that_is_a_device_pipe_or_huge_is_refused_at_once(tmp_path, results):
    fifo = tmp_path / "c.toml"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.toml"
    huge.write_text("# " + "x" * (config.MAX_CONFIG_BYTES + 10) + "\n")
    cases = [
        ("/dev/zero", "is a device"),
        ("/dev/urandom", "is a device"),
        (str(fifo), "is a pipe"),
        (str(huge), "larger than 1,048,576 bytes"),
    ]
    for path, why in cases:
        t0 = time.monotonic()
        p = _cli(_env(tmp_path), "--config", path, "metrics", timeout=30)
        took = time.monotonic() - t0
        _one_line_error(p, f"config file {path} ", why)
        assert took < 15, (path, took)  # not a hang, not gigabytes read first
    results(
        "config from a device, pipe or huge file",
        "--config /dev/zero, /dev/urandom, a FIFO, 1 MiB+",
        len(cases),
        "one line, exit 2, at once (nothing read past the cap)",
    )


# --- 8 and 13: event files ---------------------------------------------------


def _parquet(path, columns: dict, names=None):
    arrays = list(columns.values())
    pq.write_table(pa.Table.from_arrays(arrays, names=names or list(columns)), path)
    return path


def test_duplicate_columns_are_refused_for_import_and_trace(tmp_path, results):
    cfg = _seeded(tmp_path)
    csv = tmp_path / "dup.csv"
    csv.write_text(
        f"timestamp,tier,key,endpoint,latency_ms,latency_ms\n{START.isoformat()},edge,k,title,1,2\n"
    )
    rows = [_row(1)]
    cols = {
        n: pa.array([r[n] for r in rows])
        for n in ("timestamp", "tier", "key", "endpoint", "latency_ms")
    }
    par = _parquet(
        tmp_path / "dup.parquet",
        {**cols, "x": cols["latency_ms"]},
        names=["timestamp", "tier", "key", "endpoint", "latency_ms", "latency_ms"],
    )
    for bad in (csv, par):
        _refused(cfg, bad, "column(s) latency_ms appear more than once")
        with pytest.raises(InputError, match="latency_ms appear more than once"):
            files.read(bad)  # the reader `ttl whatif --trace` uses
    p = _cli(_env(tmp_path), "ttl", "whatif", "--endpoint", "title", "--trace", str(csv))
    _one_line_error(p, "latency_ms appear more than once")
    results(
        "duplicate column in an event file",
        "latency_ms,latency_ms in CSV and Parquet (import, --trace)",
        2,
        "one line naming the column; store unchanged",
    )


@pytest.mark.parametrize("field", ["timestamp", "latency_ms", "bytes", "sample_interval"])
def test_uint64_extremes_are_refused_with_row_and_field(tmp_path, field, results):
    cfg = _seeded(tmp_path)
    cols = {
        "timestamp": pa.array([int(START.timestamp() * 1000)], pa.uint64()),
        "tier": pa.array(["edge"]),
        "key": pa.array(["k"]),
        "endpoint": pa.array(["title"]),
        "latency_ms": pa.array([3], pa.uint64()),
    }
    cols[field] = pa.array([2**64 - 1], pa.uint64())
    msg = _refused(cfg, _parquet(tmp_path / "u.parquet", cols), f"row 1: {field} ")
    assert (
        ("beyond the limit" in msg)
        if field != "timestamp"
        else ("not epoch milliseconds" in msg and "nanoseconds" not in msg)
    )
    results(
        f"uint64 2**64-1 in {field} (Parquet)",
        "one row",
        1,
        "refused with row and field; store unchanged",
    )


@pytest.mark.parametrize("field", ["endpoint", "experiment", "cohort"])
def test_control_characters_in_names_are_refused_but_keys_may_hold_anything(
    tmp_path, field, results
):
    cfg = _seeded(tmp_path)
    for char in ("\x00", "\x1b", "\r", "\x9b"):
        rows = [_row(i) for i in range(20, 24)]
        rows[1][field] = f"ti{char}tle"
        _refused(
            cfg, _write(tmp_path / "bad.ndjson", rows), f"line 2: {field} ", "control character"
        )
    # A cache key comes from the internet: it may hold anything and is stored as it is.
    ingest_load.import_files(
        cfg, [_write(tmp_path / "key.ndjson", [_row(40, key="k\x1b[31m\r\x00")])], NOW
    )
    assert _stored(cfg) == (2, 5.0)
    results(
        f"control character in {field}",
        "NUL, ESC, CR, CSI in an NDJSON field",
        4,
        "refused with file, line and field; keys untouched",
    )


def test_a_file_of_gauge_rows_only_imports_and_a_request_row_still_needs_its_columns(
    tmp_path, results
):
    cfg = _seeded(tmp_path)
    gauges = [
        {"timestamp": f"{START.isoformat()}", "kind": "queue_depth", "latency_ms": 7.0},
        {
            "timestamp": f"{(START + timedelta(minutes=1)).isoformat()}",
            "kind": "kv_storage_bytes",
            "latency_ms": 5e9,
        },
    ]
    for suffix in (".ndjson", ".csv", ".parquet"):
        folder = tmp_path / suffix[1:]
        folder.mkdir()
        fresh = _cfg(folder)
        ingest_load.import_files(fresh, [_write(folder / f"g{suffix}", gauges)], NOW)
        with store_db.reader(fresh.store.path) as con:
            got = dict(
                con.execute(
                    "SELECT name, sum(value_sum) FROM gauge_minute GROUP BY name"
                ).fetchall()
            )
        assert got == {"queue_depth": 7.0, "kv_storage_bytes": 5e9}, (suffix, got)
    mixed = gauges + [{"timestamp": START.isoformat(), "kind": "request", "latency_ms": 3.0}]
    _refused(
        cfg,
        _write(tmp_path / "mixed.ndjson", mixed),
        "missing required column(s) tier, key, endpoint",
        "request rows need them",
    )
    results(
        "gauge rows only",
        "a file without tier, key, endpoint (3 formats)",
        3,
        "imported as the README says; with a request row: refused, store unchanged",
    )


def test_a_folder_device_or_pipe_is_named_for_what_it_is(tmp_path, results):
    cfg = _seeded(tmp_path)
    folder = tmp_path / "events.ndjson"
    folder.mkdir()
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    dev = tmp_path / "zero.ndjson"
    dev.symlink_to("/dev/zero")
    cases = [
        (folder, "is a folder"),
        (fifo, "is a pipe"),
        (dev, "is a device"),
        (tmp_path / "none.ndjson", "no such file"),
    ]
    before = _stored(cfg)
    for path, why in cases:
        with pytest.raises(InputError, match=why):
            ingest_load.import_files(cfg, [path], NOW)
    assert _stored(cfg) == before
    results(
        "import of a folder, device or FIFO",
        "4 kinds of path",
        len(cases),
        "named for what it is, at once; store unchanged",
    )


# --- 8: export targets -------------------------------------------------------


def test_export_refuses_bad_targets_in_one_line(tmp_path, results):
    cfg = _seeded(tmp_path)
    blocked = tmp_path / "out"
    blocked.mkdir()
    (blocked / "requests_minute").write_text("a file where a folder must go")
    work = tmp_path / "cwd"
    work.mkdir()
    with store_db.reader(cfg.store.path) as con:
        with pytest.raises(InputError, match="export target is empty"):
            export.parquet(con, "", None)
        for target, why in ((blocked, "Not a directory"), ("/proc/self/x", "cannot write")):
            with pytest.raises(InputError, match=why) as err:
                export.parquet(con, target, None)
            assert str(err.value).startswith(
                f"export target {target}: cannot write requests_minute/"
            )
    assert (blocked / "requests_minute").read_text() == "a file where a folder must go"
    env = _env(tmp_path, CACHEMON_DB=cfg.store.path)
    p = subprocess.run(
        [sys.executable, "-m", "cachemon", "export", "--to", ""],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    _one_line_error(p, "export target is empty")
    assert list(work.iterdir()) == []  # nothing written into the current folder
    results(
        "export to a bad target",
        "--to '', a path under /proc, a file where a view folder goes",
        3,
        "one line, exit 2; nothing written",
    )


# --- 8: outbound URLs --------------------------------------------------------

BAD_URLS = ["http://127.0.0.1:99999/x", "http://[::1/x", "http://[zz]/x", "http://:80/x"]


def test_every_bounded_call_turns_a_bad_url_into_an_outbound_error(results):
    for url in BAD_URLS:
        with pytest.raises(outbound.BadRequest) as err:
            outbound.call("GET", url + SECRET, limit=1, max_bytes=10)
        assert SECRET not in str(err.value)
    results(
        "outbound URL with port out of range or bad IPv6",
        "4 URLs",
        len(BAD_URLS),
        "BadRequest naming the problem, never the URL",
    )


class _Failing(httpx.AsyncBaseTransport):
    """A transport that fails the way the async stack does (ExceptionGroup
    from a task group, OverflowError from the socket layer)."""

    def __init__(self, exc):
        self.exc = exc

    async def handle_async_request(self, request):
        raise self.exc


@pytest.mark.parametrize(
    "exc",
    [
        ExceptionGroup("x", [OverflowError("port " + SECRET)]),
        OverflowError("connect(): port must be 0-65535 " + SECRET),
        ValueError(SECRET),
    ],
)
def test_any_failure_inside_a_call_is_an_outbound_error(exc):
    with pytest.raises(outbound.OutboundError) as err:
        outbound.call("GET", "http://127.0.0.1:1/", limit=2, max_bytes=10, transport=_Failing(exc))
    assert SECRET not in str(err.value) and type(
        exc if not isinstance(exc, ExceptionGroup) else exc.exceptions[0]
    ).__name__ in str(err.value)


def test_pull_with_a_port_out_of_range_is_one_line(tmp_path):
    p = _cli(
        _env(
            tmp_path,
            CF_API_BASE=f"http://127.0.0.1:99999/{SECRET}",
            CF_API_TOKEN="tok-" + SECRET,
            CF_ACCOUNT_ID="acc",
        ),
        "pull",
    )
    line = _one_line_error(p, "port is outside 1-65535")
    assert SECRET not in p.stderr + p.stdout, line


@pytest.mark.parametrize(
    "url", ["http://[::1", f"http://127.0.0.1:99999/{SECRET}", "http://[zz]/" + SECRET]
)
def test_a_heartbeat_url_that_can_never_be_pinged_stops_the_runner_at_start(tmp_path, url, results):
    with pytest.raises(ConfigError) as err:
        heartbeat.Target.from_env({"CACHEMON_HEARTBEAT_URL": url})
    assert SECRET not in str(err.value) and "[" not in str(err.value)
    env = _env(tmp_path, CACHEMON_HEARTBEAT_URL=url)
    p = subprocess.run(
        [sys.executable, "-m", "jobs", "--list"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2, p.stderr[-2000:]
    assert (
        "Traceback" not in p.stderr
        and SECRET not in p.stderr
        and "CACHEMON_HEARTBEAT_URL" in p.stderr
    )
    results(
        f"heartbeat URL {url.split('/')[2][:12]}…",
        "at runner start",
        1,
        "ConfigError exit 2, URL not shown",
    )


def test_a_ping_failure_of_any_kind_is_a_warning_never_a_thread_traceback(
    caplog, monkeypatch, results
):
    caplog.set_level(logging.WARNING)
    crashes = []
    monkeypatch.setattr(
        threading, "excepthook", crashes.append
    )  # where a thread's traceback would go
    # Built by hand (from_env refuses it): the port cannot even be parsed for the log line.
    p = heartbeat.Pinger(heartbeat.Target(f"http://127.0.0.1:99999/{SECRET}", deadline_s=1))
    assert p.ping()
    p.wait(5)
    assert not crashes and p.failed == 1
    assert "heartbeat ping" in caplog.text and SECRET not in caplog.text
    results(
        "heartbeat ping with an unparseable port",
        "a Target built by hand",
        1,
        "one warning, no thread traceback",
    )


# --- 13: silences ------------------------------------------------------------


@pytest.mark.parametrize("field", ["reason", "endpoint", "created_by"])
def test_silences_refuse_control_characters_and_stored_ones_print_escaped(tmp_path, field, results):
    cfg = _seeded(tmp_path)
    args = {"reason": "deploy", "endpoint": "", "created_by": "ops"}
    args[field] = "ok\x1b[2J\rhidden" if field != "endpoint" else "title\nfake"
    with store_db.writer(cfg.store.path, NOW) as con:
        with pytest.raises(InputError, match="control character"):
            silences.add_silence(con, "p99_latency", timedelta(hours=1), now=NOW, **args)
        assert con.execute("SELECT count(*) FROM silences").fetchone()[0] == 0
        # An older store may already hold one: it is printed escaped.
        real_now = utcnow()  # `alerts silences` lists what is active now
        con.execute(
            "INSERT INTO silences VALUES (7, 'p99_latency', '', ?, ?, ?, ?, 'ops', NULL)",
            [
                real_now - timedelta(hours=1),
                real_now + timedelta(days=1),
                "evil\x1b[2J\rreason",
                real_now,
            ],
        )
    p = _cli(_env(tmp_path, CACHEMON_DB=cfg.store.path), "alerts", "silences")
    assert p.returncode == 0, p.stderr
    assert "\x1b" not in p.stdout and "\r" not in p.stdout and "evil\\x1b[2J\\rreason" in p.stdout
    results(
        f"control character in a silence {field}",
        "ESC + CR (or a newline)",
        1,
        "refused; a stored one printed escaped",
    )


# --- 13: metrics message -----------------------------------------------------


def test_metrics_before_the_data_names_the_span_the_store_holds(tmp_path):
    cfg = _seeded(tmp_path)
    p = _cli(_env(tmp_path, CACHEMON_DB=cfg.store.path), "metrics", "--at", "1970-01-01")
    line = _one_line_error(p, "no requests in")
    held = line.split("the store holds data from ")[1]
    lo, hi = held.split(" to ")
    assert lo < hi and hi.startswith(START.strftime("%Y-%m-%d")), line


# --- 8: dashboard refresh setting --------------------------------------------


@pytest.mark.parametrize("text", ["abc", "nan", "1e999", "-1", "inf", "0"])
def test_a_bad_refresh_setting_falls_back_with_a_warning(text):
    from pages.shared.common import REFRESH_DEFAULT_S, parse_refresh

    every, warning = parse_refresh(text)
    assert every == timedelta(seconds=REFRESH_DEFAULT_S)
    assert "CACHEMON_REFRESH_SECONDS" in warning and "instead" in warning
    assert parse_refresh("45") == (timedelta(seconds=45), "")


def test_the_dashboard_runs_with_a_bad_refresh_setting_and_says_so(tmp_path, results):
    from playwright.sync_api import sync_playwright

    from tests.helpers.servers import chromium, streamlit_server

    cfg = _seeded(tmp_path)
    with streamlit_server(
        {"CACHEMON_DB": cfg.store.path, "CACHEMON_REFRESH_SECONDS": "1e999"}
    ) as url:
        with sync_playwright() as p:
            browser = chromium(p)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(url)
                page.get_by_text(
                    "is not a number of seconds from 5 to 86400", exact=False
                ).first.wait_for(timeout=60_000)
                page.get_by_text("refreshes every 30 s", exact=False).first.wait_for(timeout=30_000)
                text = page.inner_text("body")
            finally:
                browser.close()
    assert "OverflowError" not in text and "ValueError" not in text and "Traceback" not in text
    results(
        "dashboard refresh setting 1e999",
        "CACHEMON_REFRESH_SECONDS (also abc, nan, -1: unit test)",
        1,
        "pages render at the default 30 s, a warning in the sidebar says why",
    )
