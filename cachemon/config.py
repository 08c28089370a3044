"""Configuration: a TOML file (CACHEMON_CONFIG / --config) over defaults.

Every value has a default, so cachemon runs with no file at all. Unknown
sections or keys are errors naming the file and the key, so a typo is never
silently ignored. Secrets are never read from here: they come from the
environment (see README).
"""

from __future__ import annotations

import math
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field, fields, replace
from datetime import timedelta
from pathlib import Path

from .clock import CLOCK_SKEW, parse_duration
from .errors import ConfigError
from .pricing import Pricing, default as pricing_default, parse as parse_pricing

DEFAULT_DB = "data/cachemon.duckdb"
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
# Deliberately strict: no spaces, quotes, commas or newlines can reach a header.
EMAIL_RE = re.compile(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\Z")  # \Z: `$` would accept a trailing newline


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

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if not _IDENT.match(value):
                raise ConfigError(f"[columns] {f.name} = {value!r} is not a column name")


@dataclass(frozen=True)
class StoreConfig:
    path: str = DEFAULT_DB
    # Per-key minute rows of a partly ingested hour are merged into the
    # hourly table once the hour is this far behind the newest window; it
    # must exceed any re-pull overlap (Analytics Engine late data).
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

    def __post_init__(self):
        if self.minute_days < 1:
            raise ConfigError(f"[retention] minute_days = {self.minute_days} must be at least 1")
        if self.hour_days < self.minute_days:
            raise ConfigError(f"[retention] hour_days = {self.hour_days} must be at least minute_days "
                              f"({self.minute_days}): hours are made from minutes")


# Key classes by requests per day: hot above 100, cold under 10 a month.
HOT_PER_DAY = 100.0
COLD_PER_DAY = 10.0 / 30.0

# The Worker's TTLs per endpoint: what the simulator runs and, until told
# otherwise ([costs]), what cachemon assumes the real Worker uses.
KV_TTL = (("author", timedelta(days=7)), ("isbn", timedelta(days=30)), ("title", timedelta(hours=24)))
EDGE_TTL = (("author", timedelta(hours=6)), ("isbn", timedelta(hours=24)), ("title", timedelta(hours=6)))


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
        limits = {"seed": (0, 2**32 - 1), "requests_per_hour": (1e-6, 1e8), "catalog_keys": (1, 10_000_000),
                  "zipf_alpha": (0, 10), "colos": (1, 1000), "long_tail_share": (0, 1),
                  "sample_threshold_per_minute": (1e-6, 1e12), "origin_error_rate": (0, 1)}
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ConfigError(f"[simulator] {name} = {value!r} must be from {low:g} to {high:g}")
        for name in ("kv_ttl", "edge_ttl"):
            ttl = getattr(self, name)
            if {e for e, _ in ttl} != {"title", "isbn", "author"} or any(t <= timedelta(0) for _, t in ttl):
                raise ConfigError(f"[simulator] {name} needs a positive TTL for each of title, isbn and author")


@dataclass(frozen=True)
class AnalyticsEngineConfig:
    dataset: str = "CACHE_ANALYTICS"
    window: timedelta = timedelta(hours=1)  # one pull query set per window
    overlap: timedelta = timedelta(minutes=10)  # re-pulled: AE data arrives late
    backfill: timedelta = timedelta(days=1)  # first pull with no watermark
    timeout: timedelta = timedelta(seconds=30)
    retries: int = 3

    def __post_init__(self):
        if not _IDENT.match(self.dataset):
            raise ConfigError(f"[analytics_engine] dataset = {self.dataset!r} is not a dataset name")
        if self.overlap >= self.window * 24 or self.retries < 0:
            raise ConfigError("[analytics_engine] overlap must be shorter than a day of windows; retries >= 0")


@dataclass(frozen=True)
class MetricsConfig:
    # Data older than this is reported as stale (`stale: true`).
    stale_after: timedelta = timedelta(minutes=10)
    # Where `cachemon serve` answers, for the dashboard's link.
    api_url: str = "http://127.0.0.1:8787"

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
    rules: tuple = ()  # filled by load(); see cachemon.rules

    def __post_init__(self):
        if self.evaluate_every < timedelta(minutes=1) or self.repeat_interval <= timedelta(0):
            raise ConfigError("[alerts] evaluate_every must be at least 1m and repeat_interval positive")
        if self.min_requests < 0:
            raise ConfigError("[alerts] min_requests must not be negative")

    @property
    def effective_rules(self) -> tuple:
        from .rules import BUILTIN, with_defaults

        rules = self.rules if self.rules else tuple(r for r in BUILTIN if self.builtin_rules and r.name not in self.disable)
        return with_defaults(rules, self.min_requests)


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
        for severity in ("critical", "warning", "info", "report"):
            for addr in getattr(self, severity):
                if not EMAIL_RE.match(addr):
                    raise ConfigError(f"[notify] {severity}: {addr!r} is not an email address")
        if self.email_from and not EMAIL_RE.match(self.email_from):
            raise ConfigError(f"[notify] email_from: {self.email_from!r} is not an email address")
        if not re.match(r"^https?://[^\s]+$", self.dashboard_url):
            raise ConfigError(f"[notify] dashboard_url: {self.dashboard_url!r} is not an http(s) URL")
        if self.retry_base <= timedelta(0) or self.retry_max < self.retry_base:
            raise ConfigError("[notify] retry_base must be positive and retry_max at least retry_base")


@dataclass(frozen=True)
class CostsConfig:
    """[costs]: key classes, recommendations and the daily report."""

    class_window: timedelta = timedelta(days=30)  # per-key rates over this span (or the data there is)
    archive_after: timedelta = timedelta(days=30)  # cold keys older than this: R2 candidates
    edge_target: float = 90.0  # hot keys below this edge hit rate (%): edge_optimization
    value_bytes: float = 600.0  # mean stored value size (KV/R2), for storage and puts
    report_at: str = "03:00"  # daily report (UTC)
    # Current KV TTL per endpoint (the Worker's settings), for ttl_tuning.
    kv_ttl: tuple = KV_TTL
    # The Worker's edge cache TTL per endpoint (for the edge what-if).
    edge_ttl: tuple = EDGE_TTL
    max_kv_ttl: timedelta = timedelta(days=30)  # staleness limit for proposed TTLs

    def __post_init__(self):
        if not re.match(r"^([01]\d|2[0-3]):[0-5]\d$", self.report_at):
            raise ConfigError(f"[costs] report_at = {self.report_at!r} is not a time like 03:00")
        if self.value_bytes <= 0 or not 0 < self.edge_target <= 100:
            raise ConfigError("[costs] value_bytes must be positive and edge_target in (0, 100]")
        if self.class_window < timedelta(days=1):
            raise ConfigError("[costs] class_window must be at least 1d")


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
    pricing: Pricing = field(default_factory=pricing_default)
    experiments: tuple = ()  # cachemon.experiments.Experiment, from [[experiments]]
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
}


