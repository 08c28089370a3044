"""Prometheus text exposition (format 0.0.4) of a Metrics, built with prometheus_client.

A custom collector yields the metric families of one Metrics; `render` hands it
to `generate_latest` on a fresh `CollectorRegistry`, so nothing is global and
every render is a pure function of its arguments. prometheus_client writes the
HELP and TYPE lines, sorts and escapes label values (backslash, double quote,
newline) and formats numbers the way Prometheus's Go code does.

Families have base units (seconds, bytes, ratios 0-1), one `cachemon_` prefix,
and no unbounded label values: never a cache key. Window figures are gauges
labelled with the period they cover; latency is a summary (quantiles from the
merged log-bucket histogram, within 1 %, plus exact _sum and _count).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

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


class _Summary(Metric):
    """A summary with quantiles: prometheus_client's SummaryMetricFamily has
    only _count and _sum, and writes _count first."""

    def __init__(self, name: str, documentation: str):
        super().__init__(name, documentation, "summary")

    def add(self, suffix: str, labels: dict[str, str], value: float) -> None:
        self.add_sample(self.name + suffix, labels, _value(value))


class MetricsCollector(Collector):
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

    def collect(self) -> Iterator[Metric]:
        """Every family, each once, samples in a stable order."""
        yield from self._traffic()
        yield self._latency()
        yield from self._gauges()
        yield from self._freshness()
        if self.health is not None:
            yield from self._health()
        if self.costs is not None:
            yield from self._costs()

    def _traffic(self) -> Iterator[Metric]:
        m, period = self.m, self.m.period
        if m.lifetime is not None:
            total = CounterMetricFamily(
                "cachemon_requests",
                "Weighted requests ever ingested, by the tier that served them "
                "(drops only with retention).",
                labels=("tier",),
            )
            for tier in TIERS:
                total.add_metric((tier,), _value(getattr(m.lifetime, tier)))
            yield total
        requests = GaugeMetricFamily(
            "cachemon_period_requests",
            "Weighted requests in the period, by the tier that served them.",
            labels=("period", "tier"),
        )
        for tier in TIERS:
            requests.add_metric((period, tier), _value(getattr(m.volume, tier)))
        yield requests
        ratio = GaugeMetricFamily(
            "cachemon_hit_ratio",
            "Share of the period's requests served by each tier (0-1); combined is every tier "
            "but the origin.",
            labels=("period", "tier"),
        )
        for tier in TIERS:
            ratio.add_metric((period, tier), _value(m.volume.share(tier) / 100))
        ratio.add_metric((period, "combined"), _value(m.combined_hit_rate / 100))
        yield ratio
        errors = GaugeMetricFamily(
            "cachemon_errors",
            "Weighted requests that ended in an error in the period.",
            labels=("period",),
        )
        errors.add_metric((period,), _value(m.errors))
        yield errors
        error_ratio = GaugeMetricFamily(
            "cachemon_error_ratio",
            "Share of the period's requests that ended in an error (0-1).",
            labels=("period",),
        )
        error_ratio.add_metric((period,), _value(m.error_rate / 100))
        yield error_ratio

    def _latency(self) -> Metric:
        m, period = self.m, {"period": self.m.period}
        s = _Summary(
            "cachemon_request_latency_seconds",
            "Request latency in the period; quantiles within 1 % relative error.",
        )
        for q, field in QUANTILES:
            ms = getattr(m.latency, field)
            if ms is not None:
                s.add("", period | {"quantile": q}, ms / 1000)
        if m.latency.avg is not None:
            s.add("_sum", period, m.latency.avg * m.volume.total / 1000)
        s.add("_count", period, m.volume.total)
        return s

    def _gauges(self) -> Iterator[Metric]:
        readings = dict(self.m.gauges)
        for name, help_text, members in _GAUGE_FAMILIES:
            present = [(label, readings[g]) for g, label in members if g in readings]
            if not present:
                continue
            labelled = members[0][1] is not None
            family = GaugeMetricFamily(name, help_text, labels=("store",) if labelled else None)
            for label, value in present:
                family.add_metric((label,) if labelled else (), _value(value))
            yield family

    def _freshness(self) -> Iterator[Metric]:
        m = self.m
        if m.data_until is not None:
            yield GaugeMetricFamily(
                "cachemon_data_age_seconds",
                "Age of the newest data in the store.",
                value=_value(max(0.0, (m.at - m.data_until).total_seconds())),
            )
        yield GaugeMetricFamily(
            "cachemon_data_stale",
            "1 when the newest data is older than the staleness limit.",
            value=1.0 if is_stale(m, self.stale_after) else 0.0,
        )

    def _health(self) -> Iterator[Metric]:
        firing = dict(self.health.firing)
        alerts = GaugeMetricFamily(
            "cachemon_alerts_firing",
            "Active (firing) alerts by severity, warnings inhibited by a critical excluded.",
            labels=("severity",),
        )
        for severity in Severity:
            alerts.add_metric((severity.value,), _value(firing.get(severity, 0)))
        yield alerts
        yield GaugeMetricFamily(
            "cachemon_health_status",
            "Cache health: 0 healthy, 1 degraded, 2 critical.",
            value=_value(HealthStatus(self.health.status).level),
        )

    def _costs(self) -> Iterator[Metric]:
        per_day = GaugeMetricFamily(
            "cachemon_estimated_cost_usd_per_day",
            "Estimated cost per day at the period's rate, by component; list price or billed "
            "after included amounts.",
            labels=("period", "component", "price"),
        )
        for component, c in self.costs["perDay"]["components"].items():
            for kind in ("list", "billed"):
                per_day.add_metric((self.m.period, component, kind), _value(c[kind]))
        yield per_day
        if "forecast" in self.costs:
            f = self.costs["forecast"]
            forecast = GaugeMetricFamily(
                "cachemon_month_cost_forecast_usd",
                "Forecast cost of the current month at its end.",
                labels=("price",),
            )
            forecast.add_metric(("list",), _value(f["monthEndList"]))
            forecast.add_metric(("billed",), _value(f["monthEndBilled"]))
            yield forecast


def render(
    m: Metrics,
    stale_after: timedelta = timedelta(minutes=10),
    health=None,
    costs: dict | None = None,
) -> str:
    """The exposition text for one Metrics (and the alert `health`, an
    `health.Health`, and the `costs` block, when given), ending with a newline."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MetricsCollector(m, stale_after, health, costs))
    return generate_latest(registry).decode("utf-8")
