"""The same window read again gives the same figures to the last bit.

DuckDB sums floats in parallel, in whatever order its threads finish, so a
plain `sum` over sampled (fractional) counts and latency sums could differ
in the last bit between two reads of one snapshot: a memoised report then
differed from a fresh one, and a dashboard tile from the figure it links to.
Reads are repeated here many times, on a store big enough to be scanned by
several threads, at windows that mix whole hours with ragged minutes."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cachemon import settings as cm_settings
from cachemon.clock import Window
from cachemon.costs import usage
from cachemon.metrics import series
from cachemon.metrics import window as metrics_window
from cachemon.store import db as store_db
from tests.helpers import T0, two_span_store

READS = 12
WINDOWS = [
    Window(T0 + timedelta(minutes=7), T0 + timedelta(hours=1, minutes=53)),  # ragged both ends
    Window(T0, T0 + timedelta(hours=26)),  # whole hours across both spans
    Window(T0 + timedelta(minutes=50), T0 + timedelta(hours=24, minutes=31)),
]


@pytest.fixture(scope="module")
def busy_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("repeat") / "cachemon.duckdb"
    now = T0 + timedelta(days=2)
    return two_span_store(path, T0, T0 + timedelta(hours=24), now)[0]


@pytest.mark.parametrize("window", WINDOWS, ids=["ragged", "hours", "mixed"])
def test_a_window_read_again_has_the_same_figures(busy_store, window):
    with store_db.reader(busy_store) as con:
        con.execute("SET threads = 4")  # parallel even on a small CI machine
        first = metrics_window.compute(con, window, "w")
        for _ in range(READS):
            assert metrics_window.compute(con, window, "w") == first


def test_observations_read_again_are_the_same(busy_store):
    starts = [T0 + timedelta(minutes=m) for m in range(0, 120, 7)]
    with store_db.reader(busy_store) as con:
        con.execute("SET threads = 4")
        first = series.observe(con, starts, timedelta(minutes=30))
        for _ in range(READS):
            assert series.observe(con, starts, timedelta(minutes=30)) == first


def test_usage_and_daily_costs_read_again_are_the_same(busy_store):
    cfg = cm_settings.Config()
    window = WINDOWS[2]
    with store_db.reader(busy_store) as con:
        con.execute("SET threads = 4")
        first = (usage.measure(con, window, cfg), usage.daily_costs(con, window, cfg))
        for _ in range(READS):
            again = (usage.measure(con, window, cfg), usage.daily_costs(con, window, cfg))
            assert again[0] == first[0]
            assert again[1].equals(first[1])
