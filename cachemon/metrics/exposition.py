"""Prometheus text exposition (format 0.0.4) of a Metrics, built with prometheus_client.

The metric families of one Metrics are built as plain values (`Family`);
`render` hands them to `generate_latest` on a fresh `CollectorRegistry`, so
nothing is global and every render is a pure function of its arguments.
prometheus_client writes the HELP and TYPE lines, sorts and escapes label
values (backslash, double quote, newline) and formats numbers the way
Prometheus's Go code does; it is imported by `render` alone, so the JSON
rendering (`cachemon metrics`' default) starts without it.

Families have base units (seconds, bytes, ratios 0-1), one `cachemon_` prefix,
and no unbounded label values: never a cache key. Window figures are gauges
labelled with the period they cover; latency is a summary (quantiles from the
merged log-bucket histogram, within 1 %, plus exact _sum and _count).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from cachemon.metrics.window import Metrics, is_stale
from cachemon.names import TIERS
from cachemon.severity import HealthStatus, Severity

# generate_latest's default (metric names escaped to underscores) is the 0.0.4
# text format; prometheus_client's CONTENT_TYPE_LATEST announces 1.0.0 (quoted
# UTF-8 names), which this exposition never needs.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
QUANTILES = (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99"))
# Gauge readings: family name, help, and the label of each reading it holds.
_GAUGE_FAMILIES = (
    ("cachemon_queue_depth", "Warming queue depth, latest reading.", (("queue_depth", None),)),
    (
        "cachemon_storage_bytes",
        "Cache storage in use, latest reading.",
        (("kv_storage_bytes", "kv"), ("r2_storage_bytes", "r2")),
    ),
)


def _value(x: float) -> float:
    """15 significant digits: 0.0082, not 0.008199999999999999."""
    return float(f"{x:.15g}")


@dataclass(frozen=True)
class Family:
    """One metric family: its name, help text and type, and its samples
    (sample name, labels, value) in order."""

    name: str
    help: str
    type: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def add(self, suffix: str, labels: dict[str, str], value: float) -> None:
        """A sample named the family's name plus `suffix` (15 digits)."""
        self.samples.append((self.name + suffix, labels, _value(value)))


def _gauge(name: str, help_text: str, labels: Sequence[str] = (), rows=()) -> Family:
    """A gauge family with a sample per (label values, value) of `rows`."""
    family = Family(name, help_text, "gauge")
    for values, value in rows:
        family.add("", dict(zip(labels, values)), value)
    return family


