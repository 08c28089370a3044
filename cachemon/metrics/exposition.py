"""Prometheus text exposition (format 0.0.4) of a Metrics: a pure function.

Families are contiguous, each with one HELP and TYPE line, base units
(seconds, bytes, ratios 0-1), one `cachemon_` prefix, and no unbounded label
values: never a cache key. Window figures are gauges labelled with the
period they cover; latency is a summary (quantiles from the merged
log-bucket histogram, within 1 %, plus exact _sum and _count).
"""

from __future__ import annotations

from datetime import timedelta

from cachemon.events import TIERS
from cachemon.metrics.window import Metrics, is_stale

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HEALTH_LEVELS = {"healthy": 0, "degraded": 1, "critical": 2}
# Gauge readings in family order, so each family's samples stay together.
_GAUGE_FAMILIES = (
    ("queue_depth", "cachemon_queue_depth", "Warming queue depth, latest reading.", {}),
    (
        "kv_storage_bytes",
        "cachemon_storage_bytes",
        "Cache storage in use, latest reading.",
        {"store": "kv"},
    ),
    (
        "r2_storage_bytes",
        "cachemon_storage_bytes",
        "Cache storage in use, latest reading.",
        {"store": "r2"},
    ),
)


def escape(value: str) -> str:
    """Escape a label value: backslash, double quote and newline."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: dict) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{escape(str(v))}"' for k, v in labels.items()) + "}"


def _num(x: float) -> str:
    return repr(float(f"{x:.15g}")) if x == x else "NaN"  # 15 digits: no 0.0081999…


class _Writer:
    def __init__(self):
        self.lines: list[str] = []
        self.seen: set[str] = set()

    def family(self, name: str, kind: str, help_text: str) -> None:
        if name not in self.seen:
            self.seen.add(name)
            self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]

    def sample(self, name: str, labels: dict, value: float) -> None:
        self.lines.append(f"{name}{_labels(labels)} {_num(value)}")


def render(
    m: Metrics,
    stale_after: timedelta = timedelta(minutes=10),
    health=None,
    costs: dict | None = None,
) -> str:
    """The exposition text for one Metrics (and the alert `health`, an
    `health.Health`, and the `costs` block, when given), ending with a newline."""
    w, period = _Writer(), {"period": m.period}
    if m.lifetime is not None:
        w.family(
            "cachemon_requests_total",
            "counter",
            "Weighted requests ever ingested, by the tier that served them (drops only with retention).",
        )
        for tier in TIERS:
            w.sample("cachemon_requests_total", {"tier": tier}, getattr(m.lifetime, tier))
    w.family(
        "cachemon_period_requests",
        "gauge",
        "Weighted requests in the period, by the tier that served them.",
    )
    for tier in TIERS:
        w.sample("cachemon_period_requests", period | {"tier": tier}, getattr(m.volume, tier))
    w.family(
        "cachemon_hit_ratio",
        "gauge",
        "Share of the period's requests served by each tier (0-1); combined is every tier but the origin.",
    )
    for tier in TIERS:
        w.sample("cachemon_hit_ratio", period | {"tier": tier}, m.volume.share(tier) / 100)
    w.sample("cachemon_hit_ratio", period | {"tier": "combined"}, m.combined_hit_rate / 100)
    w.family("cachemon_errors", "gauge", "Weighted requests that ended in an error in the period.")
    w.sample("cachemon_errors", period, m.errors)
    w.family(
        "cachemon_error_ratio",
        "gauge",
        "Share of the period's requests that ended in an error (0-1).",
    )
    w.sample("cachemon_error_ratio", period, m.error_rate / 100)
    name = "cachemon_request_latency_seconds"
    w.family(name, "summary", "Request latency in the period; quantiles within 1 % relative error.")
    for q, v in (("0.5", m.latency.p50), ("0.95", m.latency.p95), ("0.99", m.latency.p99)):
        if v is not None:
            w.sample(name, period | {"quantile": q}, v / 1000)
    if m.latency.avg is not None:
        w.sample(name + "_sum", period, m.latency.avg * m.volume.total / 1000)
    w.sample(name + "_count", period, m.volume.total)
    readings = dict(m.gauges)
    for gauge, fam, help_text, labels in _GAUGE_FAMILIES:
        if gauge in readings:
            w.family(fam, "gauge", help_text)
            w.sample(fam, labels, readings[gauge])
    if m.data_until is not None:
        w.family("cachemon_data_age_seconds", "gauge", "Age of the newest data in the store.")
        w.sample("cachemon_data_age_seconds", {}, max(0.0, (m.at - m.data_until).total_seconds()))
    w.family(
        "cachemon_data_stale", "gauge", "1 when the newest data is older than the staleness limit."
    )
    w.sample("cachemon_data_stale", {}, 1.0 if is_stale(m, stale_after) else 0.0)
    if health is not None:
        firing = dict(health.firing)
        w.family(
            "cachemon_alerts_firing",
            "gauge",
            "Active (firing) alerts by severity, warnings inhibited by a critical excluded.",
        )
        for severity in ("critical", "warning", "info"):
            w.sample("cachemon_alerts_firing", {"severity": severity}, firing.get(severity, 0))
        w.family(
            "cachemon_health_status", "gauge", "Cache health: 0 healthy, 1 degraded, 2 critical."
        )
        w.sample("cachemon_health_status", {}, HEALTH_LEVELS[health.status])
    if costs is not None:
        _costs(w, costs, {"period": m.period})
    return "\n".join(w.lines) + "\n"


def _costs(w: _Writer, costs: dict, period: dict) -> None:
    name = "cachemon_estimated_cost_usd_per_day"
    w.family(
        name,
        "gauge",
        "Estimated cost per day at the period's rate, by component; list price or billed after included amounts.",
    )
    for component, c in costs["perDay"]["components"].items():
        for kind in ("list", "billed"):
            w.sample(name, period | {"component": component, "price": kind}, c[kind])
    if "forecast" in costs:
        f = costs["forecast"]
        w.family(
            "cachemon_month_cost_forecast_usd",
            "gauge",
            "Forecast cost of the current month at its end.",
        )
        w.sample("cachemon_month_cost_forecast_usd", {"price": "list"}, f["monthEndList"])
        w.sample("cachemon_month_cost_forecast_usd", {"price": "billed"}, f["monthEndBilled"])
