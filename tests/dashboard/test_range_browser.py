"""The one time range in a real browser (Debian's Chromium): a link's range
and endpoint set the sidebar, survive switching pages, a bad link is said,
and dragging across a time chart zooms every page to that span."""

import ast
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, quote, urlparse

import pytest

from cachemon.clock import floor_to, parse_instant, utcnow
from cachemon.timerange import TimeRange
from tests.dashboard.test_dashboard import _make_store
from tests.helpers import ROOT
from tests.helpers.servers import chromium, streamlit_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    db, cfg_file = _make_store(tmp_path_factory.mktemp("range"), utcnow(), hours=3)
    with streamlit_server({"CACHEMON_DB": str(db), "CACHEMON_CONFIG": str(cfg_file)}) as url:
        yield url


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = chromium(p)
        yield browser.new_page(viewport={"width": 1440, "height": 1000})
        browser.close()


def _query(page) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(urlparse(page.url).query).items()}


def _sidebar(page):
    return page.locator('[data-testid="stSidebar"]')


def _ready(page, text: str = "Window"):
    page.get_by_text(text, exact=False).first.wait_for(timeout=60_000)


def test_a_link_sets_the_range_and_endpoint_and_page_switches_keep_them(server, page):
    page.goto(f"{server}/trends?range=24h&endpoint=title")
    page.locator('[data-testid="stSidebarNav"]').wait_for(timeout=60_000)
    page.wait_for_timeout(1500)
    assert _query(page) == {"range": "24h", "endpoint": "title"}
    assert _sidebar(page).get_by_role("combobox", name="Endpoint").input_value() == "title"
    page.locator('[data-testid="stSidebarNav"]').get_by_text("Costs").click()
    page.wait_for_url("**/costs?**", timeout=30_000)
    page.wait_for_timeout(1500)
    assert _query(page) == {"range": "24h", "endpoint": "title"}
    # A preset chosen on one page is in the URL and stays on the next.
    _sidebar(page).get_by_text("1h", exact=True).click()
    page.wait_for_url("**range=1h**", timeout=30_000)
    page.locator('[data-testid="stSidebarNav"]').get_by_text("Overview").click()
    _ready(page)
    page.wait_for_timeout(1500)
    assert _query(page) == {"range": "1h", "endpoint": "title"}
    page.get_by_text("compared with the previous 1h").wait_for(timeout=30_000)


def test_a_custom_link_shows_that_window(server, page):
    end = floor_to(utcnow(), timedelta(minutes=1)) - timedelta(minutes=30)
    tr = TimeRange.between(end - timedelta(hours=1), end)
    q = tr.query()
    page.goto(f"{server}/?from={q['from']}&to={q['to']}")
    _ready(page)
    page.get_by_text(f"compared with the previous {tr.label}").wait_for(timeout=30_000)
    # The custom form shows the range's ends.
    assert _sidebar(page).get_by_text("Custom range (UTC)").count() == 1
    assert _query(page) == {"from": q["from"], "to": q["to"]}


def test_a_bad_link_is_said_and_the_page_still_works(server, page):
    page.goto(f"{server}/?range=2w&endpoint=nosuch")
    _ready(page)
    sidebar = _sidebar(page)
    sidebar.get_by_text("unknown range '2w'", exact=False).wait_for(timeout=30_000)
    assert page.locator('[data-testid="stException"]').count() == 0


def test_every_url_path_is_its_scripts_name():
    """Until `st.navigation` first runs, Streamlit routes a deep link by the
    pages/ folder's file names: a URL path that differs from its script's
    name (once /keys for pages/topkeys.py) shows "Page not found" on the
    first visit after a start."""
    tree = ast.parse((ROOT / "app.py").read_text())
    (pages,) = [
        ast.literal_eval(n.value)
        for n in tree.body
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "PAGES"
    ]
    assert len(pages) == 8
    for path, _, _, url in pages:
        assert url is None or Path(path).stem == url, (path, url)


def test_the_first_visit_after_a_start_may_be_a_deep_link_with_a_range(tmp_path_factory, page):
    db, cfg_file = _make_store(tmp_path_factory.mktemp("deep"), utcnow(), hours=2)
    with streamlit_server({"CACHEMON_DB": str(db), "CACHEMON_CONFIG": str(cfg_file)}) as url:
        page.goto(f"{url}/keys?range=24h")  # this server's first visit
        page.get_by_text("Top keys").first.wait_for(timeout=60_000)
        page.wait_for_timeout(3000)
        assert page.get_by_text("Page not found").count() == 0
        assert _query(page) == {"range": "24h"}


def test_dragging_across_a_time_chart_zooms_every_page(server, page):
    """Grafana's drag-to-zoom: a box dragged across the Overview's first time
    chart becomes the custom range, in the URL, and the next page keeps it."""
    page.goto(f"{server}/?range=6h")
    _ready(page)
    plot = page.locator('[data-testid="stPlotlyChart"]').first
    plot.locator(".nsewdrag").first.wait_for(timeout=60_000)
    plot.scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    box = plot.locator(".nsewdrag").first.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + 0.40 * box["width"], y)
    page.mouse.down()
    page.mouse.move(box["x"] + 0.55 * box["width"], y, steps=8)
    page.mouse.move(box["x"] + 0.70 * box["width"], y, steps=8)
    page.mouse.up()
    page.wait_for_url("**from=**", timeout=30_000)
    q = _query(page)
    tr = TimeRange.between(*(parse_instant(q[k]) for k in ("from", "to")))
    # About 30 % of six hours, in the middle of the range.
    assert timedelta(minutes=80) <= tr.end - tr.start <= timedelta(minutes=140), q
    assert utcnow() - timedelta(hours=4) <= tr.start <= utcnow() - timedelta(hours=2), q
    page.get_by_text(f"compared with the previous {tr.label}").wait_for(timeout=30_000)
    page.locator('[data-testid="stSidebarNav"]').get_by_text("Trends").click()
    page.wait_for_url("**/trends?**", timeout=30_000)
    page.wait_for_timeout(1500)
    assert _query(page) == q


def test_a_hostile_link_is_quoted_as_text_never_as_a_link(server, page):
    """A URL's text reaches the sidebar's warning: shown as typed, so a crafted
    link cannot put a working link or an image into the dashboard."""
    evil = "[Session expired, log in again](https://evil.example/login)"
    page.goto(f"{server}/?range={quote(evil)}&endpoint={quote('![x](https://evil.example/x.png)')}")
    _ready(page)
    sidebar = _sidebar(page)
    sidebar.get_by_text("unknown range", exact=False).wait_for(timeout=30_000)
    assert sidebar.locator('a[href*="evil.example"]').count() == 0
    assert sidebar.locator('img[src*="evil.example"]').count() == 0
    assert "(https://evil.example/login)" in sidebar.inner_text().replace("\u200b", "")
