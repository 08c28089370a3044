"""`demo`, `import`, `pull`: fill the store from the simulator, event files or Analytics Engine."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import datetime

from tqdm import tqdm

from cachemon.clock import check_not_future, parse_instant
from cachemon.ingest import load as ingest_load
from cachemon.settings import Config
from cachemon.sources.analytics_engine import Client
from cachemon.usecases import demo as usecases_demo


def register(sub) -> None:
    """Add the `demo`, `import` and `pull` commands."""
    p = sub.add_parser(
        "demo",
        description="Replace the simulator's data with N days of simulated traffic ending now.",
    )
    p.add_argument("--days", type=float, default=7.0, help="days of traffic (default 7)")
    p.add_argument("--seed", type=int, help="simulator seed (default from config: 42)")
    p.add_argument("--until", help="end of the span, ISO 8601 UTC (default: now)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=demo)

    p = sub.add_parser(
        "import",
        description="Import event files, all or nothing: every file is read and validated first "
        "(in bounded batches), then all are written in one transaction; if any file is "
        "refused, nothing is imported and the error names the file, line and field. "
        "A file already imported (same content) is skipped.",
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=import_files)

    p = sub.add_parser(
        "pull",
        description="Pull from the watermark (minus the overlap) or --since, up to --until or now. "
        "Needs CF_ACCOUNT_ID and CF_API_TOKEN; CF_API_BASE and CACHEMON_DATASET optional.",
    )
    p.add_argument("--since", help="start, ISO 8601 UTC (floored to the hour)")
    p.add_argument("--until", help="end, ISO 8601 UTC (default: now)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=pull)


def demo(args: argparse.Namespace, cfg: Config, now: datetime) -> int:
    """`demo`: replace the simulator's data with --days of traffic ending at --until."""
    skew = cfg.ingest.clock_skew
    until = (
        check_not_future(parse_instant(args.until, "--until"), now, "--until", skew)
        if args.until
        else now
    )
    bar = None if args.quiet else progress("simulating")
    summary = usecases_demo.demo(cfg, args.days, until, seed=args.seed, progress=bar)
    print(
        f"simulated {summary.events:,} events in {summary.windows} windows up to "
        f"{summary.until:%Y-%m-%dT%H:%MZ} into {cfg.store.path}",
        file=sys.stderr,
    )
    return 0


def import_files(args: argparse.Namespace, cfg: Config, now: datetime) -> int:
    """`import`: every file or none; a file already imported is skipped."""
    summary = ingest_load.import_files(cfg, args.files, now)
    for r in summary.imported:
        print(f"imported {r.events:,} events as {r.source}", file=sys.stderr)
    for path in summary.skipped:
        print(f"skipped {path}: already imported (same content)", file=sys.stderr)
    return 0


def pull(args: argparse.Namespace, cfg: Config, now: datetime) -> int:
    """`pull`: Analytics Engine rollups from the watermark (or --since) to --until (or now)."""
    since = parse_instant(args.since, "--since") if args.since else None
    skew = cfg.ingest.clock_skew
    until = (
        check_not_future(parse_instant(args.until, "--until"), now, "--until", skew)
        if args.until
        else None
    )
    with Client.from_env(cfg.analytics_engine) as client:
        summary = ingest_load.pull(
            cfg, client, now, since, until, None if args.quiet else progress("pulling")
        )
    print(
        f"pulled {summary.events:,} data points in {summary.windows} windows "
        f"({client.queries} queries) up to {summary.until:%Y-%m-%dT%H:%MZ}",
        file=sys.stderr,
    )
    return 0


def progress(label: str) -> Callable[[int, int], None]:
    """A progress callback `(done, total)` drawing a tqdm bar on stderr, made on first call."""
    state = {}

    def update(done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = tqdm(total=total, desc=label, unit="window", file=sys.stderr)
        state["bar"].update(done - state["bar"].n)
        if done == total:
            state["bar"].close()

    return update
