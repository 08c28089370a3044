"""The drill-down of one key over days (issue 22: Top keys at 30 days) reads
whole hours from the hour summaries where the key is listed, whole days from
key_day at a step of days, and only the rest from per-key minutes and hours:
the same series as the key's raw events, for a key listed in every hour, one
listed in some, and one listed in none, on a store with compacted hours."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest

from cachemon.clock import DAY, HOUR, MINUTE, Window, floor_to
from cachemon.errors import InputError
from cachemon.ingest import keys
from cachemon.store import db as store_db
from cachemon.store import topkeys
from tests.helpers import T0, load, simulate, small_sim

START = T0 - timedelta(hours=6)  # 02:00 on the 19th
HOURS = 54  # to 08:00 on the 21st: two midnights
COMPACTED = START + timedelta(hours=10)  # per-key minutes before it are hours
TIERS = ["edge", "kv", "r2", "api"]
LISTED = """
SELECT key_id, count(*) FROM key_top WHERE part = 'hour' AND t >= $lo AND t < $hi GROUP BY key_id
"""
KEY = "SELECT key_id, key, endpoint FROM cache_keys"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """54 hours with more keys an hour (about 1,500) than an hour's summary
    lists, the first 10 hours compacted; the keys picked by how many of the
    hours they are listed in."""
    sim = small_sim(catalog_keys=8000)
    parts, df = simulate(HOURS, start=START, step=timedelta(hours=6), sim=sim)
    path = tmp_path_factory.mktemp("drill") / "d.duckdb"
    load(path, parts)
    with store_db.writer(path, T0) as con:
        keys.compact_minutes(con, COMPACTED)
    hours = {"lo": START, "hi": START + timedelta(hours=HOURS)}
    with store_db.reader(path) as con:
        listed = dict(con.execute(LISTED, hours).fetchall())
        names = {i: (k, e) for i, k, e in con.execute(KEY).fetchall()}
    r = df[df.kind == "request"]
    counts = r.groupby(["key", "endpoint"]).sample_interval.sum()
    ids = {v: k for k, v in names.items()}
    n = {key: listed.get(ids[key], 0) for key in counts.index}
    busiest = counts.idxmax()
    some = [k for k in counts.sort_values(ascending=False).index if 0 < n[k] < HOURS]
    picked = {
        "every hour": busiest,
        "most hours": some[0],  # a few gaps: summaries and minutes both
        "a few hours": next(k for k in some if n[k] < HOURS // 3),  # the one-scan fallback
        "no hour": next(k for k in counts.index if n[k] == 0 and counts[k] > 5),
    }
    assert n[busiest] == HOURS and n[picked["most hours"]] > HOURS - topkeys.SERIES_RUNS
    return path, r, picked, ids


def _truth(r: pd.DataFrame, window: Window, step: timedelta) -> pd.DataFrame:
    """Per bucket of `step` (whole hours) and tier from raw events: the
    window, with a compacted hour at its start counted whole."""
    start = floor_to(window.start, HOUR) if window.start < COMPACTED else window.start
    r = r[(r.timestamp >= start) & (r.timestamp < window.end)]
    t = r.timestamp.dt.floor(pd.Timedelta(step))
    return (
        r.assign(t=t)
        .pivot_table(index="t", columns="tier", values="sample_interval", aggfunc="sum")
        .reindex(columns=TIERS, fill_value=0.0)
        .fillna(0.0)
    )


@pytest.mark.parametrize(
    "start,end,step",
    [
        (START + timedelta(minutes=20), START + timedelta(hours=51, minutes=17), 6 * HOUR),
        (START + timedelta(hours=11, minutes=5), START + timedelta(hours=41), 6 * HOUR),
        (START + timedelta(hours=7), START + timedelta(hours=53, minutes=59), DAY),
        (START + timedelta(hours=12), START + timedelta(hours=18), 6 * HOUR),  # a 6 h range
        (START + timedelta(hours=3, minutes=30), START + timedelta(hours=40), HOUR),
    ],
    ids=["2-days-6h", "30h-6h", "2-days-by-day", "6h-one-bucket", "hours"],
)
@pytest.mark.parametrize("which", ["every hour", "most hours", "a few hours", "no hour"])
def test_drill_down_over_days_is_the_keys_raw_events(store, start, end, step, which):
    path, r, picked, ids = store
    key, endpoint = picked[which]
    window = Window(start, end)
    with store_db.reader(path) as con:
        by_text = topkeys.key_series(con, key, endpoint, window, step)
        by_id = topkeys.key_series(con, key, endpoint, window, step, ids[key, endpoint])
    truth = _truth(r[(r.key == key) & (r.endpoint == endpoint)], window, step)
    for s in (by_text, by_id):
        got = s.rows.set_index("t")
        assert (s.rows.width == step).all() and s.exact
        got = got[got[TIERS].sum(axis=1) > 0]
        assert list(got.index) == list(truth.index)
        assert got[TIERS].to_numpy() == pytest.approx(truth[TIERS].to_numpy(), rel=1e-12)
        assert got[TIERS].to_numpy().sum() == pytest.approx(truth.to_numpy().sum(), rel=1e-12)


def test_minute_steps_still_read_minutes(store):
    # A step under an hour cannot take a listed hour whole: per minute, as before.
    path, r, picked, ids = store
    key, endpoint = picked["every hour"]
    window = Window(START + timedelta(hours=20, minutes=3), START + timedelta(hours=26))
    with store_db.reader(path) as con:
        s = topkeys.key_series(con, key, endpoint, window, MINUTE, ids[key, endpoint])
    k = r[(r.key == key) & (r.timestamp >= window.start) & (r.timestamp < window.end)]
    want = k.groupby(k.timestamp.dt.floor("min")).sample_interval.sum()
    got = s.rows.set_index("t")[TIERS].sum(axis=1)
    assert list(got.index) == list(want.index) and len(got) > 200
    assert got.to_numpy() == pytest.approx(want.to_numpy(), rel=1e-12)


def test_an_id_that_is_not_the_key_is_refused(store):
    path, _, picked, ids = store
    key, endpoint = picked["every hour"]
    other = ids[picked["no hour"]]
    with store_db.reader(path) as con, pytest.raises(InputError, match=f"key id {other} is not"):
        topkeys.key_series(con, key, endpoint, Window(START, START + DAY), HOUR, other)
    with store_db.reader(path) as con, pytest.raises(InputError, match="is not the key"):
        topkeys.key_series(con, key, "nope", Window(START, START + DAY), HOUR, 10**9)
