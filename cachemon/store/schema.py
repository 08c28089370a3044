"""The store's schema: the DDL of every table as numbered migrations, and
the version check every reader and writer makes.

Schema changes are new migrations (never edits of old ones); SCHEMA_VERSION
is the newest. The analysts' views are part of the schema
(`cachemon.store.views`).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import duckdb

from cachemon.errors import StoreError
from cachemon.store import topkeys
from cachemon.store import views as store_views
from cachemon.store.connection import first_line, first_row, transaction

SCHEMA_VERSION = 11

_ROLLUP_COLUMNS = """
    source VARCHAR NOT NULL, {time} TIMESTAMPTZ NOT NULL,
    tier VARCHAR NOT NULL, endpoint VARCHAR NOT NULL,
    experiment VARCHAR NOT NULL, cohort VARCHAR NOT NULL,
    requests DOUBLE NOT NULL, errors DOUBLE NOT NULL, bytes DOUBLE NOT NULL,
    latency_sum DOUBLE NOT NULL, latency_min DOUBLE NOT NULL, latency_max DOUBLE NOT NULL,
    events BIGINT NOT NULL
"""

_LATENCY_COLUMNS = """
    source VARCHAR NOT NULL, {time} TIMESTAMPTZ NOT NULL,
    tier VARCHAR NOT NULL, endpoint VARCHAR NOT NULL,
    experiment VARCHAR NOT NULL, cohort VARCHAR NOT NULL,
    bucket INTEGER NOT NULL, weight DOUBLE NOT NULL
"""

_GAUGE_COLUMNS = """
    source VARCHAR NOT NULL, {time} TIMESTAMPTZ NOT NULL, name VARCHAR NOT NULL,
    value_sum DOUBLE NOT NULL, samples BIGINT NOT NULL,
    value_min DOUBLE NOT NULL, value_max DOUBLE NOT NULL, value_last DOUBLE NOT NULL
"""

_KEY_COLUMNS = """
    source VARCHAR NOT NULL, {time} TIMESTAMPTZ NOT NULL, key_id INTEGER NOT NULL,
    edge DOUBLE NOT NULL, kv DOUBLE NOT NULL, r2 DOUBLE NOT NULL, api DOUBLE NOT NULL,
    errors DOUBLE NOT NULL, first_seen TIMESTAMPTZ NOT NULL, last_seen TIMESTAMPTZ NOT NULL
