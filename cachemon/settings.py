"""Settings: the configuration sections as typed frozen dataclasses.

Low in the graph: every layer may read a `Config`. Loading the TOML file is
`cachemon.config` (high), which builds these values once at the edge.

Every value has a default, so cachemon runs with no file at all. Unknown
sections or keys are errors naming the file and the key, so a typo is never
silently ignored. Secrets are never read from here: they come from the
environment (see README).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from typing import TYPE_CHECKING

from cachemon.clock import CLOCK_SKEW
from cachemon.errors import ConfigError
from cachemon.names import ENDPOINTS
from cachemon.pricing import Pricing, R2Lookup
from cachemon.pricing import default as pricing_default
from cachemon.severity import Severity

if TYPE_CHECKING:  # annotations only: the parsers live above this module
    from cachemon.alerts.rules import Rule
    from cachemon.tuning.experiments import Experiment

# Cloudflare's API (Analytics Engine SQL, Workers KV); CF_API_BASE overrides it.
CF_API_BASE = "https://api.cloudflare.com/client/v4"


def cf_api_base(env: Mapping[str, str]) -> str:
    """The Cloudflare API base URL: CF_API_BASE when set and not empty (the
    emulators in tests), else Cloudflare's."""
    return (env.get("CF_API_BASE") or CF_API_BASE).rstrip("/")


DEFAULT_DB = "data/cachemon.duckdb"
# Where `cachemon serve` listens by default: the API's ServeOptions, the CLI's --host and
# --port, and [metrics] api_url all read these.
API_HOST = "127.0.0.1"
API_PORT = 8787
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
# Deliberately strict: no spaces, quotes, commas or newlines can reach a header.
EMAIL_RE = re.compile(
    r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\Z"
)  # \Z: `$` would accept a trailing newline


@dataclass(frozen=True)
class ColumnMapping:
    """Which Analytics Engine column carries each event field."""

    tier: str = "index1"
    key: str = "blob1"
    endpoint: str = "blob2"
    experiment: str = "blob3"
    cohort: str = "blob4"
    status: str = "blob5"
    kind: str = "blob6"
    latency_ms: str = "double1"
    bytes: str = "double2"
    # The double the Worker writes `cachemon.keyhash.key_hash(key)` into
    # (e.g. "double3"), for the SHARDS samples; empty: the dataset has none,
    # so no samples are pulled and the TTL what-if says so.
    key_hash: str = ""

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if not _IDENT.match(value) and not (f.name == "key_hash" and value == ""):
                raise ConfigError(f"[columns] {f.name} = {value!r} is not a column name")
        taken = {getattr(self, f.name): f.name for f in fields(self) if f.name != "key_hash"}
        if self.key_hash in taken:
            raise ConfigError(
                f"[columns] key_hash = {self.key_hash!r} is already the column of "
                f"{taken[self.key_hash]}: the Worker's key hash needs a double of its own"
            )


@dataclass(frozen=True)
class StoreConfig:
    path: str = DEFAULT_DB
    # No longer used (schema 9): per-key minutes are kept for [retention]
    # minute_days, so top keys of every window there are exact. Still read
    # and checked, so config files that set it keep loading.
    key_compaction_lag: timedelta = timedelta(hours=1)


@dataclass(frozen=True)
class IngestConfig:
    # Imported events dated after now plus this are refused: one event from
    # the future would make old data look fresh (clocks of exporters drift).
    clock_skew: timedelta = CLOCK_SKEW

    def __post_init__(self):
        if not timedelta(0) <= self.clock_skew <= timedelta(days=1):
            raise ConfigError("[ingest] clock_skew must be between 0s and 1d")


@dataclass(frozen=True)
class RetentionConfig:
    # Minute rows (kept for exact windows, alerts and experiment variances)
    # past this many days are compacted to hours; hourly rows past
    # hour_days to days. 35 keeps the dashboard's 30-day range exact.
    minute_days: int = 35
    hour_days: int = 400
    # SHARDS samples (raw request rows of the sampled keys): the longest
    # what-if window (7 d) plus a warm-up as long as the longest candidate
    # TTL ([costs] max_kv_ttl, 30 d).
    sample_days: int = 37

    def __post_init__(self):
        if self.sample_days < 1:
            raise ConfigError(f"[retention] sample_days = {self.sample_days} must be at least 1")
        if self.minute_days < 1:
            raise ConfigError(f"[retention] minute_days = {self.minute_days} must be at least 1")
        if self.hour_days < self.minute_days:
            raise ConfigError(
                f"[retention] hour_days = {self.hour_days} must be at least minute_days "
                f"({self.minute_days}): hours are made from minutes"
            )


