"""`python -m cachemon alerts …`: the alert monitor's command line."""

from __future__ import annotations

import getpass
from datetime import datetime, timedelta

from cachemon import jsontext
from cachemon.alerts import evaluate as alerts
from cachemon.alerts import health
from cachemon.alerts.rules import effective_rules
from cachemon.argcheck import MAX_ID, bounded
from cachemon.clock import check_not_future, format_duration, iso, parse_duration, parse_instant
from cachemon.notify import outbox as notify
from cachemon.redact import Redactor
from cachemon.store import db as store


def run(args, cfg, now: datetime, env) -> int:
    return ACTIONS[args.action](args, cfg, now, env)


def _check(args, cfg, now, env) -> int:
    at = parse_instant(args.at, "--at") if args.at else now
    if not args.dry_run:  # a dry run writes nothing, so it may look ahead
        check_not_future(at, now, skew=cfg.ingest.clock_skew)
    transports = notify.Transports.from_env(env)
    if args.dry_run:
        with store.reader(cfg.store.path) as con:
            result = alerts.run(con, cfg, at, transports, dry_run=True)
        said, ok = [], True
    else:
        with store.writer(cfg.store.path, now, create=False) as con:
            after = notify.last_id(con)
            result = alerts.run(con, cfg, at, transports)
            said, ok = notify.summary(con, after, list(result.deliveries), transports.scrub)
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


def _print_states(ev: alerts.Evaluation) -> None:
    print(
        f"evaluated at {iso(ev.at)}; data until {iso(ev.data_until) if ev.data_until else 'never'}"
    )
    print(f"{'STATE':9} {'SEVERITY':9} {'RULE':20} {'ENDPOINT':10} {'SINCE':21} MESSAGE")
    for s in ev.states:
        print(
            f"{s.state:9} {s.severity:9} {s.rule:20} {s.endpoint or '*':10} {iso(s.since):21} {s.message}"
        )


def _history(args, cfg, now, env) -> int:
    since = parse_instant(args.since, "--since") if args.since else now - timedelta(days=7)
    bounded(args.limit, "--limit", 1)
    with store.reader(cfg.store.path) as con:
        changes = health.history(con, since, now, args.limit)
        sent = notify.outbox(con, since, args.limit)
    # Stored text is redacted when written; an older store (or a secret set
    # since) is redacted here too.
    red = Redactor.from_env(env)
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


def _silence(args, cfg, now, env) -> int:
    duration = parse_duration(args.duration, "--for")
    s = None
    try:
        with store.writer(cfg.store.path, now, create=False) as con:
            s = alerts.add_silence(
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


def _silences(args, cfg, now, env) -> int:
    with store.reader(cfg.store.path) as con:
        rows = alerts.active_silences(con, now)
    if not rows:
        print("no active silences")
    for s in rows:
        print(
            f"{s.id:<4} {printable(s.matcher):20} {printable(s.endpoint) or '*':8} until {iso(s.ends_at)}  "
            f"by {printable(s.created_by) or '?'}: {printable(s.reason)}"
        )
    return 0


def _unsilence(args, cfg, now, env) -> int:
    bounded(args.id, "silence id", 1, MAX_ID)
    with store.writer(cfg.store.path, now, create=False) as con:
        alerts.expire_silence(con, args.id, now)
    print(f"silence {args.id} ended")
    return 0


def _deliver(args, cfg, now, env) -> int:
    transports = notify.Transports.from_env(env)
    with store.writer(cfg.store.path, now, create=False) as con:
        results = notify.deliver(con, transports, cfg.notify, now)
        said, ok = notify.summary(con, notify.last_id(con), results, transports.scrub)
    for line in said:
        print(line)
    if not results:
        print("nothing due")
    return 0 if ok else 1


def _rules(args, cfg, now, env) -> int:
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
        c if not alerts.has_control(c) else c.encode("unicode_escape").decode("ascii")
        for c in text or ""
    )


ACTIONS = {
    "check": _check,
    "history": _history,
    "silence": _silence,
    "silences": _silences,
    "unsilence": _unsilence,
    "deliver": _deliver,
    "rules": _rules,
}
