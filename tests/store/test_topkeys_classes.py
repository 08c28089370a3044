"""The Top keys page's class is the key's class over the class window
([costs] class_window, ending with the page's range), not over the range
itself (issue 21: at 1h "cold" showed 0 keys, since no key's count within an
hour reaches the cold threshold). The range still picks the keys and their
counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from cachemon import config
from cachemon import settings as cm_settings
from cachemon.clock import DAY, MINUTE, Window
from cachemon.costs import optimize
from cachemon.ingest import load as ingest_load
from cachemon.store import db as store_db

END = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
DAYS = 10  # of data; the class window (30 days) holds all of it
CLASS_WINDOW = Window(END - timedelta(days=30), END)
HOSTILE = '=HYPERLINK("http://x.example")**bold** <b>[a](http://y.example)</b>'


def key_events(seed: int = 7, keys: int = 240) -> pd.DataFrame:
    """Raw events (the import file's columns) of `keys` keys over DAYS days
    ending at END, each key at its own rate from 0.05 to 400 a day (log
    uniform), so every class is there; every key has a request in the last
    hour, so a 1h range lists all of them."""
    rng = np.random.default_rng(seed)
    span = DAYS * DAY.total_seconds()
    rows = []
    for i in range(keys):
        rate = float(np.exp(rng.uniform(np.log(0.05), np.log(400.0))))
        n = int(rng.poisson(rate * DAYS))
        offsets = np.concatenate([rng.uniform(0, span, n), [span - rng.uniform(1, 3500)]])
        endpoint = ("title", "isbn", "author")[i % 3]
        key = f"search:{endpoint}:q=k{i:03d}"
        tiers = rng.choice(["edge", "kv", "r2", "api"], size=len(offsets), p=[0.6, 0.25, 0.05, 0.1])
        for off, tier in zip(offsets, tiers):
            rows.append((END - DAY * DAYS + timedelta(seconds=float(off)), tier, key, endpoint))
    # A key from the internet that is Markdown, HTML and a spreadsheet formula at once.
    for off in rng.uniform(0, span, 300):
        rows.append((END - DAY * DAYS + timedelta(seconds=float(off)), "kv", HOSTILE, "title"))
    rows.append((END - timedelta(minutes=5), "kv", HOSTILE, "title"))
    # The data's first minute, exactly DAYS before END.
    rows.append((END - DAY * DAYS, "edge", "search:title:q=k000", "title"))
    df = pd.DataFrame(rows, columns=["timestamp", "tier", "key", "endpoint"])
    df["latency_ms"] = 5.0
    return df.sort_values("timestamp", ignore_index=True)


def build_store(tmp, df: pd.DataFrame) -> tuple:
    """The events imported into a new store under `tmp`: (db, config)."""
    db, events = tmp / "cachemon.duckdb", tmp / "events.csv"
    out = df.copy()
    out["timestamp"] = out["timestamp"].map(lambda t: t.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    out.to_csv(events, index=False)
    cfg = config.with_db(cm_settings.Config(), str(db))
    ingest_load.import_files(cfg, [events], END)
    return db, cfg


def class_truth(df: pd.DataFrame, window: Window, classes: Window) -> pd.DataFrame:
    """Per key of `window`: requests there, and the class of its rate over
    the data in `classes` (hot > 100/day, cold < 10 per 30 days)."""
    in_window = df[(df.timestamp >= window.start) & (df.timestamp < window.end)]
    keys = in_window.groupby("key").size().rename("requests").reset_index()
    c = df[(df.timestamp >= classes.start) & (df.timestamp < classes.end)]
    lo = max(classes.start, df.timestamp.min().floor("min"))
    hi = min(classes.end, df.timestamp.max().floor("min") + MINUTE)
    days = max((hi - lo) / DAY, 1 / 24)
    per_day = keys.key.map(c.groupby("key").size()).fillna(0) / days
    keys["class"] = np.where(per_day > 100, "hot", np.where(per_day < 10 / 30, "cold", "warm"))
    return keys.sort_values(["requests", "key"], ascending=[False, True], ignore_index=True)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    df = key_events()
    db, _ = build_store(tmp_path_factory.mktemp("classes"), df)
    return db, df


@pytest.mark.parametrize(
    "length", [timedelta(hours=1), timedelta(hours=6), timedelta(days=3), timedelta(days=DAYS)]
)
@pytest.mark.parametrize("klass", [None, "hot", "warm", "cold"])
def test_the_class_is_over_the_class_window_ending_with_the_range(store, length, klass):
    db, df = store
    window = Window(END - length, END)
    truth = class_truth(df, window, CLASS_WINDOW)
    if klass:
        truth = truth[truth["class"] == klass]
    with store_db.reader(db) as con:
        kp = optimize.key_page(
            con, window, END, optimize.KeyFilter(klass=klass, limit=5000), classes=CLASS_WINDOW
        )
    # Every class has keys at every range: the 1h "cold" of the issue too.
    assert len(truth) > 0
    assert kp.matching == len(truth)
    got = kp.rows.sort_values(["requests", "key"], ascending=[False, True], ignore_index=True)
    assert list(got.key) == list(truth.key)
    assert list(got["class"]) == list(truth["class"])
    assert list(got.requests) == pytest.approx(list(truth.requests))
    # The class's rates are over the data in the class window, and say so.
    assert kp.class_window == Window(END - DAYS * DAY, END)
    assert kp.class_days == pytest.approx(DAYS)


def test_without_a_class_window_the_class_stays_over_the_range(store):
    """Other callers (the costs report builds its own class window) keep
    the class of the window they count."""
    db, df = store
    window = Window(END - timedelta(hours=1), END)
    with store_db.reader(db) as con:
        kp = optimize.key_page(con, window, END, optimize.KeyFilter(limit=5000))
    truth = class_truth(df, window, window)
    got = dict(zip(kp.rows.key, kp.rows["class"]))
    assert got == dict(zip(truth.key, truth["class"]))
    assert kp.class_window == window