# The Worker's TTLs per endpoint: what the simulator runs and, until told
# otherwise ([costs]), what cachemon assumes the real Worker uses.
KV_TTL = (
    ("author", timedelta(days=7)),
    ("isbn", timedelta(days=30)),
    ("title", timedelta(hours=24)),
)
EDGE_TTL = (
    ("author", timedelta(hours=6)),
    ("isbn", timedelta(hours=24)),
    ("title", timedelta(hours=6)),
)


@dataclass(frozen=True)
class SimulatorConfig:
    seed: int = 42
    requests_per_hour: float = 125_000.0
    catalog_keys: int = 60_000
    zipf_alpha: float = 0.8
    colos: int = 3
    long_tail_share: float = 0.04
    sample_threshold_per_minute: float = 1_000.0
    origin_error_rate: float = 0.01
    # The Worker's KV TTL per endpoint (what-if evidence runs the simulator at
    # other TTLs); with `experiment`, title keys take the extended-title-ttl
    # cohorts' TTLs (24 h / 48 h) instead.
    kv_ttl: tuple = KV_TTL
    edge_ttl: tuple = EDGE_TTL
    experiment: bool = True

    def __post_init__(self):
        # Refused here, before a demo or the runner starts: a bad value would
        # otherwise fail deep inside numpy, after the old data was replaced.
        limits = {
            "seed": (0, 2**32 - 1),
            "requests_per_hour": (1e-6, 1e8),
            "catalog_keys": (1, 10_000_000),
            "zipf_alpha": (0, 10),
            "colos": (1, 1000),
            "long_tail_share": (0, 1),
            "sample_threshold_per_minute": (1e-6, 1e12),
            "origin_error_rate": (0, 1),
        }
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not low <= value <= high
            ):
                raise ConfigError(
                    f"[simulator] {name} = {value!r} must be from {low:g} to {high:g}"
                )
        for name in ("kv_ttl", "edge_ttl"):
            ttl = getattr(self, name)
            if {e for e, _ in ttl} != set(ENDPOINTS) or any(t <= timedelta(0) for _, t in ttl):
                raise ConfigError(
                    f"[simulator] {name} needs a positive TTL for each of {', '.join(ENDPOINTS)}"
                )


@dataclass(frozen=True)
class AnalyticsEngineConfig:
    dataset: str = "CACHE_ANALYTICS"
    window: timedelta = timedelta(hours=1)  # one pull query set per window
    overlap: timedelta = timedelta(minutes=10)  # re-pulled: AE data arrives late
    backfill: timedelta = timedelta(days=1)  # first pull with no watermark
    timeout: timedelta = timedelta(seconds=30)
    retries: int = 3
    # Per-key rows a day at most, when the dataset has the Worker's key hash
    # ([columns] key_hash): keys with at least `heavy_share` of a window's
    # requests are pulled exactly, the rest from the keys whose hash is under
    # a rate R chosen so their rows fit the window's share, weighted by 1/R.
    # The seed's volume (~780,000 rows a day) fits: R = 1, every key exact.
    key_budget: int = 1_000_000
    heavy_share: float = 0.001

    def __post_init__(self):
        b = self.key_budget
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ConfigError(
                f"[analytics_engine] key_budget = {b!r} must be a whole number of per-key rows "
                "a day, at least 1"
            )
        s = self.heavy_share
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s <= 1:
            raise ConfigError(
                f"[analytics_engine] heavy_share = {s!r} must be in (0, 1]: the share of a "
                "window's requests from which a key is pulled exactly"
            )
        if not _IDENT.match(self.dataset):
            raise ConfigError(
                f"[analytics_engine] dataset = {self.dataset!r} is not a dataset name"
            )
        if self.overlap >= self.window * 24 or self.retries < 0:
            raise ConfigError(
                "[analytics_engine] overlap must be shorter than a day of windows; retries >= 0"
            )


