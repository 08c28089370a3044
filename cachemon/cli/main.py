"""`python -m cachemon`: the command line, a thin shell over the library.

Every CachemonError becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timedelta

from cachemon import config as config_mod
from cachemon import jsontext
from cachemon.alerts import health
from cachemon.api import server as api
from cachemon.argcheck import bounded, check_utf8
from cachemon.cli import alerts as alerts_cli
from cachemon.cli import ttl as ttl_cli
from cachemon.clock import EARLIEST, Period, Window, check_not_future, parse_instant, utcnow
from cachemon.costs import report
from cachemon.costs import usage as costs
from cachemon.errors import CachemonError, InputError, StoreUnpublishedError
from cachemon.ingest import load as pipeline
from cachemon.metrics import exposition
from cachemon.metrics import window as metrics
from cachemon.notify import outbox as notify
from cachemon.sources.analytics_engine import Client
from cachemon.store import db as store
from cachemon.store import export
from cachemon.tuning import analysis as tuning
from cachemon.tuning import promote
from cachemon.usecases import demo

EXIT_ERROR = 2
# The write was stored but readers do not see it yet (publishing failed): not an error to retry.
EXIT_UNPUBLISHED = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cachemon",
        description="Monitoring, alerting, cost and TTL tuning for the BooksTrack tiered cache.",
    )
    parser.add_argument("--db", help="store file (default: CACHEMON_DB or data/cachemon.duckdb)")
    parser.add_argument("--config", help="TOML config file (default: CACHEMON_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "demo",
        help="fill the store from the embedded traffic simulator",
        description="Replace the simulator's data with N days of simulated traffic ending now.",
    )
    p.add_argument("--days", type=float, default=7.0, help="days of traffic (default 7)")
    p.add_argument("--seed", type=int, help="simulator seed (default from config: 42)")
    p.add_argument("--until", help="end of the span, ISO 8601 UTC (default: now)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "import",
        help="import NDJSON / CSV / Parquet event files",
        description="Import event files, all or nothing: every file is read and validated first "
        "(in bounded batches), then all are written in one transaction; if any file is "
        "refused, nothing is imported and the error names the file, line and field. "
        "A file already imported (same content) is skipped.",
    )
    p.add_argument("files", nargs="+", metavar="FILE")

    p = sub.add_parser(
        "pull",
        help="pull rollups from Cloudflare Workers Analytics Engine",
        description="Pull from the watermark (minus the overlap) or --since, up to --until or now. "
        "Needs CF_ACCOUNT_ID and CF_API_TOKEN; CF_API_BASE and CACHEMON_DATASET optional.",
    )
    p.add_argument("--since", help="start, ISO 8601 UTC (floored to the hour)")
    p.add_argument("--until", help="end, ISO 8601 UTC (default: now)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "serve",
        help="serve GET /metrics, /healthz and /openapi.json",
        description="The metrics API. CACHEMON_API_TOKEN, when set, is required as a bearer token.",
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8787, help="port (default 8787)")
    p.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="IP",
        help="client address or network exempt from the rate limit (a Prometheus scraper, "
        "10.0.0.0/8); repeatable",
    )
    p.add_argument(
        "--cache-seconds", type=int, default=300, help="response cache lifetime (default 300)"
    )
    p.add_argument(
        "--trust-proxy",
        action="append",
        default=[],
        metavar="IP",
        help="a reverse proxy (address or network) whose X-Forwarded-For names the client (default: none; the client is "
        "the TCP peer); repeatable",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=512,
        help="open connections at most (default 512, kept below `ulimit -n`)",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds a connection may take to send its request headers (default 10)",
    )

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
    p.add_argument("--endpoint", help="only this endpoint (title, isbn, author, ...)")
    p.add_argument("--top", type=int, default=10, help="number of top keys (default 10)")
    _alerts_parser(sub)
    ttl_cli.add_parser(sub)
    p = sub.add_parser(
        "export", help="write the analyst views as Hive-partitioned Parquet, one folder per day"
    )
    p.add_argument("--to", required=True, help="target directory (days already there are replaced)")
    p.add_argument("--since", help="export days from this instant's day on (default: all)")
    p = sub.add_parser(
        "compact", help="merge finished per-key hours and apply [retention] now (the daily job)"
    )
    p.add_argument("--at", help="act as if now were this instant")
    p = sub.add_parser(
        "costs",
        help="the daily cost optimisation report",
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
    p = sub.add_parser(
        "experiments",
        help="TTL experiments (configured as [[experiments]] in TOML)",
        description="Cohort assignment for the configured experiments.",
    )
    a = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a.add_parser("list", help="configured experiments, their schemes and exact allocations")
    z = a.add_parser(
        "analyze", help="analyse every running experiment now (or --at) and store the results"
    )
    z.add_argument("--at", help="as of this instant, ISO 8601 UTC (default: now)")
    z.add_argument("--dry-run", action="store_true", help="print the results; store nothing")
    s = a.add_parser("assign", help="the cohort a cache key gets")
    s.add_argument("key", metavar="KEY")
    s.add_argument("--experiment", required=True, help="experiment name")
    return parser


def _alerts_parser(sub) -> None:
    p = sub.add_parser(
        "alerts",
        help="evaluate alert rules, show history, manage silences",
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
    h = a.add_parser("history", help="state changes and notifications, newest first")
    h.add_argument("--since", help="from this instant (default: 7 days ago)")
    h.add_argument("--limit", type=int, default=50, help="rows of each kind (default 50)")
    h.add_argument("--json", action="store_true", help="JSON instead of tables")
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
    a.add_parser("silences", help="list active silences")
    u = a.add_parser("unsilence", help="end a silence now")
    u.add_argument("id", type=int)
    a.add_parser("deliver", help="send the outbox's due notifications now")
    a.add_parser("rules", help="list the effective rules")


def main(argv: list[str] | None = None, now: datetime | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        check_utf8(argv)
    except InputError as exc:
        print(f"cachemon: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    args = build_parser().parse_args(argv)
    try:
        cfg = config_mod.load(args.config)
        if args.db is not None:
            cfg = config_mod.with_db(cfg, args.db)
        return COMMANDS[args.command](args, cfg, now or utcnow())
    except StoreUnpublishedError as exc:
        print(f"cachemon: warning: {exc}", file=sys.stderr)
        return EXIT_UNPUBLISHED
    except CachemonError as exc:
        print(f"cachemon: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _demo(args, cfg, now) -> int:
    skew = cfg.ingest.clock_skew
    until = (
        check_not_future(parse_instant(args.until, "--until"), now, "--until", skew)
        if args.until
        else now
    )
    bar = None if args.quiet else _progress("simulating")
    summary = demo.demo(cfg, args.days, until, seed=args.seed, progress=bar)
    print(
        f"simulated {summary.events:,} events in {summary.windows} windows up to {summary.until:%Y-%m-%dT%H:%MZ} "
        f"into {cfg.store.path}",
        file=sys.stderr,
    )
    return 0


def _import(args, cfg, now) -> int:
    summary = pipeline.import_files(cfg, args.files, now)
    for r in summary.imported:
        print(f"imported {r.events:,} events as {r.source}", file=sys.stderr)
    for path in summary.skipped:
        print(f"skipped {path}: already imported (same content)", file=sys.stderr)
    return 0


def _pull(args, cfg, now) -> int:
    since = parse_instant(args.since, "--since") if args.since else None
    skew = cfg.ingest.clock_skew
    until = (
        check_not_future(parse_instant(args.until, "--until"), now, "--until", skew)
        if args.until
        else None
    )
    with Client.from_env(cfg.analytics_engine) as client:
        summary = pipeline.pull(
            cfg, client, now, since, until, None if args.quiet else _progress("pulling")
        )
    print(
        f"pulled {summary.events:,} data points in {summary.windows} windows ({client.queries} queries) "
        f"up to {summary.until:%Y-%m-%dT%H:%MZ}",
        file=sys.stderr,
    )
    return 0


def _serve(args, cfg, now) -> int:
    import os

    if args.cache_seconds < 0:
        raise InputError(f"--cache-seconds must be 0 or more, got {args.cache_seconds}")
    if not args.header_timeout > 0:
        raise InputError(f"--header-timeout must be more than 0 seconds, got {args.header_timeout}")
    token = os.environ.get("CACHEMON_API_TOKEN") or None
    options = api.ServeOptions(
        args.host,
        args.port,
        api.check_proxies(tuple(args.trust_proxy)),
        args.header_timeout,
        args.max_connections,
    )
    api.connection_cap(options.max_connections)  # a bad limit is an error before anything listens
    warning = api.exposure_warning(args.host, token)
    if warning:
        print(f"cachemon: warning: {warning}", file=sys.stderr)
    settings = api.ApiSettings(
        token=token,
        allow=api.networks(args.allow, "--allow"),
        cache_for=timedelta(seconds=args.cache_seconds),
    )
    api.serve(api.create_app(cfg, settings, utcnow), options)
    return 0


def _metrics(args, cfg, now) -> int:
    period = Period.parse(args.period)
    if args.format not in ("json", "prometheus"):
        raise InputError(f"unknown format {args.format!r}: use json or prometheus")
    at = (
        parse_instant(args.at, "--at") if args.at else now
    )  # read-only: a future --at shows no data
    bounded(args.top, "--top", 0)
    with store.reader(cfg.store.path) as con:
        # Without --at, a lagging source still gets its last good numbers, marked stale.
        m = metrics.compute(
            con,
            Window.ending(at, period.length),
            period.value,
            args.endpoint,
            args.top,
            latest=args.at is None,
        )
        state = health.health(con, m.at, cfg.alerts.evaluate_every)
        block = costs.for_window(con, m.window, m.at, cfg) if args.endpoint is None else None
    if args.format == "prometheus":
        sys.stdout.write(exposition.render(m, cfg.metrics.stale_after, state, block))
    else:
        print(
            jsontext.dumps(
                metrics.to_json(m, cfg.metrics.stale_after, state, block),
                indent=2,
                ensure_ascii=False,
            )
        )
    return 0


def _export(args, cfg, now) -> int:
    since = parse_instant(args.since, "--since") if args.since else None
    with store.reader(cfg.store.path) as con:
        written = export.parquet(con, args.to, since)
    for w in written:
        print(f"{w.dataset}: {w.rows:,} rows in {w.days} day(s)", file=sys.stderr)
    return 0


def _compact(args, cfg, now) -> int:
    at = (
        check_not_future(parse_instant(args.at, "--at"), now, skew=cfg.ingest.clock_skew)
        if args.at
        else now
    )
    with store.writer(cfg.store.path, now, create=False) as con:
        n, kept = pipeline.compact(con, cfg, at)
    print(
        f"compacted per-key rows of {n} source(s); retention removed {kept.minute_rows:,} minute rows "
        f"(kept from {kept.horizons.minute:%Y-%m-%d}) and {kept.hour_rows:,} hourly rows "
        f"(kept from {kept.horizons.hour:%Y-%m-%d})",
        file=sys.stderr,
    )
    return 0


def _progress(label: str):
    from tqdm import tqdm

    state = {}

    def update(done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = tqdm(total=total, desc=label, unit="window", file=sys.stderr)
        state["bar"].update(done - state["bar"].n)
        if done == total:
            state["bar"].close()

    return update


def _alerts(args, cfg, now) -> int:
    import os

    return alerts_cli.run(args, cfg, now, os.environ)


def _costs(args, cfg, now) -> int:
    import os
    from datetime import date

    try:
        day = date.fromisoformat(args.date) if args.date else report.report_day(now)
    except ValueError:
        raise InputError(f"--date: {args.date!r} is not a day like 2026-11-27") from None
    if day > now.date():
        raise InputError(f"--date: {day} is in the future")
    if day < EARLIEST.date():
        raise InputError(f"--date: {day} is before {EARLIEST.year}")
    transports = notify.Transports.from_env(os.environ)
    if args.dry_run:
        with store.reader(cfg.store.path) as con:
            r = report.build(con, cfg, day, now)
        queued, said, ok = [], [], True
    else:
        with store.writer(cfg.store.path, now, create=False) as con:
            r = report.build(con, cfg, day, now)
            after = notify.last_id(con)
            queued = report.queue(con, r, cfg, transports, resend=args.resend)
            results = notify.deliver(con, transports, cfg.notify, now)
            said, ok = notify.summary(con, after, results, transports.scrub)
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


def _experiments(args, cfg, now) -> int:
    by_name = {e.name: e for e in cfg.experiments}
    if args.action == "analyze":
        return _analyze(args, cfg, now)
    if args.action == "list":
        if not by_name:
            print("no experiments configured ([[experiments]] in the TOML config)")
        for e in cfg.experiments:
            shares = ", ".join(
                f"{c.name} {float(a):.4%} ({a})" for c, a in zip(e.cohorts, e.allocation())
            )
            print(f"{e.name}: {e.endpoint}, scheme {e.scheme}, allocation {shares}")
            print(
                f"  days needed to prove +{e.mde:g} points over a {e.margin:g}-point margin: {_plan(cfg, e, now)}"
            )
        return 0
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


def _plan(cfg, e, now) -> str:
    try:
        with store.reader(cfg.store.path) as con:
            days = tuning.plan(con, e, min(now, e.start) if e.start > now else now)
    except CachemonError as exc:
        return f"unknown ({exc})"
    return f"{days}" if days else "more than 90 (or no traffic in the last 7 days)"


def _analyze(args, cfg, now) -> int:
    import os

    at = parse_instant(args.at, "--at") if args.at else now
    if not args.dry_run:
        check_not_future(at, now, skew=cfg.ingest.clock_skew)
    if not cfg.experiments:
        raise InputError("no experiments configured ([[experiments]] in the TOML config)")
    transports = notify.Transports.from_env(os.environ)
    opener = store.reader if args.dry_run else (lambda path: store.writer(path, now, create=False))
    with opener(cfg.store.path) as con:
        after = notify.last_id(con)  # what promote.daily queues comes after it
        results, actions = promote.daily(con, cfg, at, os.environ, transports, args.dry_run)
        said, ok = [], True
        if not args.dry_run:
            said, ok = notify.summary(
                con, after, notify.deliver(con, transports, cfg.notify, now), transports.scrub
            )
    print(jsontext.dumps([a.to_json() for a in results], indent=2, ensure_ascii=False))
    verb = "would " if args.dry_run else ""
    for act in actions:
        print(
            f"{verb}{act.action}: {act.detail}; {promote.CONFIG_KEY} = {jsontext.dumps(act.new)}",
            file=sys.stderr,
        )
    for line in said:
        print(line, file=sys.stderr)
    return 0 if ok else 1


COMMANDS = {
    "ttl": lambda args, cfg, now: ttl_cli.run(args, cfg, now),
    "alerts": _alerts,
    "costs": _costs,
    "experiments": _experiments,
    "demo": _demo,
    "import": _import,
    "pull": _pull,
    "serve": _serve,
    "metrics": _metrics,
    "export": _export,
    "compact": _compact,
}
