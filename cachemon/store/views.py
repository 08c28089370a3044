"""The analysts' surface: stable, versioned SQL views over the store.

Internal tables change with cachemon; the views in schema `v1` do not (a
breaking change gets a `v2` beside it). They sum over sources, as every
cachemon number does, and read across retention: a day whose hours were
compacted away still shows in the daily views (docs/analysts.md).

Views name tables as `main.<table>`, so they also work from a database
ATTACHed under another name; table macros need `USE <that name>` first.
"""

from __future__ import annotations

from cachemon.histogram import GAMMA, ZERO_BUCKET
from cachemon.store.queries import key_class_sql

SCHEMA = "v1"

_REQUEST_SUMS = """sum(requests) AS requests, sum(errors) AS errors, sum(bytes) AS bytes,
    sum(latency_sum) AS latency_ms_sum, min(latency_min) AS latency_ms_min, max(latency_max) AS latency_ms_max,
    CAST(sum(events) AS BIGINT) AS data_points"""
_KEYS = """k.key, k.endpoint, sum(r.edge + r.kv + r.r2 + r.api) AS requests, sum(r.edge) AS edge,
    sum(r.kv) AS kv, sum(r.r2) AS r2, sum(r.api) AS api, sum(r.errors) AS errors,
    sum(r.fill_errors) AS fill_errors, min(r.first_seen) AS first_seen, max(r.last_seen) AS last_seen"""


def _requests(t: str, source: str) -> str:
    return f"SELECT {t}, endpoint, tier, experiment, cohort, {_REQUEST_SUMS} FROM {source} GROUP BY ALL"


def _histogram(t: str, source: str) -> str:
    return f"""SELECT {t}, endpoint, tier, experiment, cohort, bucket, v1.bucket_ms(bucket) AS value_ms,
    sum(weight) AS weight FROM {source} GROUP BY ALL"""


def _gauges(t: str, source: str, order: str) -> str:
    return f"""SELECT {t}, name, sum(value_sum) / sum(samples) AS value_avg, min(value_min) AS value_min,
    max(value_max) AS value_max, arg_max(value_last, {order}) AS value_last, CAST(sum(samples) AS BIGINT) AS samples
    FROM {source} GROUP BY ALL"""


def _quantiles(name: str, period: str, source: str, tcol: str) -> str:
    """A table macro: p50/p95/p99 per period of [lo, hi) from the merged
    histograms, per endpoint and tier, with '*' rows for all of either."""
    q = ", ".join(
        f"v1.bucket_ms(min(bucket) FILTER (WHERE c >= {p} * total * (1 - 1e-12))) AS p{int(p * 100)}_ms"
        for p in (0.5, 0.95, 0.99)
    )
    return f"""CREATE MACRO v1.{name}(lo, hi) AS TABLE
WITH m AS (
    SELECT {period} AS period, endpoint, tier, bucket, sum(weight) AS weight
    FROM {source} WHERE {tcol} >= lo AND {tcol} < hi
    GROUP BY GROUPING SETS ((period, endpoint, tier, bucket), (period, endpoint, bucket), (period, tier, bucket),
                           (period, bucket))
), c AS (
    SELECT period, coalesce(endpoint, '*') AS endpoint, coalesce(tier, '*') AS tier, bucket, weight,
        sum(weight) OVER (PARTITION BY period, endpoint, tier ORDER BY bucket ROWS UNBOUNDED PRECEDING) AS c,
        sum(weight) OVER (PARTITION BY period, endpoint, tier) AS total
    FROM m
)
SELECT period, endpoint, tier, any_value(total) AS requests, {q}
FROM c GROUP BY period, endpoint, tier ORDER BY period, endpoint, tier"""


