"""Every page in a real browser (Debian's Chromium) at a desktop and a phone
size: no horizontal overflow, no "nan", "inf" or "None" in the text, no
exception; and the theme follows the browser's light or dark setting."""

from __future__ import annotations

import ast
import re

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from cachemon.clock import utcnow
from tests.dashboard.test_dashboard import _make_store
from tests.helpers import ROOT
from tests.helpers.servers import chromium, streamlit_server

VIEWPORTS = {"1440x1000": (1440, 1000), "390x844": (390, 844)}
# Drawn: Streamlit is not running the script, no placeholder is left, every
# Plotly chart has its SVG, and the page's heading shows.
DRAWN_JS = """() => {
  if (document.querySelector('[data-testid="stStatusWidgetRunningIcon"], [data-testid="stSkeleton"]')) return false;
  const charts = [...document.querySelectorAll('[data-testid="stPlotlyChart"]')];
  return charts.every(c => c.querySelector('.main-svg')) && !!document.querySelector('h1, h2');
}"""
# What sticks out to the right of the viewport: the document's and the main
# block's scroll widths, and every element of the main block wider than the
# viewport or past its right edge that no scrolling or clipping box holds
# within the viewport (a table scrolling inside its own frame is fine). Only
# the outermost offender is named.
OVERFLOW_JS = """() => {
  const W = window.innerWidth, out = [];
  const doc = document.documentElement.scrollWidth;
  if (doc > W + 1) out.push(`the page scrolls sideways: ${doc} px wide in ${W}`);
  const main = document.querySelector('[data-testid="stMain"]');
  if (!main) return ['no main block'];
  if (main.scrollWidth > main.clientWidth + 1)
    out.push(`the main block scrolls sideways: ${main.scrollWidth} px in ${main.clientWidth}`);
  const name = el => {
    const id = el.closest('[data-testid]');
    const text = (el.innerText || '').trim().split('\\n')[0].slice(0, 40);
    return `${id ? id.dataset.testid : el.tagName}${text ? ' "' + text + '"' : ''}`;
  };
  const flagged = new Set();
  for (const el of main.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (!(r.width > W + 1 || r.right > W + 1) || r.height === 0) continue;
    let held = false;
    for (let a = el.parentElement; a && a !== main; a = a.parentElement) {
      if (flagged.has(a)) { held = true; break; }
      const s = getComputedStyle(a);
      if (s.overflowX !== 'visible' && a.getBoundingClientRect().right <= W + 1) { held = true; break; }
    }
    if (held) continue;
    flagged.add(el);
    if (flagged.size <= 5)
      out.push(`${name(el)} spans ${Math.round(r.left)}-${Math.round(r.right)} px of ${W}`);
  }
  return out;
}"""
BAD_WORDS = re.compile(r"\b(?:nan|inf)\b|\bNone\b(?! of\b)", re.IGNORECASE)


def _words(text: str) -> list[str]:
    """Each "nan", "inf" or "None" in `text` as a word, with its context."""
    found = []
    for m in BAD_WORDS.finditer(text):
        word = m.group(0)
        if word.lower() == "none" and word != "None":
            continue  # English ("none configured", "None of the keys") is fine; Python's None is not
        found.append(repr(text[max(0, m.start() - 40) : m.end() + 40]))
    return found


def pages() -> list[tuple[str, str]]:
    """(script, url path) of every page in app.py's PAGES ('' is the Overview)."""
    for node in ast.parse((ROOT / "app.py").read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "PAGES" for t in node.targets
        ):
            return [(path, url or "") for path, _, _, url in ast.literal_eval(node.value)]
    raise AssertionError("app.py has no PAGES")


def page_urls() -> list[str]:
    return [url for _, url in pages()]


def _drawn(page, timeout_ms: int = 120_000) -> None:
    """Until the page is drawn, and still so a second later (a rerun may follow)."""
    steady, waited = 0, 0
    while steady < 2:
        assert waited < timeout_ms, f"{page.url} was not drawn"
        steady = steady + 1 if page.evaluate(DRAWN_JS) else 0
        page.wait_for_timeout(500)
        waited += 500


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return _make_store(tmp_path_factory.mktemp("layout"), utcnow(), evil=True)


