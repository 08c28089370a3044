"""`export` and `compact`: the store's Parquet export for analysts and its daily compaction."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime

from cachemon.clock import check_not_future, parse_instant
from cachemon.ingest import load as ingest_load
from cachemon.settings import Config
from cachemon.store import db as store_db
from cachemon.store import export as store_export


def register(sub) -> None:
    """Add the `export` and `compact` commands."""
    p = sub.add_parser("export")
    p.add_argument(
        "--to",
        required=True,
        help="target directory, or s3://BUCKET/PREFIX (endpoint and keys from CACHEMON_S3_*); "
        "only new or changed days are written",
    )
    p.add_argument("--since", help="export days from this instant's day on (default: all)")
    p.set_defaults(func=export)

    p = sub.add_parser("compact")
    p.add_argument("--at", help="act as if now were this instant")
    p.set_defaults(func=compact)


def export(args: argparse.Namespace, cfg: Config, now: datetime) -> int:
    """`export`: the analyst views as Parquet under --to (a folder or an
    s3:// bucket), one folder per day, writing only new or changed days."""
    since = parse_instant(args.since, "--since") if args.since else None
    with store_db.reader(cfg.store.path) as con:
        written = store_export.parquet(con, args.to, since)
    for w in written:
        print(
            f"{w.dataset}: {w.rows:,} rows in {w.days} day(s), {w.uploaded} written "
            f"({w.days - w.uploaded} unchanged)",
            file=sys.stderr,
        )
    return 0


def compact(args: argparse.Namespace, cfg: Config, now: datetime) -> int:
    """`compact`: apply the retention horizons (per-key minutes among them)."""
    at = (
        check_not_future(parse_instant(args.at, "--at"), now, skew=cfg.ingest.clock_skew)
        if args.at
        else now
    )
    with store_db.writer(cfg.store.path, now, create=False) as con:
        kept = ingest_load.compact(con, cfg, at)
    print(
        f"merged {kept.key_minute_rows:,} per-key minute rows into hours; retention removed "
        f"{kept.minute_rows:,} minute "
        f"rows (kept from {kept.horizons.minute:%Y-%m-%d}) and {kept.hour_rows:,} hourly rows "
        f"(kept from {kept.horizons.hour:%Y-%m-%d}), and {kept.sample_rows:,} SHARDS sample rows "
        f"older than {cfg.retention.sample_days} days",
        file=sys.stderr,
    )
    return 0