class MetricsCollector:
    """The metric families of one Metrics (and the alert `health`, an
    `health.Health`, and the `costs` block, when given), in a fixed order."""

    def __init__(
        self,
        m: Metrics,
        stale_after: timedelta = timedelta(minutes=10),
        health=None,
        costs: dict | None = None,
    ):
        self.m, self.stale_after, self.health, self.costs = m, stale_after, health, costs

    def collect(self) -> Iterator[Family]:
        """Every family, each once, samples in a stable order."""
        yield from self._traffic()
        yield self._latency()
        yield from self._gauges()
        yield from self._freshness()
        if self.health is not None:
            yield from self._health()
        if self.costs is not None:
            yield from self._costs()

    def _traffic(self) -> Iterator[Family]:
        m, period = self.m, self.m.period
        if m.lifetime is not None:
            total = Family(
                "cachemon_requests",
                "Weighted requests ever ingested, by the tier that served them "
                "(drops only with retention).",
                "counter",
            )
            for tier in TIERS:
                total.add("_total", {"tier": tier}, getattr(m.lifetime, tier))
            yield total
        yield _gauge(
            "cachemon_period_requests",
            "Weighted requests in the period, by the tier that served them.",
            ("period", "tier"),
            (((period, tier), getattr(m.volume, tier)) for tier in TIERS),
        )
        ratios = [((period, tier), m.volume.share(tier) / 100) for tier in TIERS]
        yield _gauge(
            "cachemon_hit_ratio",
            "Share of the period's requests served by each tier (0-1); combined is every tier "
            "but the origin.",
            ("period", "tier"),
            [*ratios, ((period, "combined"), m.combined_hit_rate / 100)],
        )
        yield _gauge(
            "cachemon_errors",
            "Weighted requests that ended in an error in the period.",
            ("period",),
            [((period,), m.errors)],
        )
        yield _gauge(
            "cachemon_error_ratio",
            "Share of the period's requests that ended in an error (0-1).",
            ("period",),
            [((period,), m.error_rate / 100)],
        )

    def _latency(self) -> Family:
        # A summary with quantiles, then _sum and _count (prometheus_client's
        # SummaryMetricFamily has only _count and _sum, and writes _count first).
        m, period = self.m, {"period": self.m.period}
        s = Family(
            "cachemon_request_latency_seconds",
            "Request latency in the period; quantiles within 1 % relative error.",
            "summary",
        )
        for q, name in QUANTILES:
            ms = getattr(m.latency, name)
            if ms is not None:
                s.add("", period | {"quantile": q}, ms / 1000)
        if m.latency.avg is not None:
            s.add("_sum", period, m.latency.avg * m.volume.total / 1000)
        s.add("_count", period, m.volume.total)
        return s

    def _gauges(self) -> Iterator[Family]:
        readings = dict(self.m.gauges)
        for name, help_text, members in _GAUGE_FAMILIES:
            present = [(label, readings[g]) for g, label in members if g in readings]
            if not present:
                continue
            labelled = members[0][1] is not None
            rows = [((label,) if labelled else (), value) for label, value in present]
            yield _gauge(name, help_text, ("store",) if labelled else (), rows)

    def _freshness(self) -> Iterator[Family]:
        m = self.m
        if m.data_until is not None:
            age = max(0.0, (m.at - m.data_until).total_seconds())
            yield _gauge(
                "cachemon_data_age_seconds", "Age of the newest data in the store.", (), [((), age)]
            )
        yield _gauge(
            "cachemon_data_stale",
            "1 when the newest data is older than the staleness limit.",
            (),
            [((), 1.0 if is_stale(m, self.stale_after) else 0.0)],
        )

    def _health(self) -> Iterator[Family]:
        firing = dict(self.health.firing)
        yield _gauge(
            "cachemon_alerts_firing",
            "Active (firing) alerts by severity, warnings inhibited by a critical excluded.",
            ("severity",),
            [((severity.value,), firing.get(severity, 0)) for severity in Severity],
        )
        yield _gauge(
            "cachemon_health_status",
            "Cache health: 0 healthy, 1 degraded, 2 critical.",
            (),
            [((), HealthStatus(self.health.status).level)],
        )

    def _costs(self) -> Iterator[Family]:
        yield _gauge(
            "cachemon_estimated_cost_usd_per_day",
            "Estimated cost per day at the period's rate, by component; list price or billed "
            "after included amounts.",
            ("period", "component", "price"),
            [
                ((self.m.period, component, kind), c[kind])
                for component, c in self.costs["perDay"]["components"].items()
                for kind in ("list", "billed")
            ],
        )
        if "forecast" in self.costs:
            f = self.costs["forecast"]
            yield _gauge(
                "cachemon_month_cost_forecast_usd",
                "Forecast cost of the current month at its end.",
                ("price",),
                [(("list",), f["monthEndList"]), (("billed",), f["monthEndBilled"])],
            )


class _Registered:
    """What `CollectorRegistry.register` takes: an object with `collect`
    (prometheus_client's Collector base class is not needed for that)."""

    def __init__(self, metrics: list):
        self.metrics = metrics

    def collect(self) -> Iterator:
        return iter(self.metrics)


def render(
    m: Metrics,
    stale_after: timedelta = timedelta(minutes=10),
    health=None,
    costs: dict | None = None,
) -> str:
    """The exposition text for one Metrics (and the alert `health`, an
    `health.Health`, and the `costs` block, when given), ending with a newline."""
    # Imported here: the JSON rendering, and so `cachemon metrics`, never needs it.
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import Metric

    metrics = []
    for family in MetricsCollector(m, stale_after, health, costs).collect():
        metric = Metric(family.name, family.help, family.type)
        for name, labels, value in family.samples:
            metric.add_sample(name, labels, value)
        metrics.append(metric)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Registered(metrics))
    return generate_latest(registry).decode("utf-8")
