"""Dashboard benchmark: server-side render time of every page on 30 days at
the seed's volume, and the Streamlit server's memory over 200 fragment
refreshes of the Overview page in headless Chromium.

    .venv/bin/python -m bench.bench_dashboard [--days 30] [--runs 5] [--refreshes 200]
        [--db STORE] [--before CHECKOUT]

Builds bench/out/dash30.duckdb with `cachemon demo` (with the simulator's
experiment configured) unless it exists (`--db` names another store, its
config the .toml beside it). Render time is one AppTest run of the page
(the script on the server, reads included), with Streamlit's data cache
cleared before each run (uncached) and not (cached, as viewers who share a
refresh tick see it).

Two costs of AppTest that a served dashboard does not pay on every render
are left out of the time: it compiles the scripts anew for every run (a
fresh ScriptCache; a server compiles each script once), which the timed
runs share one cache for, and a new AppTest's first run discovers the
installed components (a server does it once at start), so every page,
the Overview too, is timed on a second run of its AppTest.

`--before CHECKOUT` times the same pages with the code of another checkout
(the code before a change) in the same run: each page and range is timed in
a fresh process for either checkout in turn, so both see the same load, and
the table shows both side by side with the ratio.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import httpx

from cachemon.clock import iso, utcnow
from cachemon.timerange import TimeRange
from cachemon.tuning.experiments import example_toml

ROOT = Path(__file__).resolve().parent.parent

OUT = ROOT / "bench" / "out"
PAGES = ["overview", "trends", "keys", "experiments", "ttl", "alerts", "costs", "jobs"]


def build_store(days: int) -> tuple[Path, Path]:
    db, cfg = OUT / f"dash{days}.duckdb", OUT / f"dash{days}.toml"
    if not db.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        start = utcnow() - timedelta(days=min(days, 14))
        cfg.write_text(example_toml(start=iso(start)))
        t = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "cachemon",
                "--db",
                str(db),
                "--config",
                str(cfg),
                "demo",
                "--days",
                str(days),
                "--quiet",
            ],
            cwd=ROOT,
            check=True,
        )
        print(f"built {db.name} ({days} days) in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return db, cfg


def render_times(
    db: Path, cfg: Path, runs: int, pages: list[str], preset: str, root: Path = ROOT
) -> list[tuple[str, float, float]]:
    """Per page: the median render (s) uncached and cached, with the app of `root`."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    share_script_cache()
    os.environ.update(CACHEMON_DB=str(db), CACHEMON_CONFIG=str(cfg))
    out = []
    for page in pages:
        timings = {True: [], False: []}
        for cold in [True] * runs + [False] * runs:
            if cold:
                st.cache_data.clear()
            at = AppTest.from_file(str(root / "app.py"), default_timeout=300)
            at.session_state["time_range"] = TimeRange.of(preset)
            at.run()  # the app's own first run (sidebar + Overview) is not this page's time
            if cold:
                st.cache_data.clear()
            t = time.perf_counter()
            if page != "overview":
                at.switch_page(f"pages/{page}.py").run()
            else:
                at.run()
            timings[cold].append(time.perf_counter() - t)
            assert not at.exception, (page, [e.value for e in at.exception])
        out.append((page, statistics.median(timings[True]), statistics.median(timings[False])))
    return out


def share_script_cache() -> None:
    """One ScriptCache for every AppTest run of this process, as a server has
    one for all its sessions (AppTest makes a new one per run, so every run
    would compile, with Streamlit's magic, the app and page scripts again)."""
    from streamlit.runtime.scriptrunner.script_cache import ScriptCache
    from streamlit.testing.v1 import app_test, local_script_runner

    cache = ScriptCache()
    for module in (app_test, local_script_runner):
        module.ScriptCache = lambda: cache


def child_times(
    root: Path, db: Path, cfg: Path, runs: int, page: str, preset: str
) -> tuple[float, float]:
    """`render_times` of one page in a fresh process running the code of
    `root` (this script, with `root` first on the import path)."""
    out = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            str(root),
            "--db",
            str(db),
            "--runs",
            str(runs),
            "--pages",
            page,
            "--ranges",
            preset,
        ],
        cwd=root,
        env=dict(os.environ, PYTHONPATH=str(root)),
        check=True,
        capture_output=True,
        text=True,
    )
    _, cold, warm = json.loads(out.stdout.strip().splitlines()[-1])[0]
    return cold, warm


