"""The dashboard's faster figure paths (issue #22): the Trends page's cost per
day reads every day at once, with the figures of measuring each day on its
own (the old path) and of raw events."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest

from cachemon import config
from cachemon import settings as cm_settings
from cachemon.clock import DAY, HOUR, MINUTE, Window
from cachemon.costs import usage as costs_usage
from cachemon.pricing import COMPONENTS, DEFAULT
from cachemon.store import db as store_db
from tests.helpers import T0, load, simulate

START = T0 - timedelta(hours=5, minutes=17)  # 02:43: the first day is cut, the last too


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    parts, df = simulate(40, start=START, step=6 * HOUR)
    path = tmp_path_factory.mktemp("perfpages") / "p.duckdb"
    load(path, parts, now=START + 41 * HOUR)
    return path, df[df.kind == "request"]


class Counting:
    """A connection that counts the statements run on it."""

    def __init__(self, con):
        self.con, self.statements = con, 0

    def execute(self, *args, **kwargs):
        self.statements += 1
        return self.con.execute(*args, **kwargs)


WINDOWS = {
    "all": Window(START - 2 * DAY, START + 3 * DAY),
    "cut": Window(START + 7 * HOUR + 11 * MINUTE, START + 33 * HOUR + 4 * MINUTE),
}
ONE_HOUR = Window(START + 20 * HOUR, START + 21 * HOUR)


@pytest.mark.parametrize("window", list(WINDOWS.values()), ids=list(WINDOWS))
def test_daily_costs_read_every_day_at_once_with_each_days_figures(store, window):
    """Days of costs cost the reads of one day (every day's tier totals and
    gauges from one query each, not a few queries a day), and each day's
    figures are those of measuring its part on its own (the old path) and
    of raw events."""
    path, df = store
    cfg = config.with_db(cm_settings.Config(), str(path))
    with store_db.reader(path) as con:
        counting, one = Counting(con), Counting(con)
        got = costs_usage.daily_costs(counting, window, cfg)
        assert len(costs_usage.daily_costs(one, ONE_HOUR, cfg)) == 1
        old = {
            row.day: costs_usage.price(
                costs_usage.measure(con, Window(row.start, row.end), cfg), cfg.pricing
            )
            for row in got.itertuples()
        }
    assert len(got) == 2 and counting.statements == one.statements
    for row in got.itertuples():
        b = old[row.day]
        assert row.list == b.list_total and row.billed == b.billed_total
        for c in COMPONENTS:
            assert getattr(row, c) == b.line(c).list_cost, c
    # And the requests of each day are the raw events'.
    ts = pd.to_datetime(df.timestamp, utc=True)
    inside = df[(ts >= window.start) & (ts < window.end)]
    per_day = inside.groupby(ts[inside.index].dt.floor("D")).sample_interval.sum()
    price = DEFAULT["workers_requests"]
    assert list(got["day"]) == list(per_day.index)
    assert list(got["workers_requests"]) == pytest.approx(
        list(per_day * price.price / price.per), rel=1e-12
    )
