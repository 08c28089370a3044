"""The TTL what-if page (issue #21): the recommendation is the Costs
recommendation for every endpoint, candidates reach the staleness limit,
curves over a labelled log TTL axis with the current TTL and the limit
marked, a warning when an experiment already runs on the endpoint, the
global endpoint (a summary for "all"), and no None/nan/inf, checked against
the library's rule and what-if run directly and the stored report."""

from __future__ import annotations

import json
import math
import re
from datetime import timedelta

import pytest

from cachemon import config
from cachemon.clock import Window, floor_to, format_duration, parse_duration, utcnow
from cachemon.costs import optimize, report
from cachemon.store import db as store_db
from cachemon.store.queries import data_end
from cachemon.timerange import stamp
from cachemon.tuning import whatif as tuning_whatif
from tests.dashboard.test_dashboard import _app, _make_store
from tests.helpers.servers import chromium, streamlit_server

BAD_TEXT = re.compile(r"\b(None|nan|NaN|inf)\b")


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    """Two days of the small demo ending two hours ago (fixed whatever the
    minute), the seed's experiment running on title, a daily report stored."""
    end = floor_to(utcnow(), timedelta(minutes=1)) - timedelta(hours=2)
    db, cfg_file = _make_store(tmp_path_factory.mktemp("ttlpage"), end, hours=48)
    return db, cfg_file, config.load(cfg_file, env={"CACHEMON_DB": str(db)})


def _costs_ttls(at, cfg) -> dict[str, timedelta]:
    """Each endpoint's TTL as the Costs page shows it: the ttl_tuning
    action's new TTL, else the current one."""
    actions = [t.value for t in at.text if t.value.startswith("Action: Increase")]
    found = {
        e: parse_duration(new)
        for a in actions
        for e, _, new in re.findall(r"(\w+) KV TTL (\w+) → (\w+)", a)
    }
    return {e: found.get(e, t) for e, t in cfg.costs.kv_ttl}


def _shown_ttl(at, current: timedelta) -> timedelta:
    """The TTL the page recommends: 'Recommended: a → b' or 'Keep a'."""
    (text,) = [s.value for s in at.success]
    m = re.match(r"Recommended: (\w+) → (\w+)\.", text)
    if m:
        assert parse_duration(m.group(1)) == current
        return parse_duration(m.group(2))
    m = re.match(r"Keep (\w+)\.", text)
    assert m, text
    return parse_duration(m.group(1))


def _texts(at) -> list[str]:
    out = [
        x.value for kind in ("caption", "success", "warning", "info", "error") for x in at.get(kind)
    ]
    out += [x.value for x in at.markdown] + [c.value for c in at.code]
    for df in at.dataframe:
        out += [str(v) for v in df.value.astype(str).to_numpy().ravel()] + list(df.value.columns)
    return out


def _truth(db, cfg, endpoint: str, days: float = 7.0):
    """The rule's choice and the what-if at the default candidates, run directly."""
    with store_db.reader(db) as con:
        end = data_end(con, utcnow())
        choices = optimize.recommended_ttls(
            con, cfg, Window(end - cfg.costs.class_window, end), end
        )
        current = dict(cfg.costs.kv_ttl)[endpoint]
        ttls = tuning_whatif.default_candidates(current, cfg.costs.max_kv_ttl)
        asked = sorted({*ttls, choices[endpoint].recommended})
        (w,) = tuning_whatif.whatif(
            con, cfg, [endpoint], asked, Window(end - timedelta(days=days), end), end
        )
    return choices, w


