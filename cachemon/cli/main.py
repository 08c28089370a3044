"""`python -m cachemon`: the command line, a thin shell over the library.

Each command group is one module of this package with a `register(subparsers)`
that adds its parser(s) and sets `func=` (called as `func(args, cfg, now)`,
returning the exit code) with `set_defaults`. This module holds what every
command shares: the global options, the list of groups, and the error policy:
every CachemonError becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime

from cachemon import config
from cachemon.argcheck import check_utf8
from cachemon.cli import alerts, costs, experiments, ingest, metrics, store, ttl
from cachemon.clock import utcnow
from cachemon.errors import CachemonError, InputError, StoreUnpublishedError

# The usage line's program name when run from a checkout; the installed script says its own name.
PROG = "python -m cachemon"
EXIT_ERROR = 2
# The write was stored but readers do not see it yet (publishing failed): not an error to retry.
EXIT_UNPUBLISHED = 3
# In the order `--help` lists their commands.
GROUPS = (ingest, metrics, alerts, ttl, store, costs, experiments)


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The whole argument parser: the global options and every group's subcommands."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Monitoring, alerting, cost and TTL tuning for the BooksTrack tiered cache.",
    )
    parser.add_argument("--db", help="store file (default: CACHEMON_DB or data/cachemon.duckdb)")
    parser.add_argument("--config", help="TOML config file (default: CACHEMON_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None, now: datetime | None = None, prog: str = PROG) -> int:
    """Run one command line; returns the exit code (argparse exits itself on a usage error)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        check_utf8(argv)
    except InputError as exc:
        print(f"cachemon: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    args = build_parser(prog).parse_args(argv)
    try:
        cfg = config.load(args.config)
        if args.db is not None:
            cfg = config.with_db(cfg, args.db)
        return args.func(args, cfg, now or utcnow())
    except StoreUnpublishedError as exc:
        print(f"cachemon: warning: {exc}", file=sys.stderr)
        return EXIT_UNPUBLISHED
    except CachemonError as exc:
        print(f"cachemon: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


def script() -> int:
    """The installed `cachemon` command (`[project.scripts]`): as `main`, with
    usage lines naming the command as it was typed (`cachemon`, or a link's
    name), not `python -m cachemon`."""
    return main(prog=os.path.basename(sys.argv[0]) or PROG)
