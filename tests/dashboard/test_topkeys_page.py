"""The Top keys page (issue 21): classes over the class window, a drill-down
at the range's resolution, a table that fits, and a CSV download whose cells
are rounded and cannot run or break in a spreadsheet; the Overview's top keys
equal the page's."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from streamlit.testing.v1 import AppTest

from cachemon import csvtext as export
from cachemon import timerange
from cachemon.clock import HOUR, MINUTE
from cachemon.ingest import keys
from cachemon.store import db as store_db
from cachemon.timerange import TimeRange
from tests.helpers import ROOT, load, simulate
from tests.helpers.servers import chromium, streamlit_server
from tests.store.test_topkeys_classes import (
    CLASS_WINDOW,
    END,
    HOSTILE,
    build_store,
    class_truth,
    key_events,
)

KEYS = "pages/keys.py"
STEP_NAMES = {MINUTE: "minute", 5 * MINUTE: "5 minutes", HOUR: "hour"}

HEADERS = ("key", "requests", "hit rate %", "USD/day")


def _visible(text: str) -> str:
    """What a CSV cell shows of `text`: each control character as a
    visible symbol, a formula lead behind an apostrophe."""
    out = []
    for ch in text:
        c = ord(ch)
        if c < 0x20:
            out.append(chr(0x2400 + c))
        elif c == 0x7F:
            out.append("\u2421")
        elif 0x80 <= c <= 0x9F or ch in "\u2028\u2029":
            out.append("\ufffd")
        else:
            out.append(ch)
    shown = "".join(out)
    return "'" + shown if shown[:1] in ("=", "+", "-", "@") else shown


def _controls(text: str) -> list[str]:
    return [ch for ch in text if ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F or ch in "\u2028\u2029"]


def _cells(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(), min_size=1, max_size=8), st.text())
def test_csv_cells_hold_no_control_character_nor_formula_lead(texts, header):
    df = pd.DataFrame({"key": texts, header or "x": range(len(texts))})
    data = export.csv_bytes(df)
    text = data.decode("utf-8")
    # One line per row: only the rows' own line ends, no other control character.
    assert text.count("\n") == len(texts) + 1
    assert _controls(text.replace("\n", "")) == []
    rows = _cells(data)
    assert len(rows) == len(texts) + 1
    for row, original in zip(rows[1:], texts):
        assert not row[0].startswith(("=", "+", "-", "@"))
        assert row[0] == _visible(original)  # the visible text round-trips
    assert rows[0][0] == "key" and rows[0][1] == _visible(header or "x")


finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e9, max_value=1e9)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(finite, finite, finite), min_size=1, max_size=8))
def test_csv_numbers_are_rounded_by_the_unit_of_their_header(values):
    df = pd.DataFrame(
        {
            "key": ["k"] * len(values),
            "requests": [v[0] for v in values],
            "hit rate %": [v[1] for v in values],
            "USD/day": [v[2] for v in values],
        }
    )
    rows = _cells(export.csv_bytes(df))
    assert tuple(rows[0]) == HEADERS
    for row, v in zip(rows[1:], values):
        for cell, x, decimals in zip(row[1:], v, (0, 2, 4)):
            digits = cell.split(".")[1] if "." in cell else ""
            assert len(digits) <= max(decimals, 1) and (decimals or not digits)
            assert float(cell) == pytest.approx(x, abs=0.5 * 10**-decimals + 1e-9 * abs(x))


def test_missing_and_absurd_values_are_empty_cells():
    df = pd.DataFrame(
        {
            "key": ["=cmd|' /C calc'!A0", None, "a\r\nb"],
            "requests": [1.6, math.nan, math.inf],
            "hit rate %": [-math.inf, 12.3456, math.nan],
        }
    )
    rows = _cells(export.csv_bytes(df))
    assert rows[1:] == [
        ["'=cmd|' /C calc'!A0", "2", ""],
        ["", "", "12.35"],
        ["a\u240d\u240ab", "", ""],
    ]


# -- the page (AppTest) --------------------------------------------------------

# The table must fit 1440 px beside the sidebar (about 940 px of content).
TABLE_BUDGET_PX = 940


def _app(monkeypatch, db, tr: TimeRange, page: str | None = None, **state) -> AppTest:
    """The app on `page` (None: the Overview) with the range `tr`."""
    monkeypatch.setenv("CACHEMON_DB", str(db))
    monkeypatch.delenv("CACHEMON_CONFIG", raising=False)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.session_state["time_range"] = tr
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _frame(at, *columns: str) -> pd.DataFrame:
    """The first table on the page holding `columns`."""
    for d in at.dataframe:
        if set(columns) <= set(d.value.columns):
            return d.value
    raise AssertionError(f"no table with {columns}")


def _figure(at, index: int = -1) -> dict:
    return json.loads(at.get("plotly_chart")[index].proto.spec)


@pytest.fixture(scope="module")
def key_store(tmp_path_factory):
    df = key_events()
    db, _ = build_store(tmp_path_factory.mktemp("keys_page"), df)
    return db, df


def test_the_class_is_over_the_class_window_and_cold_keys_show_at_1h(key_store, monkeypatch):
    db, df = key_store
    tr = TimeRange.between(END - HOUR, END)
    truth = class_truth(df, tr.window(END), CLASS_WINDOW)
    at = _app(monkeypatch, db, tr, KEYS, key_rows=5000)
    shown = _frame(at, "key", "class")
    assert dict(zip(shown.key, shown["class"])) == dict(zip(truth.key, truth["class"]))
    # The page says which window the class is over.
    assert any("class window" in c.value and "30d" in c.value for c in at.caption)
    at.selectbox(key="key_class").select("cold").run()
    cold = _frame(at, "key", "class")
    assert len(cold) == (truth["class"] == "cold").sum() > 0  # the issue: 0 keys at 1h
    assert set(cold["class"]) == {"cold"}


def test_the_table_fits_and_keys_stay_text(key_store, monkeypatch):
    db, df = key_store
    at = _app(monkeypatch, db, TimeRange.between(END - timedelta(hours=6), END), KEYS)
    table = at.dataframe[0]
    shown = [c for c in json.loads(table.proto.columns).values() if not c.get("hidden")]
    widths = [c.get("width") for c in shown]
    assert all(isinstance(w, int) for w in widths) and sum(widths) <= TABLE_BUDGET_PX
    assert HOSTILE in set(table.value.key)
    # Never as Markdown or HTML: not in any markdown element; whole in the code block.
    assert not any("HYPERLINK" in m.value for m in at.markdown)
    at.selectbox(key="key_pick").set_value((HOSTILE, "title")).run()
    assert HOSTILE in [c.value for c in at.code]
    text = " ".join(str(e.value) for e in (*at.caption, *at.info, *at.warning, *at.markdown))
    assert not any(bad in text for bad in ("nan", "None", "inf"))


@pytest.mark.parametrize(
    "length,step", [(HOUR, MINUTE), (timedelta(hours=24), 5 * MINUTE), (timedelta(days=7), HOUR)]
)
def test_the_drill_down_is_at_the_range_resolution(key_store, monkeypatch, length, step):
    db, df = key_store
    tr = TimeRange.between(END - length, END)
    at = _app(monkeypatch, db, tr, KEYS)
    key, endpoint = at.selectbox(key="key_pick").value
    fig = _figure(at)
    bars = [t for t in fig["data"] if t["type"] == "bar"]
    assert {t["name"] for t in bars} == {"edge", "KV", "R2", "origin"}
    w = tr.window(END)
    r = df[(df.key == key) & (df.timestamp >= w.start) & (df.timestamp < w.end)]
    want = r.groupby(r.timestamp.dt.floor(pd.Timedelta(step))).size()
    got: dict = {}
    for t in bars:
        assert set(_decoded(t["width"])) == {step.total_seconds() * 1000}
        for x, y in zip(pd.to_datetime(_decoded(t["x"]), utc=True), _decoded(t["y"])):
            start = x - step / 2
            got[start] = got.get(start, 0.0) + y
    got = {k: v for k, v in got.items() if v > 0}
    assert sorted(got) == list(want.index)
    assert [got[k] for k in sorted(got)] == pytest.approx(list(want.to_numpy()))
    # The x range is the range; the y title names the bucket.
    assert pd.to_datetime(fig["layout"]["xaxis"]["range"], utc=True).tolist() == [w.start, w.end]
    assert fig["layout"]["yaxis"]["title"]["text"] == f"requests per {STEP_NAMES[step]}"


def test_the_drill_down_never_draws_finer_than_the_store_keeps(tmp_path, monkeypatch):
    """Where a key's minutes are compacted into hours, a 1h range draws that
    hour whole (its average per minute) and says so, never fake minutes."""
    end = END.replace(minute=30)
    parts, df = simulate(3, start=end - timedelta(hours=3))
    db = tmp_path / "cachemon.duckdb"
    load(db, parts, now=end)
    with store_db.writer(db, end) as con:  # minutes before 12:00 into hours
        keys.compact_minutes(con, end - 30 * MINUTE)
    at = _app(monkeypatch, db, TimeRange.between(end - HOUR, end), KEYS)
    notes = [i.value for i in at.info if "stored per hour only" in i.value]
    assert notes == [
        "2026-11-20 11:30Z – 2026-11-20 12:00Z: this key's counts are stored per hour only "
        "(compacted by retention), drawn as whole hours at their average per minute, not finer"
    ]
    key, _ = at.selectbox(key="key_pick").value
    bars = [t for t in _figure(at)["data"] if t["type"] == "bar"]
    widths = {w for t in bars for w in _decoded(t["width"])}
    assert widths == {60_000, 3_600_000}
    r = df[(df.kind == "request") & (df.key == key)]
    hour = r[
        (r.timestamp >= end - HOUR - timedelta(minutes=30)) & (r.timestamp < end - 30 * MINUTE)
    ]
    mid = pd.Timestamp(end - HOUR)  # the middle of the compacted hour 11:00-12:00
    drawn = sum(
        y
        for t in bars
        for x, y in zip(pd.to_datetime(_decoded(t["x"]), utc=True), _decoded(t["y"]))
        if x == mid
    )
    assert len(hour) and drawn == pytest.approx(hour.sample_interval.sum() / 60)


def _decoded(v):
    """A Plotly trace array: a list, or numpy's typed-array encoding."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"])).tolist()
    if isinstance(v, (int, float)):
        return [v]
    return list(v)


