"""`serve`: the metrics API (a module of its own: `metrics` need not import the server)."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timedelta

from cachemon.api import access, app, server
from cachemon.clock import utcnow
from cachemon.errors import InputError
from cachemon.settings import Config

# serve's defaults are the API's own, never repeated here as literals.
LISTEN = server.ServeOptions()
CACHE_SECONDS = int(app.CACHE_FOR.total_seconds())


def register(sub) -> None:
    """Add the `serve` command."""
    p = sub.add_parser(
        "serve",
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