@dataclass(frozen=True)
class MetricsConfig:
    # Data older than this is reported as stale (`stale: true`).
    stale_after: timedelta = timedelta(minutes=10)
    # Where `cachemon serve` answers, for the dashboard's link.
    api_url: str = f"http://{API_HOST}:{API_PORT}"

    def __post_init__(self):
        if not re.match(r"^https?://[^\s/]+(/\S*)?$", self.api_url):
            raise ConfigError(f"[metrics] api_url = {self.api_url!r} is not an http(s) URL")


@dataclass(frozen=True)
class JobsConfig:
    """The runner's schedule (UTC)."""

    ingest_every: timedelta = timedelta(minutes=1)
    compact_at: str = "00:30"  # daily sweep of per-key minute rows

    def __post_init__(self):
        if not re.match(r"^([01]\d|2[0-3]):[0-5]\d$", self.compact_at):
            raise ConfigError(f"[jobs] compact_at = {self.compact_at!r} is not a time like 00:30")
        if self.ingest_every <= timedelta(0):
            raise ConfigError("[jobs] ingest_every must be positive")


@dataclass(frozen=True)
class AlertsConfig:
    """[alerts]: evaluation, deduplication and the rules ([[alerts.rules]])."""

    evaluate_every: timedelta = timedelta(minutes=15)
    min_requests: float = 100.0  # fewer weighted requests in a window: no-data
    repeat_interval: timedelta = timedelta(hours=4)  # the seed's dedup window
    send_resolved: bool = True
    builtin_rules: bool = True
    disable: tuple[str, ...] = ()
    rules: tuple[
        Rule, ...
    ] = ()  # filled by config.load(); alerts.rules.effective() adds the built-ins

    def __post_init__(self):
        if self.evaluate_every < timedelta(minutes=1) or self.repeat_interval <= timedelta(0):
            raise ConfigError(
                "[alerts] evaluate_every must be at least 1m and repeat_interval positive"
            )
        if self.min_requests < 0:
            raise ConfigError("[alerts] min_requests must not be negative")


@dataclass(frozen=True)
class NotifyConfig:
    """[notify]: recipients and delivery. Secrets (SMTP password, API key,
    webhook URLs) come only from the environment."""

    email_from: str = ""  # default: ALERT_FROM, else cachemon@localhost
    critical: tuple[str, ...] = ()  # email recipients per severity; default ALERT_EMAIL
    warning: tuple[str, ...] = ()
    info: tuple[str, ...] = ()
    report: tuple[str, ...] = ()  # daily report recipients; default ALERT_EMAIL
    dashboard_url: str = "http://127.0.0.1:8501"  # CACHEMON_DASHBOARD_URL overrides
    subject_prefix: str = "[BooksTrack Cache]"
    timeout: timedelta = timedelta(seconds=10)
    retry_base: timedelta = timedelta(minutes=1)
    retry_max: timedelta = timedelta(hours=1)

    def __post_init__(self):
        for severity in (*Severity, "report"):
            for addr in getattr(self, severity):
                if not EMAIL_RE.match(addr):
                    raise ConfigError(f"[notify] {severity}: {addr!r} is not an email address")
        if self.email_from and not EMAIL_RE.match(self.email_from):
            raise ConfigError(f"[notify] email_from: {self.email_from!r} is not an email address")
        if not re.match(r"^https?://[^\s]+$", self.dashboard_url):
            raise ConfigError(
                f"[notify] dashboard_url: {self.dashboard_url!r} is not an http(s) URL"
            )
        if self.retry_base <= timedelta(0) or self.retry_max < self.retry_base:
            raise ConfigError(
                "[notify] retry_base must be positive and retry_max at least retry_base"
            )


