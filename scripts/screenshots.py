"""Screenshots of every dashboard page, for docs/dashboard.md.

    .venv/bin/python scripts/screenshots.py [--db STORE --config TOML] [--days 7] [--out docs/img]

Without --db it fills a store with a demo (`cachemon demo`, the
simulator's experiment configured as `./run.sh` does) in a temporary
directory. It starts the dashboard on a free loopback port and saves, with
Debian's Chromium, each page of app.py's PAGES at 1440x1000 (the whole page)
as `page-<url>.png` (`page-overview.png` for /), the Overview at 390x844
as `page-overview-mobile.png` and in a browser set to dark mode as
`page-overview-dark.png`. Images are stored as 256-colour PNGs when
that keeps them small.
"""

from __future__ import annotations

import argparse
import ast
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import httpx
from PIL import Image
from playwright.sync_api import Page, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a file: the repository's cachemon

from cachemon.clock import HOUR, floor_to, iso, utcnow  # noqa: E402
from cachemon.tuning.experiments import example_toml  # noqa: E402

CHROMIUM = "/usr/bin/chromium"  # Debian's: never a downloaded browser
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
DESKTOP = {"width": 1440, "height": 1000}
MOBILE = {"width": 390, "height": 844}
MAX_BYTES = 400_000  # each image in the repository stays below this
# A page is drawn when Streamlit is not running the script, no element is
# still a placeholder, every Plotly chart has its SVG, and a heading shows.
DRAWN_JS = """() => {
  if (document.querySelector('[data-testid="stStatusWidget"] [data-testid="stStatusWidgetRunningIcon"], [data-testid="stSkeleton"]')) return false;
  const charts = [...document.querySelectorAll('[data-testid="stPlotlyChart"]')];
  return charts.every(c => c.querySelector('.main-svg')) && !!document.querySelector('h1, h2');
}"""


def page_urls(app: Path = ROOT / "app.py") -> list[str]:
    """The url path of every page in app.py's PAGES ('' for the default page)."""
    for node in ast.parse(app.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "PAGES" for t in node.targets
        ):
            return [url or "" for _, _, _, url in ast.literal_eval(node.value)]
    raise SystemExit(f"no PAGES in {app}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_store(tmp: Path, days: float) -> tuple[Path, Path]:
    """A store with `days` of simulated traffic ending now, and its config."""
    db, cfg = tmp / "cachemon.duckdb", tmp / "demo.toml"
    start = floor_to(utcnow() - timedelta(days=days), HOUR)
    cfg.write_text(example_toml(start=iso(start)))
    env = dict(os.environ, CACHEMON_DB=str(db), CACHEMON_CONFIG=str(cfg), PYTHONPATH=str(ROOT))
    subprocess.run(
        [sys.executable, "-m", "cachemon", "demo", "--days", f"{days:g}", "--quiet"],
        cwd=ROOT,
        env=env,
        check=True,
    )
    return db, cfg


def wait_drawn(page: Page, timeout_s: float = 120) -> None:
    """Until the page is drawn and stays so for a second (a rerun can follow the first run)."""
    deadline = time.time() + timeout_s
    steady = 0
    while steady < 2:
        if time.time() > deadline:
            raise TimeoutError(f"{page.url} was not drawn within {timeout_s:g} s")
        steady = steady + 1 if page.evaluate(DRAWN_JS) else 0
        page.wait_for_timeout(500)


def whole_page(page: Page, viewport: dict) -> bytes:
    """A PNG of the whole page: Streamlit scrolls inside its main block, not the
    document, so the viewport grows to the content's height first."""
    height = page.evaluate(
        'Math.max(...[...document.querySelectorAll(\'[data-testid="stMain"], '
        '[data-testid="stSidebarContent"]\')].map(e => e.scrollHeight), 0)'
    )
    page.set_viewport_size({"width": viewport["width"], "height": max(viewport["height"], height)})
    page.wait_for_timeout(800)
    wait_drawn(page)
    png = page.screenshot(full_page=True)
    page.set_viewport_size(viewport)
    return png


def small_png(png: bytes) -> bytes:
    """The PNG as stored: 256 colours (a dashboard has few) when that is smaller."""
    img = Image.open(io.BytesIO(png)).convert("RGB")
    out = io.BytesIO()
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, "PNG", optimize=True)
    return min(png, out.getvalue(), key=len)


def shoot(base: str, out: Path, urls: list[str]) -> list[Path]:
    """Every page at 1440x1000, the Overview also at 390x844 and in dark mode;
    returns the files."""
    saved = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        shots = [(url, DESKTOP, "light", "") for url in urls] + [
            ("", MOBILE, "light", "-mobile"),
            ("", DESKTOP, "dark", "-dark"),
        ]
        for url, viewport, scheme, suffix in shots:
            page = browser.new_page(viewport=viewport, color_scheme=scheme)
            page.goto(f"{base}/{url}")
            wait_drawn(page)
            path = out / f"page-{url or 'overview'}{suffix}.png"
            path.write_bytes(small_png(whole_page(page, viewport)))
            size = path.stat().st_size
            print(
                f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {size:,} bytes"
            )
            if size > MAX_BYTES:
                print(f"  warning: larger than {MAX_BYTES:,} bytes", file=sys.stderr)
            saved.append(path)
            page.close()
        browser.close()
    return saved


def serve(db: Path, cfg: Path):
    """`streamlit run app.py` on a free loopback port; returns (process, URL)."""
    port = free_port()
    env = dict(os.environ, CACHEMON_DB=str(db), CACHEMON_CONFIG=str(cfg), PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)]
        + ["--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            if httpx.get(base + "/_stcore/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise SystemExit("streamlit did not start")
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", type=Path, help="an existing store (default: a new demo)")
    ap.add_argument("--config", type=Path, help="its config file (with --db)")
    ap.add_argument("--days", type=float, default=7.0, help="days of demo traffic (default 7)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img", help="where the PNGs go")
    args = ap.parse_args(argv)
    if args.config and not args.db:
        ap.error("--config goes with --db")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cachemon-shots-") as tmp:
        if args.db:
            db = args.db.resolve()
            cfg = args.config.resolve() if args.config else Path(tmp) / "empty.toml"
            if not args.config:
                cfg.write_text("")
        else:
            db, cfg = demo_store(Path(tmp), args.days)
        proc, base = serve(db, cfg)
        try:
            shoot(base, args.out, page_urls())
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