@pytest.mark.parametrize("endpoint", [None, "title"])
def test_the_overview_top_keys_equal_the_top_keys_page(key_store, monkeypatch, endpoint):
    """Cross-page agreement (issue 21): the same range and endpoint, the
    same first keys with the same requests, and both equal to the raw events."""
    db, df = key_store
    tr = TimeRange.between(END - timedelta(hours=6, minutes=30), END - timedelta(minutes=30))
    state = {"endpoint": endpoint or "all"}
    overview = _frame(_app(monkeypatch, db, tr, **state), "key", "requests")
    keys_page = _frame(_app(monkeypatch, db, tr, KEYS, **state), "key", "requests")
    n = min(10, len(overview))
    w = tr.window(END)
    r = df[(df.timestamp >= w.start) & (df.timestamp < w.end)]
    if endpoint:
        r = r[r.endpoint == endpoint]
    truth = r.groupby("key").size().reset_index(name="requests")
    truth = truth.sort_values(["requests", "key"], ascending=[False, True]).head(n)
    assert n == 10
    for shown in (overview.head(n), keys_page.head(n)):
        assert list(shown.requests) == pytest.approx(list(truth.requests))
        cut = truth.requests.iloc[-1]  # keys tied at the cut may differ
        assert set(shown.key[shown.requests > cut]) == set(truth.key[truth.requests > cut])
    assert list(overview.key.head(n)) == list(keys_page.key.head(n))


