"""The Top keys page's fast paths (issue #22): the unfiltered key table from
the top-key summaries' candidates, and per-key sums that read a cut day's
key_day row where the data begins or ends inside it. Checked against raw
events (pandas) and against the old query (every key of the range in the
per-key table) on the same store."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachemon import settings as cm_settings
from cachemon.clock import DAY, HOUR, MINUTE, Window, ceil_to, floor_to
from cachemon.costs import classes, optimize
from cachemon.store import db as store_db
from cachemon.store import topkeys
from cachemon.store.queries import KEY_ROWS, data_days, key_ranges
from tests.helpers import T0, two_span_store

START = T0 - timedelta(days=10)  # 08:00: the data begins inside a day
AT = T0 + timedelta(hours=2)  # 10:00: and ends inside one
CLASS_WINDOW = Window(AT - 30 * DAY, AT)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    # More keys than a summary list holds (1000 a part): the cutoffs matter.
    path, df = two_span_store(tmp_path_factory.mktemp("keysfast") / "k.duckdb", START, T0, AT)
    return path, df[df.kind == "request"]


def _per_key(df: pd.DataFrame, window: Window) -> pd.DataFrame:
    """Per key of `window`: requests by tier and errors, from raw events."""
    ts = pd.to_datetime(df.timestamp, utc=True)
    inside = df[(ts >= window.start) & (ts < window.end)].copy()
    w = inside.sample_interval.astype(float)
    for tier in ("edge", "kv", "r2", "api"):
        inside[tier] = np.where(inside.tier == tier, w, 0.0)
    inside["errors"] = np.where(inside.status == "error", w, 0.0)
    k = inside.groupby("key")[["edge", "kv", "r2", "api", "errors"]].sum()
    k["requests"] = k[["edge", "kv", "r2", "api"]].sum(axis=1)
    return k.reset_index()


def _old_page(con, window: Window, limit: int) -> tuple[pd.DataFrame, int]:
    """The key table as the page built it before #22: every key of the range
    in the per-key table, classes over the class window."""
    span = topkeys.covered(con, window)
    data, days = data_days(con, span)
    con.execute(optimize.KEYS_TEMP, key_ranges(data.start, span.end) | {"days": days, "at": AT})
    cs = classes.class_span(con, CLASS_WINDOW)
    con.execute(optimize.RECLASS, key_ranges(cs.window.start, cs.counted.end) | {"days": cs.days})
    f = optimize.KeyFilter(limit=limit)
    rows = con.execute(optimize.KEY_PAGE, f.params() | {"limit": limit}).df()
    return rows, int(con.execute(optimize.KEY_COUNT, f.params()).fetchall()[0][0])


WINDOWS = {
    "1h": Window(T0 + HOUR, AT),
    "ragged": Window(T0 + 17 * MINUTE, AT - 23 * MINUTE),
    "both-bursts": Window(START + 30 * MINUTE, AT),
    "30d": CLASS_WINDOW,
}


@pytest.mark.parametrize("limit", [20, 500])
@pytest.mark.parametrize("window", list(WINDOWS.values()), ids=list(WINDOWS))
def test_unfiltered_key_page_matches_raw_events_and_the_old_query(store, window, limit):
    path, df = store
    truth = _per_key(df, window).sort_values(["requests", "key"], ascending=[False, True])
    with store_db.reader(path) as con:
        kp = optimize.key_page(con, window, AT, optimize.KeyFilter(limit=limit), CLASS_WINDOW)
        table = con.execute("SELECT count(*) FROM opt_keys").fetchall()[0][0]
        span = topkeys.covered(con, window)
        data, _ = data_days(con, span)  # the page counts from the data's start
        ids = topkeys.busiest_candidates(con, Window(data.start, span.end), limit)
        old, old_matching = _old_page(con, window, limit)
    # The busiest keys, in order, with their counts, as raw events have them.
    top = truth.head(limit)
    assert list(kp.rows.key) == list(top.key)
    for col in ("requests", "errors"):
        assert kp.rows[col].to_numpy() == pytest.approx(top[col].to_numpy())
    assert kp.rows.edge_share.to_numpy() == pytest.approx(
        100 * (top.edge / top.requests).to_numpy()
    )
    assert kp.matching == len(truth) == old_matching
    # Every column (class over the class window, age, shares) as the old query has it.
    pd.testing.assert_frame_equal(kp.rows, old)
    # Only the candidates were counted per key, not every key of the range
    # (unless the summaries cannot tell, as with many keys tied at the cutoff).
    assert table == (len(truth) if ids is None else len(ids))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    start=st.integers(0, 10 * 24 * 60),
    length=st.integers(1, 10 * 24 * 60 + 120),
    limit=st.integers(1, 1500),
)
def test_the_busiest_keys_are_among_the_candidates(store, start, length, limit):
    """Whatever the window and limit, the `limit` busiest keys (ties at the
    cutoff by key) are among the candidates, unless the summaries say they
    cannot tell (None)."""
    path, df = store
    window = Window(START + start * MINUTE, START + (start + length) * MINUTE)
    truth = _per_key(df, window).sort_values(["requests", "key"], ascending=[False, True])
    with store_db.reader(path) as con:
        counted = topkeys.covered(con, window)
        ids = topkeys.busiest_candidates(con, counted, limit)
        if ids is None:
            return
        names = {r[1] for r in con.execute(topkeys.KEY_TEXT, {"ids": ids}).fetchall()}
    assert len(ids) >= min(limit, len(truth))
    top = truth.head(limit)
    # Every key counting as much as the limit-th is a candidate (ties included).
    if len(top):
        assert set(truth[truth.requests >= top.requests.iloc[-1]].key) <= names


FILTERS = (
    optimize.KeyFilter(endpoint="title", limit=20),
    optimize.KeyFilter(klass="warm", limit=20),
    optimize.KeyFilter(contains="a", limit=20),
)


def test_candidates_are_found_for_the_page_s_windows(store):
    """The fast path is the usual one: the summaries prove the top keys of
    the page's windows here, and fewer candidates than keys. A filter may
    keep keys the summaries know nothing about: a filtered page counts every
    key of the range, as before."""
    path, df = store
    with store_db.reader(path) as con:
        for name, window in WINDOWS.items():
            ids = topkeys.busiest_candidates(con, topkeys.covered(con, window), 20)
            assert ids is not None and 20 <= len(ids) < len(_per_key(df, window)), name
        for f in FILTERS:
            kp = optimize.key_page(con, WINDOWS["ragged"], AT, f, CLASS_WINDOW)
            table = con.execute("SELECT count(*) FROM opt_keys").fetchall()[0][0]
            assert kp.matching > 0 and table >= kp.matching, f


def test_key_rows_read_a_cut_day_whole_only_where_it_holds_nothing_else(store):
    """A window starting where the data starts (inside a day) reads that
    day's key_day row; one starting after the day's first data does not."""
    path, df = store
    with store_db.reader(path) as con:
        wide = classes.key_rows(con, START, AT)
        narrow = classes.key_rows(con, START + 30 * MINUTE, AT - 30 * MINUTE)
        sums = {
            name: con.execute(
                f"SELECT key_id, sum(edge + kv + r2 + api) FROM ({KEY_ROWS}) GROUP BY key_id",
                rows,
            ).fetchall()
            for name, rows in (("wide", wide), ("narrow", narrow))
        }
        text = dict(con.execute("SELECT key_id, key FROM cache_keys").fetchall())
    # The data begins at 08:00 and ends at 10:00: both cut days are read whole.
    assert wide == key_ranges(floor_to(START, DAY), ceil_to(AT, DAY))
    assert narrow == key_ranges(START + 30 * MINUTE, AT - 30 * MINUTE)
    for name, window in (
        ("wide", Window(START, AT)),
        ("narrow", Window(START + 30 * MINUTE, AT - 30 * MINUTE)),
    ):
        truth = _per_key(df, window).set_index("key").requests
        got = pd.Series({text[k]: v for k, v in sums[name]}).sort_index()
        assert got.to_numpy() == pytest.approx(truth.sort_index().to_numpy()), name
    # The TTL rule (the TTL page's summary) over whole cut days gives what it
    # gave over the cut days' minutes (the class shares, read the same way,
    # are checked against raw events in test_classes.py).
    cfg = cm_settings.Config()
    with store_db.reader(path) as con:
        data, days = data_days(con, CLASS_WINDOW)
        c = cfg.costs
        by_minutes = optimize.ttl_choices(
            con,
            days,
            cfg.pricing,
            dict(c.kv_ttl),
            c.max_kv_ttl,
            c.value_bytes,
            AT,
            c.r2_flow,
            key_ranges(data.start, CLASS_WINDOW.end) | {"days": days},
        )
        got = optimize.recommended_ttls(con, cfg, CLASS_WINDOW, AT)
    assert got == by_minutes
    assert any(ch.keys for ch in got.values())  # warm churning keys: non-trivial