# Per-key rows: an hour is either compacted (key_hour) or still per minute
# (key_minute, kept for [retention] minute_days), never both; key_day sums
# both (schema v9), so daily rows come from key_day alone.
_KEY_COLS = "key_id, edge, kv, r2, api, errors, fill_errors, first_seen, last_seen"
_KEY_PARTS = {
    "hour": f"""(SELECT hour, {_KEY_COLS} FROM main.key_hour
        UNION ALL
        SELECT date_trunc('hour', minute), {_KEY_COLS} FROM main.key_minute)""",
    "day": f"(SELECT day, {_KEY_COLS} FROM main.key_day)",
}
# Per-key rows of [lo, hi): whole days from key_day, other hours from key_hour,
# and the minutes of not yet compacted hours outside whole days (disjoint;
# before the hour horizon only days exist, before the minute horizon only hours).
_WHOLE_DAY = "date_trunc('day', {t}) >= lo AND date_trunc('day', {t}) + INTERVAL 1 DAY <= hi"
_KEY_WINDOW = f"""
    SELECT {_KEY_COLS} FROM main.key_day WHERE day >= lo AND day + INTERVAL 1 DAY <= hi
    UNION ALL
    SELECT {_KEY_COLS} FROM main.key_hour
    WHERE hour >= lo AND hour < hi AND NOT ({_WHOLE_DAY.format(t="hour")})
    UNION ALL
    SELECT {_KEY_COLS} FROM main.key_minute
    WHERE minute >= lo AND minute < hi AND NOT ({_WHOLE_DAY.format(t="minute")})"""

# The key views, created (or replaced) by schema migration 9.
KEY_VIEWS_V9: tuple[str, ...] = (
    *(
        f"""CREATE OR REPLACE VIEW v1.keys_{g} AS SELECT r.{g}, {_KEYS}
        FROM {_KEY_PARTS[g]} r JOIN main.cache_keys k USING (key_id) GROUP BY ALL"""
        for g in ("hour", "day")
    ),
    f"""CREATE OR REPLACE MACRO v1.top_keys(lo, hi, n) AS TABLE
        SELECT {_KEYS}, 100 * (1 - sum(r.api) / sum(r.edge + r.kv + r.r2 + r.api)) AS hit_rate
        FROM ({_KEY_WINDOW}) r JOIN main.cache_keys k USING (key_id)
        GROUP BY ALL ORDER BY requests DESC, k.key LIMIT n""",
    f"""CREATE OR REPLACE MACRO v1.key_classes(lo, hi) AS TABLE
        SELECT *, {key_class_sql("requests_per_day")} AS class
        FROM (SELECT {_KEYS},
                     sum(r.edge + r.kv + r.r2 + r.api) / (epoch(hi - lo) / 86400) AS requests_per_day
              FROM ({_KEY_WINDOW}) r JOIN main.cache_keys k USING (key_id) GROUP BY ALL)""",
)

