"""`alerts check|history|silence|silences|unsilence|deliver|rules`: the alert monitor."""

from __future__ import annotations

import argparse
import getpass
import os
from datetime import datetime, timedelta

from cachemon import jsontext
from cachemon.alerts import evaluate as alerts_evaluate
from cachemon.alerts import health
from cachemon.alerts import silences as alerts_silences
from cachemon.alerts.rules import effective_rules
from cachemon.argcheck import MAX_ID, bounded
from cachemon.clock import check_not_future, format_duration, iso, parse_duration, parse_instant
from cachemon.notify import outbox as notify_outbox
from cachemon.notify.transports import Transports
from cachemon.redact import Redactor
from cachemon.settings import Config
from cachemon.store import db as store_db


def register(sub) -> None:
    """Add the `alerts` command and its actions."""
    p = sub.add_parser(
        "alerts",
        description="The alert monitor. The job runner runs `check` every 15 minutes.",
    )
    a = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = a.add_parser("check", help="evaluate every rule now (or --at), notify, deliver the outbox")
    c.add_argument("--at", help="evaluate as of this instant, ISO 8601 UTC (default: now)")
    c.add_argument(
        "--dry-run",
        action="store_true",
        help="show states and notifications; write and send nothing",
    )
    c.set_defaults(func=check)
    h = a.add_parser("history", help="state changes and notifications, newest first")
    h.add_argument("--since", help="from this instant (default: 7 days ago)")
    h.add_argument("--limit", type=int, default=50, help="rows of each kind (default 50)")
    h.add_argument("--json", action="store_true", help="JSON instead of tables")
    h.set_defaults(func=history)
    s = a.add_parser(
        "silence", help="mute notifications of an alert type or rule (evaluation goes on)"
    )
    s.add_argument(
        "matcher", metavar="TYPE", help="alert type (miss_rate, p99_latency, ...) or rule name"
    )
    s.add_argument("--for", dest="duration", required=True, help="how long, e.g. 2h")
    s.add_argument("--reason", required=True, help="why (shown to everyone)")
    s.add_argument("--endpoint", default="", help="only this endpoint's instances")
    s.add_argument("--by", default="", help="who silences (default $USER)")
    s.set_defaults(func=silence)
    a.add_parser("silences", help="list active silences").set_defaults(func=silences)
    u = a.add_parser("unsilence", help="end a silence now")
    u.add_argument("id", type=int)
    u.set_defaults(func=unsilence)
    a.add_parser("deliver", help="send the outbox's due notifications now").set_defaults(
        func=deliver
    )
    a.add_parser("rules", help="list the effective rules").set_defaults(func=rules)


def check(args: argparse.Namespace, cfg: Config, now: datetime) -> int:
    """`alerts check`: evaluate every rule at --at (or now), queue and deliver notifications."""
    at = parse_instant(args.at, "--at") if args.at else now
    if not args.dry_run:  # a dry run writes nothing, so it may look ahead
        check_not_future(at, now, skew=cfg.ingest.clock_skew)
    transports = Transports.from_env(os.environ)
    if args.dry_run:
        with store_db.reader(cfg.store.path) as con:
            result = alerts_evaluate.run(con, cfg, at, transports, dry_run=True)
    else:
        with store_db.writer(cfg.store.path, now, create=False) as con:
            result = alerts_evaluate.run(con, cfg, at, transports)
    said, ok = result.flush.lines, result.flush.ok
    _print_states(result.evaluation)
    verb = "would send" if args.dry_run else "queued"
    for row, notice in zip(result.outbox, result.evaluation.notices):
        print(f"{verb} {row.channel}: {row.subject} ({notice.reason})")
    if not result.outbox:
        print(
            "no notifications"
            + (" (no channel configured)" if not transports.channels(cfg.notify) else "")
        )
    # Scrubbed where made; scrubbed again at the terminal (second line of defence).
    for line in said:
        print(line)
    return 0 if ok else 1


def _print_states(ev: alerts_evaluate.Evaluation) -> None:
    print(
        f"evaluated at {iso(ev.at)}; data until {iso(ev.data_until) if ev.data_until else 'never'}"
    )
    print(f"{'STATE':9} {'SEVERITY':9} {'RULE':20} {'ENDPOINT':10} {'SINCE':21} MESSAGE")
    for s in ev.states:
        print(
            f"{s.state:9} {s.severity:9} {s.rule:20} {s.endpoint or '*':10} {iso(s.since):21} {s.message}"
        )