def test_the_page_recommends_what_costs_recommends_for_every_endpoint(demo_store, monkeypatch):
    db, cfg_file, cfg = demo_store
    costs = _costs_ttls(_app(monkeypatch, db, cfg_file, "costs"), cfg)
    with store_db.reader(db) as con:
        stored = report.recent(con, 1)[0].report
    assert any(r.type == optimize.Kind.TTL_TUNING for r in stored.recommendations), (
        "the demo store must make Costs recommend a TTL change"
    )
    assert costs["author"] > timedelta(days=7)  # the case: Costs says past 1w for author
    for endpoint, current in cfg.costs.kv_ttl:
        at = _app(monkeypatch, db, cfg_file, "ttl", endpoint=endpoint)
        assert not at.main.error, [e.value for e in at.main.error]
        shown = _shown_ttl(at, current)
        choices, w = _truth(db, cfg, endpoint)
        assert shown == costs[endpoint] == choices[endpoint].recommended, endpoint
        table = at.dataframe[0].value
        marked = [t for t in table["TTL"] if t.endswith("(recommended)")]
        assert marked == [f"{format_duration(shown)} (recommended)"]
        # Candidates reach the staleness limit by default: the limit is the last row.
        assert table["TTL"].iloc[-1].split()[0] == format_duration(cfg.costs.max_kv_ttl)
        assert list(table["KV hit %"].str.split().str[0].astype(float)) == pytest.approx(
            [p.kv_hit_rate for p in w.candidates], abs=0.006
        )
        if shown != current:
            assert f'ttl = "{format_duration(shown)}"' in at.code[0].value
            # The what-if's check of that TTL is said, whichever way it goes.
            ck = tuning_whatif.check(w, shown)
            said = {
                tuning_whatif.AGREES: "agrees",
                tuning_whatif.DISAGREES: "disagrees",
                tuning_whatif.UNCHECKED: "cannot check",
            }[ck.verdict]
            assert any(said in t for t in _texts(at)), ck
        else:
            assert not at.code
        assert not [t for t in _texts(at) if BAD_TEXT.search(t)]


def test_all_endpoints_get_a_summary_and_no_endpoint_control(demo_store, monkeypatch):
    db, cfg_file, cfg = demo_store
    at = _app(monkeypatch, db, cfg_file, "ttl", endpoint="all")
    assert not at.main.error
    # The page's own Endpoint control is gone: the sidebar's is the one.
    assert not [s for s in at.main.selectbox if s.label == "Endpoint"]
    assert any("pick one in the sidebar" in i.value for i in at.info)
    (table,) = [d.value for d in at.dataframe]
    choices, _ = _truth(db, cfg, "title")
    costs = _costs_ttls(_app(monkeypatch, db, cfg_file, "costs"), cfg)
    assert list(table["endpoint"]) == [e for e, _ in cfg.costs.kv_ttl]
    assert [parse_duration(t) for t in table["recommended TTL"]] == [
        choices[e].recommended for e in table["endpoint"]
    ]
    assert [parse_duration(t) for t in table["recommended TTL"]] == [
        costs[e] for e in table["endpoint"]
    ]
    assert list(table["churning warm keys"]) == [f"{choices[e].keys:,}" for e in table["endpoint"]]
    assert list(table["running experiment"]) == [
        "extended-title-ttl" if e == "title" else "—" for e in table["endpoint"]
    ]
    assert not at.get("plotly_chart")  # the curves are one endpoint's
    assert not [t for t in _texts(at) if BAD_TEXT.search(t)]


def test_a_running_experiment_is_warned_of_before_another_is_drafted(demo_store, monkeypatch):
    db, cfg_file, cfg = demo_store
    (x,) = cfg.experiments
    assert x.endpoint == "title" and x.start <= utcnow() < x.start + x.duration
    at = _app(monkeypatch, db, cfg_file, "ttl", endpoint="title")
    warned = [w.value for w in at.warning if "already running" in w.value]
    assert warned == [
        f"Experiment {x.name} is already running on title ({stamp(x.start)} – "
        f"{stamp(x.start + x.duration)}; control 1d, treatment 2d): another one on the same "
        "keys would confound both. Let it finish before starting this one."
    ]
    if at.code:  # a draft, folded away under "anyway"
        assert [e.label for e in at.expander] == ["Draft experiment anyway"]
    at = _app(monkeypatch, db, cfg_file, "ttl", endpoint="author")
    assert not [w for w in at.warning if "already running" in w.value]
    assert [e.label for e in at.expander] == ["Prove it with an experiment"]


def test_a_limit_below_the_current_ttl_is_said_and_a_bad_one_refused(demo_store, monkeypatch):
    db, cfg_file, cfg = demo_store
    at = _app(monkeypatch, db, cfg_file, "ttl", endpoint="title", ttl_limit="12h")
    assert not at.main.error
    assert any(
        w.value.startswith("The current TTL 1d is past the staleness limit of 12h")
        for w in at.warning
    )
    # Every candidate within the limit; the rule keeps 1d (nothing up to 12h costs less).
    table = at.dataframe[0].value
    assert list(table["TTL"]) == ["6h", "12h", "1d (recommended)"]
    at.text_input(key="ttl_limit").input("400d").run()
    assert any("between 60s and 365d" in e.value for e in at.error)


