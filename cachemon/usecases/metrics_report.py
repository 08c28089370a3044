"""The metrics response, composed once: compute a window's metrics, then
the alert health as of its instant, then (store-wide) its costs, and render
them as JSON or Prometheus exposition.

`cachemon metrics`, `GET /metrics` and the dashboard's overview all build
their answer with `build`, so the three cannot drift apart (which window,
which health instant, when the costs block is left out).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb

from cachemon.alerts import health as alert_health
from cachemon.clock import Period, Window
from cachemon.costs import usage
from cachemon.metrics import exposition
from cachemon.metrics import window as metrics
from cachemon.settings import Config


@dataclass(frozen=True)
class MetricsReport:
    """One metrics response: the window's metrics, the alert health as of
    `metrics.at`, and the costs block (None when left out: the costs are
    store-wide, so an endpoint's report has none unless asked)."""

    metrics: metrics.Metrics
    health: alert_health.Health
    costs: usage.WindowCosts | None
    stale_after: timedelta  # newer data than this is fresh (`stale` in both renderings)

    def to_json(self) -> dict:
        """The /metrics JSON document (the seed's shape plus added fields)."""
        return metrics.to_json(self.metrics, self.stale_after, self.health, self._costs_block())

    def to_prometheus(self) -> str:
        """The Prometheus text exposition of the same numbers."""
        return exposition.render(self.metrics, self.stale_after, self.health, self._costs_block())

    def _costs_block(self) -> dict | None:
        return self.costs.to_json() if self.costs is not None else None


def build(
    con: duckdb.DuckDBPyConnection,
    cfg: Config,
    period: Period,
    at: datetime,
    endpoint: str | None = None,
    top: int = 10,
    latest: bool = True,
    costs: bool | None = None,
) -> MetricsReport:
    """The metrics response for the `period` ending at `at` (optionally one
    endpoint, with `top` busiest keys). With `latest`, a window past the
    newest data slides back to it and is marked stale (the last good
    numbers; pass False for a reproducible `--at`). `costs` None includes
    the costs block only for the whole store (no endpoint); True or False
    forces it."""
    m = metrics.compute(
        con, Window.ending(at, period.length), period.value, endpoint, top, latest=latest
    )
    state = alert_health.health(con, m.at, cfg.alerts.evaluate_every)
    with_costs = endpoint is None if costs is None else costs
    block = usage.window_costs(con, m.window, m.at, cfg) if with_costs else None
    return MetricsReport(m, state, block, cfg.metrics.stale_after)
