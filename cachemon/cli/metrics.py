"""`serve` and `metrics`: the metrics API, and the metrics of one period on stdout."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timedelta

from cachemon import jsontext
from cachemon.api import access, app, server
from cachemon.argcheck import bounded
from cachemon.clock import Period, iso, parse_instant, utcnow
from cachemon.errors import InputError
from cachemon.events import ENDPOINTS
from cachemon.settings import Config
from cachemon.store import db as store_db
from cachemon.usecases import metrics_report

FORMATS = ("json", "prometheus")
# serve's defaults are the API's own, never repeated here as literals.
LISTEN = server.ServeOptions()
CACHE_SECONDS = int(app.CACHE_FOR.total_seconds())


def register(sub) -> None:
    """Add the `serve` and `metrics` commands."""
    p = sub.add_parser(
        "serve",
        help="serve GET /metrics, /healthz and /openapi.json",
        description="The metrics API. CACHEMON_API_TOKEN, when set, is required as a bearer token.",
    )
    p.add_argument("--host", default=LISTEN.host, help=f"bind address (default {LISTEN.host})")
    p.add_argument("--port", type=int, default=LISTEN.port, help=f"port (default {LISTEN.port})")
    p.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="IP",
        help="client address or network exempt from the rate limit (a Prometheus scraper, "
        "10.0.0.0/8); repeatable",
    )
    p.add_argument(
        "--cache-seconds",
        type=int,
        default=CACHE_SECONDS,
        help=f"response cache lifetime (default {CACHE_SECONDS})",
    )
    p.add_argument(
        "--trust-proxy",
        action="append",
        default=[],
        metavar="IP",
        help="a reverse proxy (address or network) whose X-Forwarded-For names the client "
        "(default: none; the client is the TCP peer); repeatable",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=LISTEN.max_connections,
        help=f"open connections at most (default {LISTEN.max_connections}, kept below `ulimit -n`)",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=LISTEN.head_timeout,
        help="seconds a connection may take to send its request headers "
        f"(default {LISTEN.head_timeout:g})",
    )
    p.set_defaults(func=serve)

    p = sub.add_parser(
        "metrics",
        help="print the metrics of a period",
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


def serve(args: argparse.Namespace, cfg: Config, now: datetime) -> int:
    """`serve`: the metrics API until interrupted; its clock is the wall clock, not `now`."""
    if args.cache_seconds < 0:
        raise InputError(f"--cache-seconds must be 0 or more, got {args.cache_seconds}")
    if not args.header_timeout > 0:
        raise InputError(f"--header-timeout must be more than 0 seconds, got {args.header_timeout}")
    token = os.environ.get("CACHEMON_API_TOKEN") or None
    options = server.ServeOptions(
        args.host,
        args.port,
        access.check_proxies(tuple(args.trust_proxy)),
        args.header_timeout,
        args.max_connections,
    )
    server.connection_cap(
        options.max_connections
    )  # a bad limit is an error before anything listens
    warning = access.exposure_warning(args.host, token)
    if warning:
        print(f"cachemon: warning: {warning}", file=sys.stderr)
    settings = app.ApiSettings(
        token=token,
        allow=access.networks(args.allow, "--allow"),
        cache_for=timedelta(seconds=args.cache_seconds),
    )
    server.serve(app.create_app(cfg, settings, utcnow), options)
    return 0


def show(args: argparse.Namespace, cfg: Config, now: datetime) -> int:
    """`metrics`: one period's metrics as JSON or Prometheus text."""
    period = Period.parse(args.period)
    if args.format not in FORMATS:
        raise InputError(f"unknown format {args.format!r}: use json or prometheus")
    at = parse_instant(args.at, "--at") if args.at else now  # read-only: a future --at: no data
    bounded(args.top, "--top", 0)
    with store_db.reader(cfg.store.path) as con:
        # Without --at, a lagging source still gets its last good numbers, marked stale.
        report = metrics_report.build(
            con, cfg, period, at, args.endpoint, args.top, latest=args.at is None
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
    if args.format == "prometheus":
        sys.stdout.write(report.to_prometheus())
    else:
        print(jsontext.dumps(report.to_json(), indent=2, ensure_ascii=False))
    return 0
