"""`experiments list|analyze|assign`: the TTL experiments configured as [[experiments]]."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime

from cachemon import jsontext
from cachemon.clock import check_not_future, iso, parse_instant
from cachemon.errors import CachemonError, InputError
from cachemon.notify.transports import Transports
from cachemon.settings import Config
from cachemon.store import db as store_db
from cachemon.tuning import analysis as tuning_analysis
from cachemon.tuning import promote, results

NONE_CONFIGURED = "no experiments configured ([[experiments]] in the TOML config)"


def register(sub) -> None:
    """Add the `experiments` command and its `list`, `analyze` and `assign` actions."""
    p = sub.add_parser(
        "experiments",
        description="Cohort assignment for the configured experiments.",
    )
    a = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = a.add_parser("list", help="configured experiments, their schemes and exact allocations")
    ls.set_defaults(func=list_experiments)
    z = a.add_parser(
        "analyze", help="analyse every running experiment now (or --at) and store the results"
    )
    z.add_argument("--at", help="as of this instant, ISO 8601 UTC (default: now)")
    z.add_argument("--dry-run", action="store_true", help="print the results; store nothing")
    z.set_defaults(func=analyze)
    s = a.add_parser("assign", help="the cohort a cache key gets")
    s.add_argument("key", metavar="KEY")
    s.add_argument("--experiment", required=True, help="experiment name")
    s.set_defaults(func=assign)


def list_experiments(args: argparse.Namespace, cfg: Config, now: datetime) -> int:
    """`experiments list`: each experiment's scheme, exact allocation and days
    needed: before the start the plan at current traffic, after it the days
    still needed from the latest stored analysis."""
    if not cfg.experiments:
        print(NONE_CONFIGURED)
    for e in cfg.experiments:
        shares = ", ".join(
            f"{c.name} {float(a):.4%} ({a})" for c, a in zip(e.cohorts, e.allocation())
        )
        print(f"{e.name}: {e.endpoint}, scheme {e.scheme}, allocation {shares}")
        if e.start > now:
            print(
                f"  days needed to prove +{e.mde:g} points over a {e.margin:g}-point margin: "
                f"{_plan(cfg, e, now)}"
            )
        else:
            print(f"  days still needed: {_still_needed(cfg, e)}")
    return 0


def _still_needed(cfg: Config, e) -> str:
    """The latest stored analysis's outlook, per treatment, in words."""
    try:
        with store_db.reader(cfg.store.path) as con:
            stored = results.stored(con, e.name)
    except CachemonError as exc:
        return f"unknown ({exc})"
    if not stored:
        return "not analysed yet (`experiments analyze`)"
    a = stored[-1].analysis
    outlooks = [c.outlook for c in a.comparisons if c.outlook]
    if not outlooks:
        return f"none while {a.decision} (analysis of {iso(a.at)})"
    return f"(analysis of {iso(a.at)}) " + "; ".join(f"{o.treatment}: {o.line}" for o in outlooks)


def _plan(cfg: Config, e, now: datetime) -> str:
    try:
        with store_db.reader(cfg.store.path) as con:
            days = tuning_analysis.plan(con, e, min(now, e.start) if e.start > now else now)
    except CachemonError as exc:
        return f"unknown ({exc})"
    return f"{days}" if days else "more than 90 (or no traffic in the last 7 days)"


def assign(args: argparse.Namespace, cfg: Config, now: datetime) -> int:
    """`experiments assign`: the cohort (and its TTL) one cache key gets, as JSON."""
    by_name = {e.name: e for e in cfg.experiments}
    if args.experiment not in by_name:
        known = ", ".join(by_name) or "none configured"
        raise InputError(f"unknown experiment {args.experiment!r}; experiments: {known}")
    e = by_name[args.experiment]
    cohort = e.assign(args.key)
    print(
        jsontext.dumps(
            {
                "key": args.key,
                "experiment": e.name,
                "scheme": e.scheme,
                "cohort": cohort.name,
                "ttlSeconds": int(cohort.ttl.total_seconds()),
                "allocation": {c.name: str(a) for c, a in zip(e.cohorts, e.allocation())},
            },
            ensure_ascii=False,
            indent=2,
        )
    )
    return 0


def analyze(args: argparse.Namespace, cfg: Config, now: datetime) -> int:
    """`experiments analyze`: analyse, store, promote and deliver (not in a dry run)."""
    at = parse_instant(args.at, "--at") if args.at else now
    if not args.dry_run:
        check_not_future(at, now, skew=cfg.ingest.clock_skew)
    if not cfg.experiments:
        raise InputError(NONE_CONFIGURED)
    transports = Transports.from_env(os.environ)
    opener = (
        store_db.reader if args.dry_run else (lambda path: store_db.writer(path, now, create=False))
    )
    with opener(cfg.store.path) as con:
        run = promote.daily(con, cfg, at, now, os.environ, transports, args.dry_run)
    print(jsontext.dumps([a.to_json() for a in run.analyses], indent=2, ensure_ascii=False))
    verb = "would " if args.dry_run else ""
    for act in run.actions:
        print(
            f"{verb}{act.action}: {act.detail}; {promote.CONFIG_KEY} = {jsontext.dumps(act.new)}",
            file=sys.stderr,
        )
    for line in run.flush.lines:
        print(line, file=sys.stderr)
    return 0 if run.flush.ok else 1