@pytest.fixture(scope="module")
def server(store):
    db, cfg_file = store
    with streamlit_server({"CACHEMON_DB": str(db), "CACHEMON_CONFIG": str(cfg_file)}) as url:
        yield url


def test_no_table_shows_a_missing_value_as_none(store, monkeypatch):
    """A table draws its missing cells as "None" on its canvas, out of the
    browser's text: every table of every page, headless, has none, and no
    nan or inf either (a cell says "n/a" or "—")."""
    db, cfg_file = store
    monkeypatch.setenv("CACHEMON_DB", str(db))
    monkeypatch.setenv("CACHEMON_CONFIG", str(cfg_file))
    problems = []
    for path, url in pages():
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        at.run()
        at.switch_page(path).run()
        assert not at.exception, (url, [e.value for e in at.exception])
        for i, table in enumerate([*at.dataframe, *at.table]):
            df = table.value
            for col in df.columns:
                values = df[col]
                missing = values.isna()
                numbers = pd.to_numeric(values, errors="coerce")
                infinite = numbers.abs() == float("inf")
                if missing.any() or infinite.any():
                    problems.append(
                        f"/{url} table {i} column {col!r}: {int(missing.sum())} missing, "
                        f"{int(infinite.sum())} infinite of {len(values)}"
                    )
    assert not problems, "\n".join(problems)


def test_every_page_fits_the_screen_and_shows_no_nan_none_or_exception(server):
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with sync_playwright() as p:
        browser = chromium(p)
        for size, (width, height) in VIEWPORTS.items():
            page = browser.new_page(viewport={"width": width, "height": height})
            for url in page_urls():
                where = f"/{url} at {size}"
                page.goto(f"{server}/{url}")
                _drawn(page)
                problems += [f"{where}: {o}" for o in page.evaluate(OVERFLOW_JS)]
                text = page.locator('[data-testid="stApp"]').inner_text()
                problems += [f"{where}: shows {w}" for w in _words(text)]
                if page.locator('[data-testid="stException"]').count() or "Traceback" in text:
                    problems.append(f"{where}: an exception is shown")
            # The probe itself finds what it must: a block twice the screen's width.
            page.evaluate(
                "() => { const d = document.createElement('div'); d.id = 'too-wide';"
                " d.style.width = (2 * innerWidth) + 'px'; d.style.height = '5px';"
                " document.querySelector('[data-testid=\"stMainBlockContainer\"]').append(d); }"
            )
            assert any("spans" in o for o in page.evaluate(OVERFLOW_JS)), size
            page.close()
        browser.close()
    assert not problems, "\n".join(problems)


def _luminance(css: str) -> float:
    """The relative brightness (0 black, 1 white) of a CSS rgb()/rgba() colour."""
    r, g, b = (int(x) for x in re.findall(r"\d+", css)[:3])
    return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255


def test_the_theme_follows_the_browsers_light_or_dark_setting(server):
    from playwright.sync_api import sync_playwright

    seen = {}
    with sync_playwright() as p:
        browser = chromium(p)
        for scheme in ("dark", "light"):
            page = browser.new_page(viewport={"width": 1440, "height": 1000}, color_scheme=scheme)
            page.goto(f"{server}/trends")
            _drawn(page)
            seen[scheme] = page.evaluate(
                """() => ({
                  app: getComputedStyle(document.querySelector('[data-testid="stApp"]')).backgroundColor,
                  text: getComputedStyle(document.querySelector('h1, h2')).color,
                  tick: getComputedStyle(document.querySelector('.xtick text')).fill,
                })"""
            )
            page.close()
        browser.close()
    dark, light = seen["dark"], seen["light"]
    # A dark page with light text and light chart labels; and the reverse.
    assert _luminance(dark["app"]) < 0.2 and _luminance(dark["text"]) > 0.7, dark
    assert _luminance(light["app"]) > 0.9 and _luminance(light["text"]) < 0.3, light
    for theme in (dark, light):  # the charts' axis labels stand out from the page
        assert abs(_luminance(theme["tick"]) - _luminance(theme["app"])) > 0.4, theme