# The views of schema migration 8 (the key views are migration 9's).
VIEWS: tuple[str, ...] = (
    f"CREATE SCHEMA {SCHEMA}",
    f"CREATE MACRO v1.bucket_ms(b) AS if(b = {ZERO_BUCKET}, 0.0, 2 * pow({GAMMA!r}, b) / (1 + {GAMMA!r}))",
    f"CREATE VIEW v1.requests_minute AS {_requests('minute', 'main.rollup_minute')}",
    f"CREATE VIEW v1.requests_hour AS {_requests('hour', 'main.rollup_hour')}",
    f"""CREATE VIEW v1.requests_day AS {
        _requests(
            "day",
            '''(
        SELECT day, endpoint, tier, experiment, cohort, requests, errors, bytes, latency_sum, latency_min,
               latency_max, events FROM main.rollup_day
        UNION ALL
        SELECT date_trunc('day', hour), endpoint, tier, experiment, cohort, requests, errors, bytes,
               latency_sum, latency_min, latency_max, events FROM main.rollup_hour)''',
        )
    }""",
    f"CREATE VIEW v1.latency_histogram_hour AS {_histogram('hour', 'main.latency_hour')}",
    f"""CREATE VIEW v1.latency_histogram_day AS {
        _histogram(
            "day",
            '''(
        SELECT day, endpoint, tier, experiment, cohort, bucket, weight FROM main.latency_day
        UNION ALL
        SELECT date_trunc('day', hour), endpoint, tier, experiment, cohort, bucket, weight FROM main.latency_hour)''',
        )
    }""",
    _quantiles("latency_hourly", "hour", "v1.latency_histogram_hour", "hour"),
    _quantiles("latency_daily", "day", "v1.latency_histogram_day", "day"),
    _quantiles("latency_window", "lo", "v1.latency_histogram_hour", "hour"),
    f"CREATE VIEW v1.latency_histogram_minute AS {_histogram('minute', 'main.latency_minute')}",
    f"CREATE VIEW v1.gauges_minute AS {_gauges('minute', 'main.gauge_minute', 'minute')}",
    f"""CREATE VIEW v1.gauges_hour AS {
        _gauges(
            "hour",
            '''(
        SELECT hour, name, value_sum, samples, value_min, value_max, value_last, hour AS t FROM main.gauge_hour
        UNION ALL
        SELECT date_trunc('hour', minute), name, value_sum, samples, value_min, value_max, value_last, minute
        FROM main.gauge_minute)''',
            "t",
        )
    }""",
    """CREATE VIEW v1.alert_history AS SELECT changed_at, rule, endpoint, type, severity, from_state, to_state,
        value, threshold, message, firing_since FROM main.alert_history""",
    """CREATE VIEW v1.alert_state AS SELECT rule, endpoint, type, severity, state, since, evaluated_at, value,
        threshold, message FROM main.alert_state""",
    """CREATE VIEW v1.notifications AS SELECT n.id, n.created_at, n.channel, n.kind, n.subject, n.status,
        n.attempts, n.sent_at, n.last_error, count(d.notification_id) AS deliveries,
        count(d.notification_id) FILTER (WHERE d.ok) AS delivered
        FROM main.notifications n LEFT JOIN main.deliveries d ON d.notification_id = n.id GROUP BY ALL""",
    """CREATE VIEW v1.silences AS SELECT id, matcher, endpoint, starts_at, ends_at, reason, created_at,
        created_by, expired_at FROM main.silences""",
    """CREATE VIEW v1.cost_day AS
        SELECT day, l->>0 AS component, l->>1 AS unit, CAST(l->>2 AS DOUBLE) AS quantity,
               CAST(l->>3 AS DOUBLE) AS list_usd, CAST(l->>4 AS DOUBLE) AS billed_usd,
               payload->>'pricing_version' AS pricing_version
        FROM (SELECT day, payload, unnest(json_extract(payload, '$.lines[*]')) AS l FROM main.cost_reports)""",
    """CREATE VIEW v1.experiment_results AS
        SELECT experiment, analyzed_at, decision AS overall_decision,
               CAST(payload->>'window_start' AS TIMESTAMPTZ) AS window_start,
               CAST(payload->>'window_end' AS TIMESTAMPTZ) AS window_end,
               CAST(payload->>'srm_p' AS DOUBLE) AS srm_p, c->>'treatment' AS treatment,
               c->>'decision' AS decision, m->>'metric' AS metric,
               CAST(m->>'control' AS DOUBLE) AS control_value, CAST(m->>'treatment' AS DOUBLE) AS treatment_value,
               CAST(m->>'estimate' AS DOUBLE) AS estimate, CAST(m->>'lower' AS DOUBLE) AS ci_lower,
               CAST(m->>'upper' AS DOUBLE) AS ci_upper, CAST(m->>'p_value' AS DOUBLE) AS p_value
        FROM (SELECT *, unnest(json_extract(payload, '$.comparisons[*]')) AS c FROM main.experiment_results) e,
             (SELECT unnest(json_extract(e.c, '$.metrics[*]')) AS m)""",
    """CREATE VIEW v1.job_runs AS SELECT job, started_at, finished_at,
        epoch(finished_at - started_at) AS seconds, outcome, error, slots, rows FROM main.job_runs""",
    """CREATE VIEW v1.retention AS SELECT name AS resolution, horizon FROM main.retention_state""",
)

# Schema v10: the SHARDS samples (docs/analysts.md), one row per sampled request.
SAMPLE_VIEWS: tuple[str, ...] = (
    """CREATE VIEW v1.samples AS
        SELECT s.t AS timestamp, s.source, s.endpoint, k.key, h.key_hash, s.tier,
               if(s.error, 'error', 'ok') AS status, s.weight AS sample_interval, m.rate AS sample_rate
        FROM main.samples s JOIN main.cache_keys k USING (key_id) JOIN main.sample_keys h USING (key_id)
        LEFT JOIN main.sample_minutes m ON m.source = s.source AND m.minute = date_trunc('minute', s.t)""",
)