"""

# Each migration is a list of statements, applied in one transaction.
MIGRATIONS: dict[int, list] = {
    1: [
        f"CREATE TABLE rollup_minute ({_ROLLUP_COLUMNS.format(time='minute')})",
        f"CREATE TABLE rollup_hour ({_ROLLUP_COLUMNS.format(time='hour')})",
        f"CREATE TABLE latency_minute ({_LATENCY_COLUMNS.format(time='minute')})",
        f"CREATE TABLE latency_hour ({_LATENCY_COLUMNS.format(time='hour')})",
        f"CREATE TABLE gauge_minute ({_GAUGE_COLUMNS.format(time='minute')})",
        "CREATE SEQUENCE key_ids START 1",
        """CREATE TABLE cache_keys (
            key_id INTEGER PRIMARY KEY, key VARCHAR NOT NULL, endpoint VARCHAR NOT NULL)""",
        f"CREATE TABLE key_hour ({_KEY_COLUMNS.format(time='hour')})",
        f"CREATE TABLE key_minute ({_KEY_COLUMNS.format(time='minute')})",
        f"CREATE TABLE key_day ({_KEY_COLUMNS.format(time='day')})",
        """CREATE TABLE key_top (
            part VARCHAR NOT NULL, t TIMESTAMPTZ NOT NULL, key_id INTEGER NOT NULL,
            edge DOUBLE NOT NULL, kv DOUBLE NOT NULL, r2 DOUBLE NOT NULL, api DOUBLE NOT NULL,
            errors DOUBLE NOT NULL, requests DOUBLE NOT NULL)""",
        """CREATE TABLE key_top_cutoff (part VARCHAR NOT NULL, t TIMESTAMPTZ NOT NULL, cutoff DOUBLE NOT NULL)""",
        """CREATE TABLE watermarks (
            source VARCHAR PRIMARY KEY, until TIMESTAMPTZ NOT NULL, updated_at TIMESTAMPTZ NOT NULL)""",
        """CREATE TABLE imports (
            sha256 VARCHAR PRIMARY KEY, source VARCHAR NOT NULL, file VARCHAR NOT NULL,
            events BIGINT NOT NULL, first_event TIMESTAMPTZ, last_event TIMESTAMPTZ,
            imported_at TIMESTAMPTZ NOT NULL)""",
        """CREATE TABLE source_state (
            source VARCHAR PRIMARY KEY, state BLOB NOT NULL, clock TIMESTAMPTZ NOT NULL)""",
    ],
}
MIGRATIONS[2] = [
    """CREATE TABLE job_runs (
        job VARCHAR NOT NULL, started_at TIMESTAMPTZ NOT NULL, finished_at TIMESTAMPTZ NOT NULL,
        outcome VARCHAR NOT NULL, error VARCHAR, slots INTEGER NOT NULL, rows BIGINT)""",
]
# Alerts: instance states, their history, evaluations, dedup groups, the
# notification outbox with every delivery attempt, and silences.
MIGRATIONS[3] = [
    """CREATE TABLE alert_state (
        rule VARCHAR NOT NULL, endpoint VARCHAR NOT NULL, type VARCHAR NOT NULL, severity VARCHAR NOT NULL,
        state VARCHAR NOT NULL, since TIMESTAMPTZ NOT NULL, evaluated_at TIMESTAMPTZ NOT NULL,
        value DOUBLE, threshold DOUBLE, message VARCHAR NOT NULL, pending_since TIMESTAMPTZ,
        firing_since TIMESTAMPTZ, last_breach TIMESTAMPTZ, clear_since TIMESTAMPTZ)""",
    """CREATE TABLE alert_history (
        changed_at TIMESTAMPTZ NOT NULL, rule VARCHAR NOT NULL, endpoint VARCHAR NOT NULL, type VARCHAR NOT NULL,
        severity VARCHAR NOT NULL, from_state VARCHAR NOT NULL, to_state VARCHAR NOT NULL,
        value DOUBLE, threshold DOUBLE, message VARCHAR NOT NULL, firing_since TIMESTAMPTZ)""",
    """CREATE TABLE alert_evaluations (
        evaluated_at TIMESTAMPTZ NOT NULL, data_until TIMESTAMPTZ, instances INTEGER NOT NULL, firing INTEGER NOT NULL,
        notifications INTEGER NOT NULL, backfill BOOLEAN NOT NULL)""",
    "CREATE TABLE notify_groups (channel VARCHAR PRIMARY KEY, members VARCHAR NOT NULL, sent_at TIMESTAMPTZ)",
    "CREATE SEQUENCE notification_ids START 1",
    """CREATE TABLE notifications (
        id BIGINT NOT NULL, created_at TIMESTAMPTZ NOT NULL, channel VARCHAR NOT NULL, kind VARCHAR NOT NULL,
        subject VARCHAR NOT NULL, members VARCHAR NOT NULL, payload VARCHAR NOT NULL, status VARCHAR NOT NULL,
        attempts INTEGER NOT NULL, next_attempt_at TIMESTAMPTZ NOT NULL, last_error VARCHAR,
        sent_at TIMESTAMPTZ)""",
    """CREATE TABLE deliveries (
        notification_id BIGINT NOT NULL, attempted_at TIMESTAMPTZ NOT NULL, ok BOOLEAN NOT NULL,
        detail VARCHAR NOT NULL)""",
    "CREATE SEQUENCE silence_ids START 1",
    """CREATE TABLE silences (
        id BIGINT NOT NULL, matcher VARCHAR NOT NULL, endpoint VARCHAR NOT NULL, starts_at TIMESTAMPTZ NOT NULL,
        ends_at TIMESTAMPTZ NOT NULL, reason VARCHAR NOT NULL, created_at TIMESTAMPTZ NOT NULL,
        created_by VARCHAR NOT NULL, expired_at TIMESTAMPTZ)""",
]
# Daily cost reports, one per UTC day (re-running a day replaces it).
MIGRATIONS[4] = [
    """CREATE TABLE cost_reports (
        day DATE PRIMARY KEY, created_at TIMESTAMPTZ NOT NULL, payload VARCHAR NOT NULL, sent BOOLEAN NOT NULL)""",
]
# The experiment cohort each key was served under, as the events say.
MIGRATIONS[5] = [
    "CREATE TABLE key_cohorts (key_id INTEGER NOT NULL, experiment VARCHAR NOT NULL, cohort VARCHAR NOT NULL)",
]
# Every analysis of every experiment (the history of its decisions).
MIGRATIONS[6] = [
    """CREATE TABLE experiment_results (
        experiment VARCHAR NOT NULL, analyzed_at TIMESTAMPTZ NOT NULL, decision VARCHAR NOT NULL,
        payload VARCHAR NOT NULL)""",
]
# TTL promotions and rollbacks written to Workers KV.
MIGRATIONS[7] = [
    """CREATE TABLE promotions (
        done_at TIMESTAMPTZ NOT NULL, action VARCHAR NOT NULL, experiment VARCHAR NOT NULL,
        old_config VARCHAR, new_config VARCHAR, detail VARCHAR NOT NULL)""",
]
# Retention: coarser tables that receive what retention compacts (rollup_hour
# and key_day are kept up to date by every write; these only by retention),
# the horizons before which finer rows are gone, and the analysts' views.
MIGRATIONS[8] = [
    f"CREATE TABLE rollup_day ({_ROLLUP_COLUMNS.format(time='day')})",
    f"CREATE TABLE latency_day ({_LATENCY_COLUMNS.format(time='day')})",
    f"CREATE TABLE gauge_hour ({_GAUGE_COLUMNS.format(time='hour')})",
    "CREATE TABLE retention_state (name VARCHAR PRIMARY KEY, horizon TIMESTAMPTZ NOT NULL)",
    *store_views.VIEWS,
]
# Per-key counts exact for every window (issue 20): every table of per-key
# counts gains `fill_errors`, the errors of requests answered by R2 or the
# origin (the failed fills of the tier-mix rule; edge and KV errors write
# nothing either way). Rows written before it keep errors without their tier:
# least(errors, r2 + api) is the most of them that can have been fills (a
# key's r2 + api answers), so old KV writes are never counted below the
# tier-mix rule's floor. Per-key minute rows are now kept until the minute
# horizon and `key_day` sums them too: the days and hour summaries of
# not yet compacted hours are rebuilt, and the key views read the new parts.
_FILL_TABLES = ("key_minute", "key_hour", "key_day", "key_top")
MIGRATIONS[9] = [
    # NOT NULL before the backfill: DuckDB refuses it after an UPDATE in one transaction.
    *(f"ALTER TABLE {t} ADD COLUMN fill_errors DOUBLE DEFAULT 0" for t in _FILL_TABLES),
    *(f"ALTER TABLE {t} ALTER COLUMN fill_errors SET NOT NULL" for t in _FILL_TABLES),
    *(f"UPDATE {t} SET fill_errors = least(errors, r2 + api)" for t in _FILL_TABLES),
    topkeys.rebuild_uncompacted,
    *store_views.KEY_VIEWS_V9,
]
# SHARDS samples for the TTL what-if (cachemon.ingest.samples writes them,
# cachemon.store.samples reads them): the request rows of the sampled keys,
# each sampled key's hash, and the rate each source's minutes were sampled at
# (NULL: the source has no key hash).
MIGRATIONS[10] = [
    """CREATE TABLE samples (
        source VARCHAR NOT NULL, t TIMESTAMPTZ NOT NULL, endpoint VARCHAR NOT NULL,
        key_id INTEGER NOT NULL, tier VARCHAR NOT NULL, error BOOLEAN NOT NULL, weight DOUBLE NOT NULL)""",
    "CREATE TABLE sample_keys (key_id INTEGER PRIMARY KEY, key_hash DOUBLE NOT NULL)",
    """CREATE TABLE sample_minutes (
        source VARCHAR NOT NULL, minute TIMESTAMPTZ NOT NULL, rate DOUBLE)""",
    *store_views.SAMPLE_VIEWS,
]

# The budgeted Analytics Engine pull (cachemon.sources.ae_keys): the spans whose
# per-key rows are estimates, with the key sample's rate and the heavy-key
# threshold, and the keys pulled exactly there (cachemon.ingest.estimates
# writes them, cachemon.store.keyestimates reads them). A span without a row
# here has exact per-key rows.
MIGRATIONS[11] = [
    """CREATE TABLE key_estimates (
        source VARCHAR NOT NULL, lo TIMESTAMPTZ NOT NULL, hi TIMESTAMPTZ NOT NULL,
        rate DOUBLE NOT NULL, threshold DOUBLE NOT NULL)""",
    """CREATE TABLE key_heavy (
        source VARCHAR NOT NULL, lo TIMESTAMPTZ NOT NULL, hi TIMESTAMPTZ NOT NULL,
        key_id INTEGER NOT NULL)""",
]


def schema_version(con: duckdb.DuckDBPyConnection) -> int:
    """The schema version of an open store (0 for a new, empty file)."""
    has = first_row(
        con, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'"
    )[0]
    if not has:
        return 0
    return first_row(con, "SELECT coalesce(max(version), 0) FROM schema_version")[0]


def migrate(con: duckdb.DuckDBPyConnection, now: datetime) -> int:
    """Bring the schema up to SCHEMA_VERSION; returns the version found."""
    found = schema_version(con)
    if found > SCHEMA_VERSION:
        raise StoreError(
            f"store schema version {found} is newer than this cachemon ({SCHEMA_VERSION}); upgrade cachemon"
        )
    if found == 0:
        tables = first_row(con, "SELECT count(*) FROM information_schema.tables")[0]
        if tables:
            raise StoreError(
                "database has tables but no cachemon schema_version: not a cachemon store"
            )
    with transaction(con):
        con.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)"
        )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[version]:
                # A step that needs values of the data (a backfill) is a function.
                statement(con) if callable(statement) else con.execute(statement)
            con.execute("INSERT INTO schema_version VALUES (?, ?)", [version, now])
    return found


def check_readable(con: duckdb.DuckDBPyConnection, snap: Path) -> None:
    """A snapshot this cachemon can read, or one clear StoreError."""
    try:
        version = schema_version(con)
    except duckdb.Error as exc:
        raise StoreError(f"{snap} cannot be read (corrupt): {first_line(str(exc))}") from None
    if version == 0:
        raise StoreError(f"{snap} is not a cachemon store (no schema_version table)")
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"store {snap.name} has schema version {version}, newer than this cachemon "
            f"({SCHEMA_VERSION}); upgrade cachemon"
        )
    if version < SCHEMA_VERSION:
        # Tables this cachemon reads may not exist yet: a clear line, not a
        # catalog error from the first query that needs one.
        raise StoreError(
            f"store {snap.name} has schema version {version}, older than this cachemon "
            f"({SCHEMA_VERSION}): the job runner migrates it at its next write, or run "
            "`python -m cachemon compact` now"
        )