def compare(
    before: Path,
    db: Path,
    cfg: Path,
    runs: int,
    pages: list[str],
    presets: list[str],
    before_db: Path | None = None,
):
    """Before and after side by side, each page and range timed in turn by
    both; the code before reads `before_db` (a copy of the same data in the
    schema it knows) when given."""
    print(
        "| page | range | uncached: before | after | ratio | cached: before | after | ratio |"
        "\n| --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    for preset in presets:
        for page in pages:
            b = child_times(before, before_db or db, cfg, runs, page, preset)
            a = child_times(ROOT, db, cfg, runs, page, preset)
            print(
                f"| {page} | {preset} | {b[0] * 1000:,.0f} ms | {a[0] * 1000:,.0f} ms "
                f"| {b[0] / a[0]:.1f}× | {b[1] * 1000:,.0f} ms | {a[1] * 1000:,.0f} ms "
                f"| {b[1] / a[1]:.1f}× |",
                flush=True,
            )
    print(f"\nload average after: {os.getloadavg()[0]:.2f} (1 min)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_curve(db: Path, cfg: Path, refreshes: int, every: float) -> list[tuple[int, float]]:
    from playwright.sync_api import sync_playwright

    port = free_port()
    env = dict(
        os.environ,
        CACHEMON_DB=str(db),
        CACHEMON_CONFIG=str(cfg),
        CACHEMON_REFRESH_SECONDS=str(every),
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    curve = []
    try:
        for _ in range(120):
            try:
                if (
                    httpx.get(f"http://127.0.0.1:{port}/_stcore/health", timeout=1).status_code
                    == 200
                ):
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/")
            page.get_by_text("Combined hit rate %").wait_for(timeout=120_000)
            start = time.monotonic()
            for n in range(0, refreshes + 1, 20):
                while time.monotonic() - start < n * every:
                    time.sleep(0.05)
                curve.append((n, rss_mb(server.pid)))
            errors = page.locator('[data-testid="stException"]')
            assert errors.count() == 0, errors.first.inner_text()
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    return curve


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--refreshes", type=int, default=200)
    ap.add_argument(
        "--every", type=float, default=1.0, help="fragment refresh interval for the memory run (s)"
    )
    ap.add_argument("--skip-render", action="store_true")
    ap.add_argument("--pages", default=",".join(PAGES), help="pages to time (comma-separated)")
    ap.add_argument(
        "--ranges", default="6h,30d", help="the dashboard time ranges to time (comma-separated)"
    )
    ap.add_argument("--db", type=Path, help="the store to read (its config: the .toml beside it)")
    ap.add_argument("--before", type=Path, help="also time the code of this checkout, side by side")
    ap.add_argument(
        "--before-db",
        type=Path,
        help="the store the --before code reads (a copy of --db before a schema migration)",
    )
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # compare's child process
    args = ap.parse_args()
    logging.getLogger("streamlit").setLevel(logging.ERROR)
    db, cfg = (args.db, args.db.with_suffix(".toml")) if args.db else build_store(args.days)
    pages, presets = args.pages.split(","), args.ranges.split(",")
    if args.child:
        timed = render_times(db, cfg, args.runs, pages, presets[0], args.child.resolve())
        print(json.dumps(timed))
        return 0
    if args.before and not args.skip_render:
        print(f"load average before: {os.getloadavg()[0]:.2f} (1 min)\n")
        compare(args.before.resolve(), db, cfg, args.runs, pages, presets, args.before_db)
    elif not args.skip_render:
        print(
            f"| page ({args.days} days, seed volume) | range | median render, uncached "
            "| median render, cached |"
        )
        print("| --- | --- | --- | --- |")
        for preset in args.ranges.split(","):
            timed = render_times(db, cfg, args.runs, args.pages.split(","), preset)
            for page, cold, warm in timed:
                print(
                    f"| {page} | {preset} | {cold * 1000:.0f} ms | {warm * 1000:.0f} ms |",
                    flush=True,
                )
    if not args.refreshes:
        return 0
    curve = memory_curve(db, cfg, args.refreshes, args.every)
    print(f"\n| Overview fragment refreshes (every {args.every:g} s) | server RSS |")
    print("| --- | --- |")
    for n, mb in curve:
        print(f"| {n} | {mb:.0f} MB |")
    growth = curve[-1][1] - curve[len(curve) // 2][1]
    print(f"\nRSS growth over the second half: {growth:+.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
