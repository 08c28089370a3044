"""The metrics response, composed once: compute a window's metrics, then
the alert health as of its instant, then (store-wide) its costs, and render
them as JSON or Prometheus exposition.

`cachemon metrics`, `GET /metrics` and the dashboard's overview all build
their answer with `build`, so the three cannot drift apart (which window,
which health instant, when the costs block is left out). The overview also
asks for the previous period (`compare`), to show each KPI's change.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb

from cachemon.alerts import health as alerts_health
from cachemon.alerts import rules as alerts_rules
from cachemon.clock import Period, Window
from cachemon.costs import usage
from cachemon.errors import CachemonError
from cachemon.metrics import exposition, trends
from cachemon.metrics import window as metrics_window
from cachemon.metrics.memo import SnapshotMemo, through
from cachemon.settings import Config
from cachemon.store.queries import data_spans, days_of, extent

COST_KPI = "cost"  # the list cost per day, beside the metrics' KPIs (metrics.KPI_LABELS)


# A previous period with request data for less of its length than this is
# not compared: "+20,952,399 requests" against a week before the store began
# (or one it holds two days of) is the store's age, not a change.
COMPARABLE_COVERAGE = 0.9


@dataclass(frozen=True)
class Previous:
    """The period just before a report's window, for comparison: its metrics
    (None when the store has no request there), its store-wide list cost
    per day (None when the report has no costs or the period no data), and
    the share of it with data (`metrics.trends.coverage`)."""

    metrics: metrics_window.Metrics | None
    list_per_day: float | None
    coverage: float = 1.0
    window: Window | None = None

    @property
    def comparable(self) -> bool:
        """Whether changes against this period mean anything: it has data
        for at least COMPARABLE_COVERAGE of its length."""
        return self.metrics is not None and self.coverage >= COMPARABLE_COVERAGE


@dataclass(frozen=True)
class MetricsReport:
    """One metrics response: the window's metrics, the alert health as of
    `metrics.at`, and the costs block (None when left out: the costs are
    store-wide, so an endpoint's report has none unless asked)."""

    metrics: metrics_window.Metrics
    health: alerts_health.Health
    costs: usage.WindowCosts | None
    stale_after: timedelta  # newer data than this is fresh (`stale` in both renderings)
    previous: Previous | None = None  # with `build(..., compare=True)`

    def kpis(self) -> dict[str, float | None]:
        """The headline numbers: the metrics' KPIs and, with costs, the list
        cost per day (`COST_KPI`)."""
        cost = {COST_KPI: self.costs.daily.list_total} if self.costs is not None else {}
        return metrics_window.kpis(self.metrics) | cost

    def kpi_deltas(self) -> dict[str, float | None]:
        """Each KPI's change against the previous period (None where unknown:
        no comparison asked, or the previous period not `comparable`: no
        data, or data for less than COMPARABLE_COVERAGE of it)."""
        comparable = self.previous is not None and self.previous.comparable
        prev = self.previous.metrics if comparable else None
        deltas = metrics_window.kpi_deltas(self.metrics, prev)
        if self.costs is None:
            return deltas
        before = self.previous.list_per_day if comparable else None
        return deltas | {
            COST_KPI: self.costs.daily.list_total - before if before is not None else None
        }

    def to_json(self) -> dict:
        """The /metrics JSON document (the seed's shape plus added fields)."""
        return metrics_window.to_json(
            self.metrics, self.stale_after, self.health, self._costs_block()
        )

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
    compare: bool = False,
    memo: SnapshotMemo | None = None,
    lifetime: bool = True,
) -> MetricsReport:
    """The metrics response for the `period` ending at `at` (optionally one
    endpoint, with `top` busiest keys). With `latest`, a window past the
    newest data slides back to it and is marked stale (the last good
    numbers; pass False for a reproducible `--at`). `costs` None includes
    the costs block only for the whole store (no endpoint); True or False
    forces it. With `compare`, the report also holds the previous period of
    the same length (`Previous`), for `kpi_deltas`. A `memo` of the snapshot
    `con` reads keeps the window's figures for the next report
    (`metrics.memo`; the API's). Without `lifetime`, the lifetime request
    counter is not read (`metrics.window.compute`): a report only rendered
    as JSON never shows it."""
    return build_window(
        con,
        cfg,
        Window.ending(at, period.length),
        period.value,
        at,
        endpoint,
        top,
        latest=latest,
        costs=costs,
        compare=compare,
        memo=memo,
        lifetime=lifetime,
    )


def build_window(
    con: duckdb.DuckDBPyConnection,
    cfg: Config,
    window: Window,
    label: str,
    at: datetime,
    endpoint: str | None = None,
    top: int = 10,
    latest: bool = True,
    costs: bool | None = None,
    compare: bool = False,
    memo: SnapshotMemo | None = None,
    lifetime: bool = True,
) -> MetricsReport:
    """`build` for any window (the dashboard's custom from–to), `label`
    naming it in the report (`period`). The metrics are as of the window's
    end; the alert health as of `at` (a past range still shows the health
    now, which is what the on-call engineer must see)."""
    # The store's span, all of it and before the window's end, read once
    # for the metrics and the three windows the costs measure.
    spans = data_spans(con, window.end, through(memo, "extent", lambda: extent(con)))
    m = metrics_window.compute(
        con, window, label, endpoint, top, latest=latest, spans=spans, memo=memo, lifetime=lifetime
    )
    rules = alerts_rules.effective_rules(cfg.alerts)
    state = alerts_health.health(con, max(at, m.at), cfg.alerts.evaluate_every, rules, memo)
    with_costs = endpoint is None if costs is None else costs
    block = None
    if with_costs:
        daily = through(
            memo,
            ("daily_rate", m.window),
            lambda: usage.daily_rate(con, m.window, cfg, days_of(m.window, spans.all)[0]),
        )
        # The forecast measures windows ending at `m.at`: kept only while
        # no data is dated after it (`Spans.settled`, `usage.measure`).
        settled = memo if spans.settled and m.at == window.end else None
        block = usage.window_costs(con, m.window, m.at, cfg, spans.all, daily, settled)
    before = _previous(con, cfg, m, with_costs) if compare else None
    return MetricsReport(m, state, block, cfg.metrics.stale_after, before)


def _previous(
    con: duckdb.DuckDBPyConnection, cfg: Config, m: metrics_window.Metrics, with_costs: bool
) -> Previous:
    window = m.window.previous()
    try:
        prev = metrics_window.compute(con, window, m.period, m.endpoint, top=0)
    except CachemonError:  # nothing to compare with (no data then, or compacted away)
        prev = None
    # Only the daily rate: the forecast is the current window's alone.
    cost = (
        usage.daily_rate(con, window, cfg).list_total if with_costs and prev is not None else None
    )
    return Previous(prev, cost, trends.coverage(con, window), window)