# -- in a real browser ---------------------------------------------------------


def test_in_chromium_the_table_fits_1440_and_the_page_fits_390(key_store, tmp_path):
    """The key table needs no horizontal scrolling at 1440 px, the page none
    at 390 px, and the key from the internet stays text."""
    from playwright.sync_api import sync_playwright

    db, _ = key_store
    tr = TimeRange.between(END - timedelta(hours=6), END)
    env = {"CACHEMON_DB": str(db)}
    with streamlit_server(env) as url, sync_playwright() as p:
        browser = chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(url + timerange.link("", tr))
            page.get_by_role("link", name="Top keys").click()  # the range stays
            for width, height in ((1440, 1000), (390, 844)):
                page.set_viewport_size({"width": width, "height": height})
                page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=60_000)
                page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
                page.wait_for_timeout(1000)  # the layout settles
                page.screenshot(path=str(tmp_path / f"keys-{width}.png"))
                overflow = page.evaluate(
                    "document.documentElement.scrollWidth - document.documentElement.clientWidth"
                )
                assert overflow <= 0, (width, overflow)
                if width == 1440:
                    chart = page.locator(".js-plotly-plot").first
                    chart.screenshot(path=str(tmp_path / "drill-down.png"))
                    grid = page.locator('[data-testid="stDataFrame"] .dvn-scroller').first
                    sw, cw = grid.evaluate("e => [e.scrollWidth, e.clientWidth]")
                    assert sw <= cw, (sw, cw)
                assert page.locator("b", has_text="[a]").count() == 0  # no HTML from a key
        finally:
            browser.close()