def _figures(at) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def test_curves_over_a_labelled_log_ttl_axis(demo_store, monkeypatch):
    db, cfg_file, cfg = demo_store
    at = _app(monkeypatch, db, cfg_file, "ttl", endpoint="author")
    choices, w = _truth(db, cfg, "author")
    hit, cost = _figures(at)
    limit = cfg.costs.max_kv_ttl.total_seconds()
    for fig in (hit, cost):
        x = fig["layout"]["xaxis"]
        assert x["type"] == "log"
        assert {"1h", "6h", "1d", "7d", "30d"} <= set(x["ticktext"])
        assert dict(zip(x["ticktext"], x["tickvals"]))["30d"] == 30 * 86400
        lo, hi = x["range"]
        assert 10**lo <= min(p.ttl.total_seconds() for p in w.curve) and 10**hi >= limit
        # Each labelled line: a vertical shape, its label at the same x (log axis: log10).
        shapes = {s["x0"] for s in fig["layout"]["shapes"] if s["x0"] == s["x1"]}
        lines = {a["text"]: 10 ** a["x"] for a in fig["layout"]["annotations"]}
        assert all(any(math.isclose(x, s) for s in shapes) for x in lines.values())
        lines = {k: round(v) for k, v in lines.items()}
        assert lines[f"current {format_duration(w.current_ttl)}"] == w.current_ttl.total_seconds()
        assert lines[f"staleness limit {format_duration(cfg.costs.max_kv_ttl)}"] == limit
        rec = choices["author"].recommended
        if rec != w.current_ttl:
            assert lines[f"recommended {format_duration(rec)}"] == rec.total_seconds()
        (cand,) = [t for t in fig["data"] if t.get("name") == "candidates"]
        assert cand["text"] == [format_duration(p.ttl) for p in w.candidates]
        assert cand["x"] == [p.ttl.total_seconds() for p in w.candidates]
        assert fig["layout"]["yaxis"]["title"]["text"]
    (cand,) = [t for t in hit["data"] if t.get("name") == "candidates"]
    assert cand["y"] == pytest.approx([p.kv_hit_rate for p in w.candidates], abs=1e-9)
    (cc,) = [t for t in cost["data"] if t.get("name") == "candidates"]
    assert cc["y"] == pytest.approx([p.cost for p in w.candidates], rel=1e-9)
    # The replay states a standard error: error bars on the candidates, a band on the curve.
    errors = [p.kv_hit_error for p in w.candidates]
    stated = [e is not None and math.isfinite(e) for e in errors]
    assert cand["error_y"]["visible"] == any(stated)
    if any(stated):
        assert cand["error_y"]["array"] == pytest.approx(
            [e if s else 0 for e, s in zip(errors, stated)]
        )
        assert any(t.get("name") == "± 1 standard error" for t in hit["data"])


@pytest.mark.parametrize("width,height", [(1440, 1000), (390, 844)])
def test_the_page_fits_in_a_real_browser(demo_store, width, height):
    from playwright.sync_api import sync_playwright

    db, cfg_file, _ = demo_store
    env = {"CACHEMON_DB": str(db), "CACHEMON_CONFIG": str(cfg_file)}
    with streamlit_server(env) as url, sync_playwright() as p:
        browser = chromium(p)
        page = browser.new_page(viewport={"width": width, "height": height})
        for endpoint in ("author", "all"):
            page.goto(f"{url}/ttl" + (f"?endpoint={endpoint}" if endpoint != "all" else ""))
            want = "Recommended" if endpoint == "author" else "pick one in the sidebar"
            page.get_by_text(want).first.wait_for(timeout=90_000)
            page.wait_for_timeout(1500)
            text = page.locator('[data-testid="stMain"]').inner_text()
            assert not BAD_TEXT.search(text), BAD_TEXT.search(text)
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, (endpoint, width, overflow)
        browser.close()
