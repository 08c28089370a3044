"""Top keys count exactly the window asked for (issue 20 §1), from every
source (simulator windows, an imported file, an Analytics Engine pull), and
say so when retention has made that impossible."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachemon import config
from cachemon import settings as cm_settings
from cachemon.cli import main as cli_main
from cachemon.clock import DAY, HOUR, Period, Window, iso
from cachemon.costs import optimize
from cachemon.events import ENDPOINTS
from cachemon.ingest import keys, retention
from cachemon.ingest import load as ingest_load
from cachemon.sources.analytics_engine import Client, Credentials
from cachemon.store import db as store_db
from cachemon.store import topkeys
from cachemon.store.queries import data_end
from cachemon.testing.ae_emulator import Emulator
from cachemon.usecases import metrics_report
from tests.helpers import load, simulate

# 12:00 on the 18th to 18:00 on the 19th: windows cross hours and midnight.
START = datetime(2026, 11, 18, 12, tzinfo=UTC)
HOURS = 30
END = START + timedelta(hours=HOURS)
TOKEN = "topkeys-token"


def _cfg(db):
    return config.with_db(cm_settings.Config(), str(db))


def truth(df: pd.DataFrame, window: Window, n: int, endpoint: str | None = None):
    """(key, requests) of the n busiest keys of `window`, from raw events."""
    r = df[(df.timestamp >= window.start) & (df.timestamp < window.end)]
    if endpoint is not None:
        r = r[r.endpoint == endpoint]
    top = r.groupby("key").sample_interval.sum().reset_index()
    top = top.sort_values(["sample_interval", "key"], ascending=[False, True]).head(n)
    return list(zip(top.key, top.sample_interval))


def assert_same_top(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> None:
    """Counts equal in order; keys equal except among ties at the cut."""
    assert [c for _, c in got] == pytest.approx([c for _, c in want], rel=1e-12)
    if want:
        cut = want[-1][1]
        assert {k for k, c in got if c > cut} == {k for k, c in want if c > cut}


def _simulator_store(path, parts):
    load(path, parts)  # six-hour windows, as the demo's daily chunks are long


def _file_store(path, parts):
    table = pa.concat_tables([f.table for _, f in parts])
    events = path.parent / "events.parquet"
    pq.write_table(table, events)
    ingest_load.import_files(_cfg(path), [events], END + DAY)


def _ae_store(path, parts):
    with Emulator(TOKEN) as emu:
        for _, f in parts:
            emu.add(f)
        creds = Credentials(emu.account, TOKEN, emu.base)
        ae = replace(cm_settings.AnalyticsEngineConfig(), timeout=timedelta(seconds=5))
        client = Client(creds, ae, sleep=lambda s: None, jitter=lambda: 0.5)
        ingest_load.pull(_cfg(path), client, END, since=START, until=END)


BUILDERS = {"simulator": _simulator_store, "file": _file_store, "analytics_engine": _ae_store}


@pytest.fixture(scope="module")
def events():
    parts, df = simulate(HOURS, start=START, step=timedelta(hours=6))
    return parts, df[df.kind == "request"]


@pytest.fixture(scope="module", params=list(BUILDERS))
def store(request, events, tmp_path_factory):
    parts, df = events
    path = tmp_path_factory.mktemp(request.param) / "s.duckdb"
    BUILDERS[request.param](path, parts)
    return path, df


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.integers(min_value=0, max_value=HOURS * 60 - 1),
    st.integers(min_value=1, max_value=HOURS * 60),
    st.sampled_from([None, *ENDPOINTS]),
    st.integers(min_value=1, max_value=30),
)
def test_any_window_counts_exactly_that_window(store, start_min, length_min, endpoint, n):
    path, df = store
    s = START + timedelta(minutes=start_min)
    window = Window(s, min(s + timedelta(minutes=length_min), END))
    with store_db.reader(path) as con:
        top = topkeys.top_keys(con, window, endpoint, n)
    assert top.exact and top.counted == window
    assert_same_top([(r[0], sum(r[2:6])) for r in top.rows], truth(df, window, n, endpoint))


@pytest.mark.parametrize(
    "at,period",
    [
        (datetime(2026, 11, 19, 13, 37, tzinfo=UTC), "15m"),  # the case
        (datetime(2026, 11, 19, 0, 10, tzinfo=UTC), "1h"),  # across midnight
        (datetime(2026, 11, 19, 13, 37, tzinfo=UTC), "24h"),  # ragged days and hours
    ],
)
def test_metrics_top_keys_are_of_the_period_itself(store, at, period):
    path, df = store
    with store_db.reader(path) as con:
        report = metrics_report.build(
            con, _cfg(path), Period.parse(period), at, top=16, latest=False
        )
    doc = report.to_json()
    window = Window.ending(at, Period.parse(period).length)
    assert doc["topKeysExact"] is True
    assert doc["topKeysWindow"] == {"start": doc["window"]["start"], "end": doc["window"]["end"]}
    got = [(k["key"], k["requests"]) for k in doc["topKeys"]]
    assert_same_top(got, truth(df, window, 16))
    # The hit rate of each key is its own over the period, not over whole hours.
    r = df[(df.timestamp >= window.start) & (df.timestamp < window.end)]
    for k in doc["topKeys"][:5]:
        mine = r[r.key == k["key"]]
        hit = 100 * mine[mine.tier != "api"].sample_interval.sum() / mine.sample_interval.sum()
        assert k["hitRate"] == pytest.approx(hit, abs=1e-3)


# -- after retention --------------------------------------------------------------------

NOW = datetime(2026, 11, 20, 6, tzinfo=UTC)
# The minute horizon at the 19th 00:00 (minute_days=1); hours kept for 400 days.
KEEP = cm_settings.RetentionConfig(minute_days=1, hour_days=400)
HORIZON = datetime(2026, 11, 19, tzinfo=UTC)


@pytest.fixture(scope="module")
def compacted(events, tmp_path_factory):
    parts, df = events
    path = tmp_path_factory.mktemp("compacted") / "s.duckdb"
    load(path, parts)
    with store_db.writer(path, NOW) as con:
        result = retention.apply(con, NOW, KEEP)
    assert result.horizons.minute == HORIZON and result.key_minute_rows > 0
    return path, df


@pytest.mark.parametrize(
    "window,counted",
    [
        # Older than the minute horizon: ragged edges count their whole hours.
        (
            Window(START + timedelta(hours=1, minutes=20), START + timedelta(hours=3, minutes=5)),
            Window(START + timedelta(hours=1), START + timedelta(hours=4)),
        ),
        # Starting before the horizon, ending after it: only the start widens.
        (
            Window(HORIZON - timedelta(minutes=50), HORIZON + timedelta(hours=2, minutes=13)),
            Window(HORIZON - HOUR, HORIZON + timedelta(hours=2, minutes=13)),
        ),
        # Whole hours before the horizon are exact.
        (
            Window(START + timedelta(hours=2), HORIZON + timedelta(minutes=7)),
            Window(START + timedelta(hours=2), HORIZON + timedelta(minutes=7)),
        ),
        # After the horizon: exact to the minute (the 13:22-13:37).
        (
            Window(
                HORIZON + timedelta(hours=13, minutes=22), HORIZON + timedelta(hours=13, minutes=37)
            ),
            Window(
                HORIZON + timedelta(hours=13, minutes=22), HORIZON + timedelta(hours=13, minutes=37)
            ),
        ),
    ],
)
def test_windows_older_than_the_minute_horizon_are_flagged(compacted, window, counted):
    path, df = compacted
    with store_db.reader(path) as con:
        top = topkeys.top_keys(con, window, None, 12)
    assert top.counted == counted
    assert top.exact is (counted == window)
    # The counts are exactly those of the span it says it counted.
    assert_same_top([(r[0], sum(r[2:6])) for r in top.rows], truth(df, counted, 12))


def test_compacted_hours_are_flagged_on_the_json_and_the_cli(events, tmp_path, capsys):
    """Hours compacted by an older cachemon (schema < 9) hold no minutes:
    the metrics say their top keys are of the whole hour, on every surface."""
    parts, df = events
    path = tmp_path / "s.duckdb"
    load(path, parts)
    at = datetime(2026, 11, 19, 13, 37, tzinfo=UTC)
    with store_db.writer(path, NOW) as con:
        keys.compact_minutes(con, at.replace(minute=0) + HOUR)
    with store_db.reader(path) as con:
        doc = metrics_report.build(
            con, _cfg(path), Period.parse("15m"), at, top=8, latest=False
        ).to_json()
    hour = Window(at.replace(minute=0), at.replace(minute=0) + HOUR)
    assert doc["topKeysExact"] is False
    assert doc["topKeysWindow"] == {"start": iso(hour.start), "end": iso(hour.end)}
    assert_same_top([(k["key"], k["requests"]) for k in doc["topKeys"]], truth(df, hour, 8))
    code = cli_main.main(
        ["--db", str(path), "metrics", "--period", "15m", "--at", iso(at), "--top", "3"]
    )
    err = capsys.readouterr().err
    assert code == 0
    assert "top keys are counted over 2026-11-19T13:00:00Z to 2026-11-19T14:00:00Z" in err


def test_before_the_hour_horizon_a_ragged_edge_counts_its_day(events, tmp_path):
    parts, df = events
    path = tmp_path / "s.duckdb"
    load(path, parts)
    with store_db.writer(path, NOW) as con:
        retention.apply(con, NOW, cm_settings.RetentionConfig(minute_days=1, hour_days=1))
    window = Window(START + timedelta(hours=3), HORIZON + timedelta(hours=2))
    with store_db.reader(path) as con:
        top = topkeys.top_keys(con, window, None, 10)
    assert top.counted == Window(START - timedelta(hours=12), window.end) and not top.exact
    assert_same_top([(r[0], sum(r[2:6])) for r in top.rows], truth(df, top.counted, 10))


@pytest.mark.parametrize("period", ["1h", "24h"])
def test_overview_and_top_keys_page_agree(store, period):
    """The Overview's top keys (metrics_report.build) and the Top keys page
    (optimize.key_page over the same period) count the same numbers (the
    issue: 3,896 against 4,272 for one key and period)."""
    path, df = store
    at = datetime(2026, 11, 19, 13, 37, tzinfo=UTC)
    length = Period.parse(period).length
    with store_db.reader(path) as con:
        overview = metrics_report.build(
            con, _cfg(path), Period.parse(period), at, top=20, latest=True, costs=True
        ).metrics
        window = Window.ending(data_end(con, at), length)  # as pages/keys.py does
        page = optimize.key_page(con, window, at, optimize.KeyFilter(limit=20))
    assert overview.window == window and overview.top_keys_exact
    shown = dict(zip(page.rows.key, page.rows.requests))
    # The same keys with the same counts (either may break a tie at the cut differently).
    assert_same_top(list(shown.items()), [(k.key, k.requests) for k in overview.top_keys])
    for k in overview.top_keys:
        assert shown.get(k.key, k.requests) == pytest.approx(k.requests, rel=1e-12)
    assert_same_top(list(shown.items()), truth(df, window, 20))
