"""The Costs page (#21): every figure names its basis, the component chart
is readable, key classes weigh keys, requests and cost (against a pandas
truth from the raw events), small recommendations are folded away, and the
page fits 1440 and 390 px without None, nan or inf."""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from cachemon import config
from cachemon.clock import DAY, HOUR, floor_to, utcnow
from cachemon.costs import report
from cachemon.pricing import DEFAULT
from cachemon.store import db as store_db
from cachemon.timerange import stamp
from tests.helpers import ROOT, load, simulate, small_sim
from tests.helpers.servers import chromium, streamlit_server

# Two 2-hour bursts ten days apart, the last ending an hour ago (fixed:
# the page slides its range back to the newest data).
END = floor_to(utcnow(), HOUR) - HOUR
LATE = END - 2 * HOUR
EARLY = LATE - 10 * DAY
DATA_DAYS = (END - EARLY) / DAY
PER_M = {"workers": 0.30, "kv_reads": 0.50, "kv_writes": 5.00, "r2_gets": 0.36}
ARTIFACTS = Path(os.environ.get("CACHEMON_ARTIFACTS", ROOT / "test-artifacts"))
BAD = re.compile(r"\b(nan|inf|infinity|None)\b", re.I)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The store, its raw events, the stored report, and a config whose
    `min_saving` folds away all but the largest recommendation."""
    tmp = tmp_path_factory.mktemp("costs-page")
    db = tmp / "cachemon.duckdb"
    sim = dict(requests_per_hour=20_000, sample_threshold_per_minute=40, colos=30)
    early, df1 = simulate(2, start=EARLY, sim=small_sim(**sim))
    late, df2 = simulate(2, start=LATE, sim=small_sim(**sim))
    load(db, early + late, now=END)
    cfg = config.with_db(config.load(None, env={}), str(db))
    # Thresholds the demo traffic crosses, so every kind of recommendation occurs.
    cfg = replace(cfg, costs=replace(cfg.costs, archive_after=timedelta(days=5), edge_target=99.9))
    with store_db.writer(db, END) as con:
        r = report.build(con, cfg, (END - HOUR).date(), END)
        report.save(con, r)
    savings = sorted(x.saving_per_day for x in r.recommendations)
    assert len(savings) >= 2, savings
    min_saving = savings[-1]  # only the largest stays unfolded
    cfg_file = tmp / "cachemon.toml"
    cfg_file.write_text(
        f'[costs]\nmin_saving = {min_saving!r}\narchive_after = "5d"\nedge_target = 99.9\n'
    )
    return db, cfg_file, pd.concat([df1, df2]), r, min_saving


def _app(monkeypatch, db, cfg_file, **state) -> AppTest:
    monkeypatch.setenv("CACHEMON_DB", str(db))
    monkeypatch.setenv("CACHEMON_CONFIG", str(cfg_file))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    at.switch_page("pages/costs.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.fixture(scope="module")
def page(store):
    mp = pytest.MonkeyPatch()
    try:
        yield _app(mp, store[0], store[1])
    finally:
        mp.undo()


def _truth(df: pd.DataFrame) -> pd.DataFrame:
    """Per class (over all the data: the 30-day class window holds it), the
    keys, requests and list cost per day of the page's range: the default
    6 h slid back to the data's end, all of it inside the store's span (its
    requests are the last burst's)."""
    req = df[df.kind == "request"].copy()
    rate = req.groupby("key").sample_interval.sum() / DATA_DAYS
    cls = np.where(rate > 100, "hot", np.where(rate < 10 / 30, "cold", "warm"))
    ts = pd.to_datetime(req.timestamp, utc=True)
    inside = req[ts >= END - 6 * HOUR].copy()
    w = inside.sample_interval.astype(float)
    for tier in ("edge", "kv", "r2", "api"):
        inside[tier] = np.where(inside.tier == tier, w, 0.0)
    inside["fill_errors"] = np.where(
        (inside.status == "error") & inside.tier.isin(["r2", "api"]), w, 0.0
    )
    k = inside.groupby("key")[["edge", "kv", "r2", "api", "fill_errors"]].sum()
    k["requests"] = k[["edge", "kv", "r2", "api"]].sum(axis=1)
    k["cost"] = (
        (
            k.requests * PER_M["workers"]
            + (k.kv + k.r2 + k.api) * PER_M["kv_reads"]
            + np.maximum(k.r2 + k.api - k.fill_errors, 0) * PER_M["kv_writes"]
            + k.r2 * PER_M["r2_gets"]
        )
        / 1e6
        * (DAY / (6 * HOUR))
    )
    k["class"] = pd.Series(cls, index=rate.index).reindex(k.index).values
    g = k.groupby("class").agg(
        keys=("cost", "size"), requests=("requests", "sum"), cost=("cost", "sum")
    )
    return g.reindex(["hot", "warm", "cold"]).fillna(0.0)


def _frame(at, column: str) -> pd.DataFrame:
    return next(d.value for d in at.dataframe if column in d.value.columns)


def _labels(at, column: str) -> dict:
    """The shown header (column_config label) of each column of the table holding `column`."""
    el = next(d for d in at.dataframe if column in d.value.columns)
    conf = json.loads(el.proto.columns)
    return {name: c.get("label", name) for name, c in conf.items()}


def test_class_shares_by_keys_requests_and_cost_match_raw_events(page, store):
    truth = _truth(store[2])
    table = _frame(page, "requests %").set_index("class")
    assert list(table.index) == ["hot", "warm", "cold"]
    assert list(table["keys"]) == [int(n) for n in truth["keys"]]
    assert list(table["requests"]) == pytest.approx(list(truth["requests"]))
    assert list(table["cost USD/day"]) == pytest.approx(list(truth["cost"]), rel=1e-9)
    for shown, col in (("keys %", "keys"), ("requests %", "requests"), ("cost %", "cost")):
        assert list(table[shown]) == pytest.approx(list(100 * truth[col] / truth[col].sum()))
    # Hot keys are few but carry most requests: the shares differ by measure.
    assert table.loc["hot", "keys %"] < table.loc["hot", "requests %"]
    # The cost names its basis: a list rate from the 6 h of the range.
    assert (
        _labels(page, "requests %")["cost USD/day"] == "cost USD/day (list, rate from 6h of data)"
    )
    (caption,) = [c.value for c in page.caption if "class window" in c.value]
    # The class window is the data there is (10 days), the counts the range's.
    assert f"{DATA_DAYS:.1f} days of data" in caption
    assert f"range ({stamp(END - 6 * HOUR)} – {stamp(END)})" in caption
    assert "Worker runs, KV reads, KV writes and R2 gets" in caption
    assert caption.endswith("in USD/day: list, rate from 6h of data.")


def test_the_component_chart_is_sorted_horizontal_bars_in_usd(page, store):
    df = store[2]
    spec = json.loads(page.get("plotly_chart")[0].proto.spec)
    bars = {t["name"].split(" ")[0]: t for t in spec["data"]}
    assert set(bars) == {"list", "billed"}
    assert all(t["orientation"] == "h" for t in bars.values())
    layout = spec["layout"]
    assert layout["barmode"] == "group"
    assert layout["xaxis"]["tickprefix"] == "$" and layout["xaxis"]["tickformat"].startswith(",")
    assert layout["xaxis"]["title"]["text"] == "USD/day (rate from 6h of data)"
    assert layout["yaxis"]["automargin"] is True
    # Sorted by list cost: the dearest component on top (the last category).
    order = layout["yaxis"]["categoryarray"]
    listed = dict(zip(bars["list"]["y"], bars["list"]["x"], strict=True))
    assert [listed[c] for c in order] == sorted(listed.values())
    assert set(order) == {p.label for p in DEFAULT.values()}
    # Workers requests of the 6 h range, per day, at list price.
    req = df[(df.kind == "request") & (pd.to_datetime(df.timestamp, utc=True) >= END - 6 * HOUR)]
    workers = req.sample_interval.sum() * 4 * PER_M["workers"] / 1e6
    assert listed[DEFAULT["workers_requests"].label] == pytest.approx(workers)
    # Values shown on the bars with a $ and cents (or more digits below 10 cents).
    assert all(re.fullmatch(r"\$[\d,]+\.\d{2,}", t) for t in bars["list"]["text"])


def test_every_cost_header_and_tile_names_its_basis(page):
    headers = _labels(page, "billed USD/day")
    assert headers["list USD/day"] == "USD/day (list, rate from 6h of data)"
    assert headers["billed USD/day"] == "USD/day (billed, rate from 6h of data)"
    labels = [m.label for m in page.metric]
    assert labels[0] == "List USD/day (rate from 6h of data)"
    assert any("to date" in lb for lb in labels) and any("forecast" in lb for lb in labels)
    assert all(m.proto.help for m in page.metric)


def test_recommendations_below_min_saving_are_folded_away(page, store):
    _, _, _, r, min_saving = store
    big = [x for x in r.recommendations if x.saving_per_day >= min_saving]
    small = [x for x in r.recommendations if x.saving_per_day < min_saving]
    assert len(big) == 1 and small
    (folded,) = [e for e in page.expander if "smaller recommendation" in e.label]
    cents = f"{min_saving:.2f}" if min_saving >= 0.1 else None
    assert re.fullmatch(
        rf"{len(small)} smaller recommendations? \(< \$[\d.,]+/day\)", folded.label
    ), folded.label
    if cents:
        assert f"${cents}/day" in folded.label
    inside = " ".join(m.value for m in folded.markdown)
    assert all(x.title in inside for x in small)
    assert big[0].title not in inside
    outside = [m.value for m in page.markdown if big[0].title in m.value]
    assert outside and "/day" in outside[0]


def test_no_none_nan_or_inf_in_the_page(page):
    texts = [m.value for m in page.markdown] + [c.value for c in page.caption]
    texts += [m.label for m in page.metric] + [str(m.value) for m in page.metric]
    texts += [e.label for e in page.expander]
    for d in page.dataframe:
        texts += [str(v) for v in d.value.astype(str).to_numpy().ravel()]
        assert not d.value.isna().any().any()
    assert [t for t in texts if BAD.search(t)] == []
    # One timestamp format (`timerange.stamp`), never ISO's "2026-12-01T14:15:00Z".
    assert [t for t in texts if re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d", t)] == []


def test_the_page_says_what_range_and_endpoints_it_counts(store, monkeypatch):
    """The default 6h range, past the newest data, slides back to it and
    says so; an endpoint chosen in the sidebar is said not to apply."""
    at = _app(monkeypatch, store[0], store[1], endpoint="title")
    head = at.caption[0].value
    assert head.startswith(f"All endpoints, UTC · range 6h to the newest data ({stamp(END)})")
    assert [i.value for i in at.info] == [
        "Costs are for all endpoints: the endpoint filter (title) does not apply here."
    ]


def _overflow_and_labels(page) -> tuple[int, list[str], bool]:
    """Horizontal overflow in px, the component chart's y tick texts, and
    whether any two of them overlap."""
    over = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    ticks = page.locator(".js-plotly-plot").first.locator(".yaxislayer-above .ytick text")
    texts = ticks.evaluate_all("els => els.map(e => e.textContent)")
    boxes = [ticks.nth(i).bounding_box() for i in range(ticks.count())]
    overlap = any(
        a["y"] < b["y"] + b["height"] - 1 and b["y"] < a["y"] + a["height"] - 1
        for i, a in enumerate(boxes)
        for b in boxes[i + 1 :]
    )
    return over, texts, overlap


def test_the_page_fits_1440_and_390_px_in_a_browser(store):
    from playwright.sync_api import sync_playwright

    db, cfg_file = store[0], store[1]
    names = {p.label for p in DEFAULT.values()}
    with streamlit_server({"CACHEMON_DB": str(db), "CACHEMON_CONFIG": str(cfg_file)}) as url:
        with sync_playwright() as p:
            browser = chromium(p)
            for width, height in ((1440, 1000), (390, 844)):
                page = browser.new_page(viewport={"width": width, "height": height})
                page.goto(f"{url}/costs")
                page.get_by_text("Daily reports").first.wait_for(timeout=60_000)
                page.wait_for_function(
                    "document.querySelectorAll('.js-plotly-plot').length >= 2", timeout=60_000
                )
                page.wait_for_timeout(1000)
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / f"costs-{width}.png"), full_page=True)
                assert page.locator('[data-testid="stException"]').count() == 0
                over, ticks, overlap = _overflow_and_labels(page)
                assert over <= 0, (width, over)
                # Every component named in full (no "…" truncation), none over another.
                assert set(ticks) == names, (width, ticks)
                assert not overlap, width
                # Each tile's label (its basis) shown whole, not cut with "…".
                cut = page.evaluate(
                    "[...document.querySelectorAll('[data-testid=stMetricLabel] *')]"
                    ".filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.textContent)"
                )
                assert cut == [], (width, cut)
                text = page.inner_text("body")
                assert not BAD.search(text), (width, BAD.findall(text))
                page.close()
            browser.close()
