"""A key's drill-down series at the range's step (issue 21: minutes for 1h,
not one hourly bar), from minutes where the store keeps them, and never
finer than the store keeps: compacted hours (and days before the hour
horizon) stay whole buckets, and the series says where."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest

from cachemon import settings as cm_settings
from cachemon.clock import DAY, HOUR, MINUTE, Window
from cachemon.errors import InputError
from cachemon.ingest import keys, retention
from cachemon.store import db as store_db
from cachemon.store import topkeys
from tests.helpers import T0, load, simulate

START = T0 - timedelta(hours=6)


@pytest.fixture(scope="module")
def mixed_store(tmp_path_factory):
    """Six hours of per-key minutes; the first two hours compacted."""
    parts, df = simulate(6, start=START, step=timedelta(minutes=30))
    path = tmp_path_factory.mktemp("series") / "s.duckdb"
    load(path, parts)
    with store_db.writer(path, T0) as con:
        keys.compact_minutes(con, START + 2 * HOUR)
    df = df[df.kind == "request"]
    key, endpoint = df.groupby(["key", "endpoint"]).sample_interval.sum().idxmax()
    return path, df[df.key == key], key, endpoint


def _truth(r: pd.DataFrame, window: Window, step: timedelta, hourly_until) -> pd.DataFrame:
    """Per tier and bucket from raw events: `step` buckets of the window,
    whole hours (touching the window) before `hourly_until`."""
    hourly = r.timestamp < hourly_until
    start = r.timestamp.dt.floor("h").where(hourly, r.timestamp)  # a whole hour touches
    r = r[(r.timestamp < window.end) & (start >= window.start.replace(minute=0))]
    r = r[(r.timestamp < hourly_until) | (r.timestamp >= window.start)]
    hourly = r.timestamp < hourly_until
    width = pd.Series(step, index=r.index).where(~hourly, max(step, HOUR))
    t = r.timestamp.dt.floor(pd.Timedelta(step)).where(~hourly, r.timestamp.dt.floor("h"))
    return (
        r.assign(t=t, width=width)
        .pivot_table(
            index=["t", "width"],
            columns="tier",
            values="sample_interval",
            aggfunc="sum",
            fill_value=0.0,
        )
        .reindex(columns=["edge", "kv", "r2", "api"], fill_value=0.0)
    )


@pytest.mark.parametrize(
    "start,length,step",
    [
        (START + timedelta(hours=4, minutes=7), HOUR, MINUTE),  # a 1h range: minutes
        (START + timedelta(hours=1, minutes=30), timedelta(hours=3), 5 * MINUTE),
        (START, timedelta(hours=6), 15 * MINUTE),
        (START + timedelta(minutes=20), timedelta(hours=5), HOUR),
    ],
    ids=["1h-minutes", "across-compaction-5m", "6h-15m", "hours"],
)
def test_buckets_are_the_step_where_minutes_are_kept_and_hours_where_not(
    mixed_store, start, length, step
):
    path, r, key, endpoint = mixed_store
    window = Window(start, start + length)
    with store_db.reader(path) as con:
        s = topkeys.key_series(con, key, endpoint, window, step)
    truth = _truth(r, window, step, START + 2 * HOUR)
    got = s.rows.set_index(["t", "width"])[["edge", "kv", "r2", "api"]]
    got = got[got.sum(axis=1) > 0]
    assert list(got.index) == list(truth.index)
    assert got.to_numpy() == pytest.approx(truth.to_numpy())
    # Said, not drawn as fake detail: which span is only hourly.
    compacted = Window(START, START + 2 * HOUR)
    if step < HOUR and window.start < compacted.end:
        assert s.coarse == ((HOUR, Window(window.start, compacted.end)),) and not s.exact
    else:
        assert s.coarse == () and s.exact
    if step == MINUTE:
        assert len(got) > 20  # a 1h range is drawn per minute, not as one bar


def test_before_the_hour_horizon_days_are_whole_buckets(tmp_path):
    parts, df = simulate(60, start=T0 - timedelta(hours=60), step=timedelta(hours=6))
    path = tmp_path / "s.duckdb"
    load(path, parts, now=T0)
    with store_db.writer(path, T0) as con:
        retention.apply(con, T0, cm_settings.RetentionConfig(minute_days=1, hour_days=1))
        horizon = con.execute("SELECT horizon FROM retention_state WHERE name = 'hour'").fetchall()[
            0
        ][0]
    df = df[df.kind == "request"]
    key, endpoint = df.groupby(["key", "endpoint"]).sample_interval.sum().idxmax()
    r = df[df.key == key]
    window = Window(T0 - timedelta(hours=60), T0)
    with store_db.reader(path) as con:
        s = topkeys.key_series(con, key, endpoint, window, HOUR)
    assert s.coarse == ((DAY, Window(window.start, horizon)),)
    days = s.rows[s.rows.width == DAY]
    old = r[r.timestamp < horizon]
    want = old.groupby(old.timestamp.dt.floor("D")).sample_interval.sum()
    assert list(days.t) == list(want.index)
    assert (days[["edge", "kv", "r2", "api"]].sum(axis=1)).to_numpy() == pytest.approx(
        want.to_numpy()
    )
    # Every request of the window is in one bucket: nothing lost at the horizon.
    total = s.rows[["edge", "kv", "r2", "api"]].to_numpy().sum()
    assert total == pytest.approx(r.sample_interval.sum())


@pytest.mark.parametrize("step", [timedelta(0), timedelta(seconds=90), -MINUTE])
def test_a_step_that_is_not_whole_minutes_is_refused(mixed_store, step):
    path, _, key, endpoint = mixed_store
    with store_db.reader(path) as con, pytest.raises(InputError, match="whole number of minutes"):
        topkeys.key_series(con, key, endpoint, Window(START, START + HOUR), step)