@dataclass(frozen=True)
class CostsConfig:
    """[costs]: key classes, recommendations and the daily report."""

    class_window: timedelta = timedelta(
        days=30
    )  # per-key rates over this span (or the data there is)
    archive_after: timedelta = timedelta(days=30)  # cold keys older than this: R2 candidates
    edge_target: float = 90.0  # hot keys below this edge hit rate (%): edge_optimization
    value_bytes: float = 600.0  # mean stored value size (KV/R2), for storage and puts
    report_at: str = "03:00"  # daily report (UTC)
    # Current KV TTL per endpoint (the Worker's settings), for ttl_tuning.
    kv_ttl: tuple = KV_TTL
    # The Worker's edge cache TTL per endpoint (for the edge what-if).
    edge_ttl: tuple = EDGE_TTL
    max_kv_ttl: timedelta = timedelta(days=30)  # staleness limit for proposed TTLs
    # When the Worker reads R2 (Class B gets): "rehydration" (archived keys
    # only, the seed's flow) or "every_kv_miss" (see pricing.R2Lookup).
    r2_lookup: str = str(R2Lookup.REHYDRATION)
    # Recommendations saving less (USD/day, list) are folded away on the Costs page.
    min_saving: float = 0.01

    @property
    def r2_flow(self) -> R2Lookup:
        """`r2_lookup` as the flow every cost rule takes."""
        return R2Lookup(self.r2_lookup)

    def __post_init__(self):
        R2Lookup.parse(self.r2_lookup)
        if not re.match(r"^([01]\d|2[0-3]):[0-5]\d$", self.report_at):
            raise ConfigError(f"[costs] report_at = {self.report_at!r} is not a time like 03:00")
        if self.value_bytes <= 0 or not 0 < self.edge_target <= 100:
            raise ConfigError("[costs] value_bytes must be positive and edge_target in (0, 100]")
        if self.class_window < timedelta(days=1):
            raise ConfigError("[costs] class_window must be at least 1d")
        # bool is an int; nan and inf compare false or make every saving "smaller".
        m = self.min_saving
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 <= m < math.inf:
            raise ConfigError(
                f"[costs] min_saving = {m!r} must be a finite number of USD per day, 0 or more"
            )


@dataclass(frozen=True)
class TtlConfig:
    """[ttl]: the SHARDS samples the TTL what-if replays (docs/ttl.md)."""

    # R: keys with keyhash.key_hash(key) < R keep every request row. The demo's
    # 60,000 keys over 3 endpoints give ~2,000 sampled keys per endpoint at
    # 0.1, what SHARDS needs for about a point of hit-rate error.
    sample_rate: float = 0.1
    # Stored sample rows per day at most: a window whose rows would exceed its
    # share lowers R to the hash of the first key left out (fixed-size
    # SHARDS); the rate used is stored with the window. ~4.5x the demo's rows.
    sample_budget: int = 1_000_000

    def __post_init__(self):
        if isinstance(self.sample_rate, bool) or not 0 < self.sample_rate <= 1:
            raise ConfigError(f"[ttl] sample_rate = {self.sample_rate!r} must be in (0, 1]")
        if isinstance(self.sample_budget, bool) or self.sample_budget < 1:
            raise ConfigError(
                f"[ttl] sample_budget = {self.sample_budget!r} must be at least 1 (rows a day)"
            )


@dataclass(frozen=True)
class Config:
    store: StoreConfig = field(default_factory=StoreConfig)
    columns: ColumnMapping = field(default_factory=ColumnMapping)
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    analytics_engine: AnalyticsEngineConfig = field(default_factory=AnalyticsEngineConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    costs: CostsConfig = field(default_factory=CostsConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    ttl: TtlConfig = field(default_factory=TtlConfig)
    pricing: Pricing = field(default_factory=pricing_default)
    experiments: tuple[Experiment, ...] = ()  # from [[experiments]]
    source: str = "simulator"


_SECTIONS = {
    "store": StoreConfig,
    "columns": ColumnMapping,
    "simulator": SimulatorConfig,
    "analytics_engine": AnalyticsEngineConfig,
    "metrics": MetricsConfig,
    "jobs": JobsConfig,
    "alerts": AlertsConfig,
    "notify": NotifyConfig,
    "costs": CostsConfig,
    "retention": RetentionConfig,
    "ingest": IngestConfig,
    "ttl": TtlConfig,
}
