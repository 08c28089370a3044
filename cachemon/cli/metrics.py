"""`metrics`: the metrics of one period on stdout (`serve`, the API, is `cli.serve`)."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime

from cachemon import jsontext
from cachemon.argcheck import bounded
from cachemon.clock import Period, iso, parse_instant
from cachemon.errors import InputError
from cachemon.names import ENDPOINTS
from cachemon.settings import Config
from cachemon.store import db as store_db
from cachemon.usecases import metrics_report

FORMATS = ("json", "prometheus")


def register(sub) -> None:
    """Add the `metrics` command."""
    p = sub.add_parser(
        "metrics",
        description="Hit rates, latency, volume and top keys for the period ending at --at.",
    )
    p.add_argument("--period", default="1h", help="15m, 1h, 24h or 7d (default 1h)")
    p.add_argument(
        "--format", default="json", help="json (default) or prometheus (text format 0.0.4)"
    )
    p.add_argument("--at", help="evaluate as of this instant, ISO 8601 UTC (default: now)")
    p.add_argument("--endpoint", help=f"only this endpoint ({', '.join(ENDPOINTS)}, ...)")
    p.add_argument("--top", type=int, default=10, help="number of top keys (default 10)")
    p.set_defaults(func=show)


def show(args: argparse.Namespace, cfg: Config, now: datetime) -> int:
    """`metrics`: one period's metrics as JSON or Prometheus text."""
    period = Period.parse(args.period)
    if args.format not in FORMATS:
        raise InputError(f"unknown format {args.format!r}: use json or prometheus")
    at = parse_instant(args.at, "--at") if args.at else now  # read-only: a future --at: no data
    bounded(args.top, "--top", 0)
    with store_db.reader(cfg.store.path) as con:
        # Without --at, a lagging source still gets its last good numbers, marked stale.
        # The lifetime counter is the exposition's alone: JSON does not read it.
        report = metrics_report.build(
            con,
            cfg,
            period,
            at,
            args.endpoint,
            args.top,
            latest=args.at is None,
            lifetime=args.format == "prometheus",
        )
    m = report.metrics
    if m.top_keys and not m.top_keys_exact:
        # Said on every surface: the JSON has topKeysExact false beside the span.
        w = m.top_keys_window
        print(
            f"cachemon: warning: top keys are counted over {iso(w.start)} to {iso(w.end)}, wider "
            "than the period: per-key minutes there are compacted ([retention] minute_days)",
            file=sys.stderr,
        )
    sampled = [k.sample_rate for k in m.top_keys if not k.exact]
    if sampled:
        # Said on every surface: each top key in the JSON has exact and sampleRate.
        print(
            f"cachemon: warning: {len(sampled)} of {len(m.top_keys)} top keys are estimated from "
            f"a key sample (rate as low as {min(sampled):.3g}, counts weighted by 1/rate); the "
            "others are heavy hitters, counted exactly",
            file=sys.stderr,
        )
    if args.format == "prometheus":
        sys.stdout.write(report.to_prometheus())
    else:
        print(jsontext.dumps(report.to_json(), indent=2, ensure_ascii=False))
    return 0