def load(path: str | os.PathLike | None = None, env: dict | None = None) -> Config:
    """Load the config file named by `path` or CACHEMON_CONFIG (if any)."""
    env = os.environ if env is None else env
    path = path or env.get("CACHEMON_CONFIG")
    cfg = Config()
    if path:
        cfg = _from_file(Path(path))
    if env.get("CACHEMON_DATASET"):
        try:
            cfg = replace(cfg, analytics_engine=replace(cfg.analytics_engine, dataset=env["CACHEMON_DATASET"]))
        except ConfigError as exc:
            raise ConfigError(f"CACHEMON_DATASET: {exc}") from None
    db = env.get("CACHEMON_DB")
    return cfg if db is None else with_db(cfg, db, "CACHEMON_DB")


# A configuration file is a few kilobytes; the cap keeps a mistaken path
# (a log, a disk image) from being read into memory whole.
MAX_CONFIG_BYTES = 1 << 20


def _read_config(path: Path) -> str:
    """The text of a regular file of at most MAX_CONFIG_BYTES. Opened without
    blocking (a FIFO would wait for a writer) and checked before reading (a
    device like /dev/zero never ends)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(path)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"config file {path} is {file_kind(st.st_mode)}, not a regular file")
        if st.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES:,} bytes; is it a config file?")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:  # grew while being read
        raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES:,} bytes; is it a config file?")
    return data.decode("utf-8")


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    if stat.S_ISFIFO(mode):
        return "a pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def _from_file(path: Path) -> Config:
    try:
        data = tomllib.loads(_read_config(path))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory, not a file") from None
    except OSError as exc:  # unreadable: permissions, a device, a path too long
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise ConfigError(f"config file {path} nests arrays or tables too deeply") from None
    _refuse_non_finite(path, data)
    parts = {}
    for name, value in data.items():
        if name == "source":
            if value not in ("simulator", "analytics_engine"):
                raise ConfigError(f"{path}: source = {value!r}: use 'simulator' or 'analytics_engine'")
            parts["source"] = value
        elif name == "pricing":
            parts["pricing"] = parse_pricing(str(path), value)
        elif name == "experiments":
            continue  # needs the endpoints from [costs]; parsed below
        elif name in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: [{name}] must be a table")
            parts[name] = _section(path, name, _SECTIONS[name], value)
        else:
            raise ConfigError(f"{path}: unknown section or key {name!r}")
    if "alerts" in parts:
        parts["alerts"] = _alerts(path, data["alerts"], parts["alerts"])
    if "experiments" in data:
        from .experiments import parse as parse_experiments

        endpoints = tuple(e for e, _ in parts.get("costs", CostsConfig()).kv_ttl)
        parts["experiments"] = parse_experiments(str(path), data["experiments"], endpoints)
    return Config(**parts)


def _refuse_non_finite(path: Path, value, where: str = "") -> None:
    """TOML allows nan and inf; no setting means either (a nan threshold
    never breaches, an inf price makes every cost inf). Checked on the raw
    document, so every float of every section, rule and experiment is."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{path}: {where} = {value} is not a finite number")
    if isinstance(value, dict):
        for k, v in value.items():
            _refuse_non_finite(path, v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _refuse_non_finite(path, v, f"{where}[{i}]")


def _alerts(path: Path, raw: dict, scalars: AlertsConfig) -> AlertsConfig:
    """[alerts] with its rules: built-ins, overrides and the user's own."""
    from .rules import parse_rules

    rules = parse_rules(str(path), raw.get("rules", []), scalars.builtin_rules, scalars.disable)
    return replace(scalars, rules=rules) if rules else replace(scalars, rules=(), builtin_rules=False)


def _section(path: Path, name: str, cls, values: dict):
    known = {f.name: f for f in fields(cls)}
    default = cls()
    kwargs = {}
    for key, value in values.items():
        if name == "alerts" and key == "rules":
            continue  # parsed by _alerts
        if key not in known:
            raise ConfigError(f"{path}: [{name}] has unknown key {key!r}")
        kwargs[key] = _coerce(path, f"[{name}] {key}", getattr(default, key), value)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _coerce(path: Path, where: str, default, value):
    """Check a TOML value against the type of its default."""
    if isinstance(default, timedelta):
        if not isinstance(value, str):
            raise ConfigError(f"{path}: {where} must be a duration string like '1h', got {value!r}")
        try:
            return parse_duration(value, where)
        except Exception as exc:
            raise ConfigError(f"{path}: {exc}") from None
    if isinstance(default, tuple) and default and isinstance(default[0], tuple):
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f"{path}: {where} must be a table of durations like {{ title = \"24h\" }}")
        try:
            return tuple(sorted((k, parse_duration(v, f"{where}.{k}")) for k, v in value.items()))
        except Exception as exc:
            raise ConfigError(f"{path}: {exc}") from None
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{path}: {where} must be a list of strings, got {value!r}")
        return tuple(value)
    if isinstance(default, bool) or isinstance(value, bool):
        if type(value) is not type(default):
            raise ConfigError(f"{path}: {where} must be {type(default).__name__}, got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, type(default)):
        raise ConfigError(f"{path}: {where} must be {type(default).__name__}, got {value!r}")
    return value


def with_db(cfg: Config, path: str, what: str = "--db") -> Config:
    """`cfg` with another store path (the --db flag). An empty one is
    refused: falling back to the default store would write somewhere else."""
    if not path.strip():
        raise ConfigError(f"{what} is empty: name the store file")
    return replace(cfg, store=replace(cfg.store, path=path))