def history(args: argparse.Namespace, cfg: Config, now: datetime) -> int:
    """`alerts history`: state changes and notifications since --since, redacted."""
    since = parse_instant(args.since, "--since") if args.since else now - timedelta(days=7)
    bounded(args.limit, "--limit", 1)
    with store_db.reader(cfg.store.path) as con:
        changes = health.history(con, since, now, args.limit)
        sent = notify_outbox.outbox(con, since, args.limit)
    # Stored text is redacted when written; an older store (or a secret set
    # since) is redacted here too.
    red = Redactor.from_env(os.environ)
    changes, sent = _redacted(changes, red), _redacted(sent, red)
    if args.json:
        print(
            jsontext.dumps(
                {"changes": changes, "notifications": sent},
                default=_jsonable,
                indent=2,
                ensure_ascii=False,
            )
        )
        return 0
    print("STATE CHANGES")
    for c in changes:
        print(
            f"{iso(c['at'])}  {c['from_state']:>8} -> {c['to_state']:8} {c['severity']:8} {c['rule']:20} "
            f"{c['endpoint'] or '*':8} {c['message']}"
        )
    print("\nNOTIFICATIONS")
    for n in sent:
        detail = (
            f"sent {iso(n['sent_at'])}"
            if n["status"] == "sent"
            else f"pending, {n['attempts']} attempts, next {iso(n['next_attempt_at'])}: {n['last_error'] or ''}"
        )
        print(f"#{n['id']:<5} {iso(n['created_at'])}  {n['channel']:8} {n['subject']}  [{detail}]")
    return 0


def _redacted(rows: list[dict], red: Redactor) -> list[dict]:
    return [{k: red(v) if isinstance(v, str) else v for k, v in r.items()} for r in rows]


def _jsonable(v):
    return iso(v) if isinstance(v, datetime) else str(v)


def silence(args: argparse.Namespace, cfg: Config, now: datetime) -> int:
    """`alerts silence`: mute an alert type or rule for --for."""
    duration = parse_duration(args.duration, "--for")
    s = None
    try:
        with store_db.writer(cfg.store.path, now, create=False) as con:
            s = alerts_silences.add_silence(
                con, args.matcher, duration, args.reason, now, args.endpoint, args.by or _user()
            )
    finally:  # stored even when only publishing failed (StoreUnpublishedError): say what was stored
        if s is not None:
            print(
                f"silence {s.id}: {s.matcher}{' [' + printable(s.endpoint) + ']' if s.endpoint else ''} muted "
                f"until {iso(s.ends_at)} ({printable(s.reason)})"
            )
    return 0


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in a bare container
        return ""


def silences(args: argparse.Namespace, cfg: Config, now: datetime) -> int:
    """`alerts silences`: the silences active now."""
    with store_db.reader(cfg.store.path) as con:
        rows = alerts_silences.active_silences(con, now)
    if not rows:
        print("no active silences")
    for s in rows:
        print(
            f"{s.id:<4} {printable(s.matcher):20} {printable(s.endpoint) or '*':8} until {iso(s.ends_at)}  "
            f"by {printable(s.created_by) or '?'}: {printable(s.reason)}"
        )
    return 0


def unsilence(args: argparse.Namespace, cfg: Config, now: datetime) -> int:
    """`alerts unsilence`: end a silence now."""
    bounded(args.id, "silence id", 1, MAX_ID)
    with store_db.writer(cfg.store.path, now, create=False) as con:
        alerts_silences.expire_silence(con, args.id, now)
    print(f"silence {args.id} ended")
    return 0


def deliver(args: argparse.Namespace, cfg: Config, now: datetime) -> int:
    """`alerts deliver`: send the outbox's due notifications."""
    transports = Transports.from_env(os.environ)
    with store_db.writer(cfg.store.path, now, create=False) as con:
        sent = notify_outbox.flush(con, cfg.notify, transports, now)
    for line in sent.lines:
        print(line)
    if not sent.deliveries:
        print("nothing due")
    return 0 if sent.ok else 1


def rules(args: argparse.Namespace, cfg: Config, now: datetime) -> int:
    """`alerts rules`: the effective rules, one a line."""
    for r in effective_rules(cfg.alerts):
        extra = f" for {format_duration(r.for_)}" if r.for_ else ""
        where = f" endpoints={','.join(r.endpoints)}" if r.endpoints else ""
        print(
            f"{r.name:20} {r.severity:8} {r.alert_type:16} {r.describe()} over {format_duration(r.window)}{extra}{where}"
        )
    return 0


def printable(text: str) -> str:
    """Stored text as a terminal may show it: control characters (an older
    store may hold an ESC or CR) escaped, never acted on."""
    return "".join(
        c if not alerts_silences.has_control(c) else c.encode("unicode_escape").decode("ascii")
        for c in text or ""
    )
