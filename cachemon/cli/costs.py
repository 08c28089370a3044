"""`costs report`: the daily cost optimisation report."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import date, datetime

from cachemon.clock import EARLIEST
from cachemon.costs import report
from cachemon.errors import InputError
from cachemon.notify.transports import Transports
from cachemon.settings import Config
from cachemon.store import db as store_db


def register(sub) -> None:
    """Add the `costs` command and its `report` action."""
    p = sub.add_parser(
        "costs",
        description="Costs, key classes and recommendations for one UTC day.",
    )
    a = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    r = a.add_parser(
        "report", help="build, store and send the report of a day (default: yesterday)"
    )
    r.add_argument("--date", help="the UTC day, YYYY-MM-DD (default: yesterday)")
    r.add_argument(
        "--dry-run", action="store_true", help="print the report; store and send nothing"
    )
    r.add_argument(
        "--resend", action="store_true", help="send again even if this day's report was sent"
    )
    r.set_defaults(func=run_report)


def run_report(args: argparse.Namespace, cfg: Config, now: datetime) -> int:
    """`costs report`: build the day's report, store it, queue and deliver it (not in a dry run)."""
    day = _day(args.date, now)
    transports = Transports.from_env(os.environ)
    if args.dry_run:
        with store_db.reader(cfg.store.path) as con:
            r = report.build(con, cfg, day, now)
        queued, said, ok = (), (), True
    else:
        with store_db.writer(cfg.store.path, now, create=False) as con:
            r = report.build(con, cfg, day, now)
            sent = report.send(con, r, cfg, transports, now, resend=args.resend)
        queued, said, ok = sent.channels, sent.flush.lines, sent.flush.ok
    subject, text, _ = report.render(
        r, cfg.notify.subject_prefix, transports.dashboard_url or cfg.notify.dashboard_url
    )
    print(subject)
    print(text)
    if not args.dry_run:
        # Per channel what happened, never "sent" for a notification only queued.
        why = (
            "no channel configured"
            if not transports.channels(cfg.notify)
            else "queued on an earlier run (--resend to send again)"
        )
        print(
            f"stored; queued for {', '.join(queued)}" if queued else f"stored; not queued ({why})",
            file=sys.stderr,
        )
        for line in said:
            print(line, file=sys.stderr)
    return 0 if ok else 1


def _day(text: str | None, now: datetime) -> date:
    """--date as a UTC day in the supported range (default: the report day before `now`)."""
    try:
        day = date.fromisoformat(text) if text else report.report_day(now)
    except ValueError:
        raise InputError(f"--date: {text!r} is not a day like 2026-11-27") from None
    if day > now.date():
        raise InputError(f"--date: {day} is in the future")
    if day < EARLIEST.date():
        raise InputError(f"--date: {day} is before {EARLIEST.year}")
    return day
