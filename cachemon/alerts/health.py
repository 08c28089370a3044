"""Reading the alert record: the health block, state-change history and
the periods alerts were active (timelines, incident markers), and all of it
at once for the dashboard's Alerts page (`record_over` a window, for one
endpoint or all; `record` for the last days)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb

from cachemon.alerts import evaluate as alerts_evaluate
from cachemon.alerts import lifecycle
from cachemon.alerts.readings import AlertValues
from cachemon.alerts.rules import Rule
from cachemon.alerts.silences import active_silences
from cachemon.clock import Window, iso
from cachemon.metrics.memo import SnapshotMemo
from cachemon.notify import outbox
from cachemon.severity import HealthStatus, Severity, severity_rank
from cachemon.store.connection import first_row
from cachemon.store.queries import data_span

# The state of each instance as of an instant: its last transition.
STATES_AT = """
SELECT rule, endpoint, arg_max(type, changed_at), arg_max(severity, changed_at), arg_max(to_state, changed_at),
       max(changed_at), arg_max(message, changed_at), arg_max_null(firing_since, changed_at)
FROM alert_history WHERE changed_at <= $at GROUP BY rule, endpoint
"""
HISTORY = """
SELECT changed_at AS at, rule, endpoint, type, severity, from_state, to_state, value, threshold, message
FROM alert_history WHERE changed_at >= $since AND changed_at <= $until
  AND ($endpoint IS NULL OR endpoint IN ($endpoint, ''))
ORDER BY changed_at DESC, rule, endpoint LIMIT $limit
"""
# The newest evaluation and state change: the record as of any later instant is all of it.
ALERT_EXTENT = """
SELECT (SELECT max(evaluated_at) FROM alert_evaluations), (SELECT max(changed_at) FROM alert_history)
"""
# The most rows of history and notifications the Alerts page lists (it says when it is cut).
LIMIT = 200


@dataclass(frozen=True)
class Issue:
    severity: Severity
    message: str
    since: datetime
    # A firing alert's value when it fired and now, each with its window
    # (None for other issues, or a rule no longer configured).
    values: AlertValues | None = None
    endpoint: str = ""  # a firing alert's endpoint ("" store-wide), for a link to its charts

    @property
    def text(self) -> str:
        """What a banner shows: the labelled values when known, else the message."""
        return self.values.text() if self.values is not None else self.message

    def to_json(self) -> dict:
        out = {"severity": self.severity, "message": self.message, "since": iso(self.since)}
        if self.values is not None:
            out["values"] = self.values.to_json()
        return out


@dataclass(frozen=True)
class Health:
    status: HealthStatus
    issues: tuple[Issue, ...]
    evaluated_at: datetime | None
    firing: tuple[tuple[str, int], ...] = ()  # active alerts by severity

    def to_json(self) -> dict:
        return {
            "status": self.status,
            "evaluatedAt": iso(self.evaluated_at) if self.evaluated_at else None,
            "issues": [i.to_json() for i in self.issues],
        }


def health(
    con: duckdb.DuckDBPyConnection,
    at: datetime,
    evaluate_every: timedelta,
    rules: tuple[Rule, ...] = (),
    memo: SnapshotMemo | None = None,
) -> Health:
    """The seed's health block, from the alert states as of `at`: critical
    when a critical alert fires, degraded for a warning, a failed
    evaluation or overdue evaluations; no-data instances are listed as info.
    With the effective `rules`, each firing alert of one of them carries
    its value when it fired and its value as of `at`, each labelled with
    the rule's window (`Issue.values`). A `memo` of the snapshot `con`
    reads keeps the alert record while `at` is after all of it."""
    last, rows = _record(con, at, memo)
    issues = []
    if last is None:
        issues.append(Issue(Severity.WARNING, "alert rules have not been evaluated yet", at))
    elif at - last > 2 * evaluate_every:
        overdue = f"alert evaluation is overdue: last run {iso(last)}"
        issues.append(Issue(Severity.WARNING, overdue, last))
    critical = {(r[2], r[1]) for r in rows if r[7] is not None and r[3] == Severity.CRITICAL}
    # Firing alerts, less a warning inhibited by the critical alert of the same type.
    active = [
        r
        for r in rows
        if r[7] is not None and not (r[3] != Severity.CRITICAL and (r[2], r[1]) in critical)
    ]
    values = _values(con, rules, active, at)
    firing: dict[str, int] = {}
    for rule, endpoint, _type, severity, _state, _since, message, firing_since in active:
        firing[severity] = firing.get(severity, 0) + 1
        issues.append(
            Issue(
                Severity(severity),
                message,
                firing_since,
                values.get((rule, endpoint)),
                "" if endpoint in ("", "*") else endpoint,
            )
        )
    for _rule, _endpoint, _type, _severity, state, since, message, firing_since in rows:
        if firing_since is not None:
            continue  # active (above) or inhibited
        if state == lifecycle.State.ERROR:
            issues.append(Issue(Severity.WARNING, message, since))
        elif state == lifecycle.State.NO_DATA:
            issues.append(Issue(Severity.INFO, message, since))
    issues.sort(key=lambda i: (severity_rank(i.severity), i.since))
    status = HealthStatus.of({i.severity for i in issues})
    return Health(status, tuple(issues), last, tuple(sorted(firing.items())))


def _record(con: duckdb.DuckDBPyConnection, at: datetime, memo: SnapshotMemo | None):
    """The last evaluation as of `at` and each instance's state then
    (STATES_AT's rows)."""
    if memo is not None:
        evaluated, changed = memo.get("alert_extent", lambda: first_row(con, ALERT_EXTENT))
        if (evaluated is None or evaluated <= at) and (changed is None or changed <= at):
            # Nothing after `at`: the record as of `at` is the whole record,
            # the same for every such instant.
            return memo.get(
                "alert_record",
                lambda: (evaluated, con.execute(STATES_AT, {"at": changed or at}).fetchall()),
            )
    return alerts_evaluate.last_evaluation(con, at), con.execute(STATES_AT, {"at": at}).fetchall()


def _values(con: duckdb.DuckDBPyConnection, rules: tuple[Rule, ...], active, at: datetime):
    if not rules or not active:
        return {}
    span = data_span(con, at)
    return alerts_evaluate.current_values(
        con,
        alerts_evaluate.Observer(con),
        rules,
        [(r[0], r[1], r[7]) for r in active],
        at,
        span[1] if span else None,
    )


def history(
    con: duckdb.DuckDBPyConnection,
    since: datetime,
    until: datetime,
    limit: int = LIMIT,
    endpoint: str | None = None,
) -> list[dict]:
    """State changes from `since` to `until` (both included), newest first;
    with an `endpoint`, only its instances and the store-wide ones."""
    params = {"since": since, "until": until, "limit": limit, "endpoint": endpoint}
    cur = con.execute(HISTORY, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


@dataclass(frozen=True)
class Period:
    """One stretch of an alert being active (firing, or held through no-data)."""

    rule: str
    endpoint: str
    type: str
    severity: str
    start: datetime
    end: datetime | None  # None: still active at `until`


PERIOD_CHANGES = """
SELECT changed_at, rule, endpoint, type, severity, to_state, firing_since
FROM alert_history WHERE changed_at <= $until AND (firing_since IS NOT NULL OR from_state IN ('firing', 'no_data', 'error'))
  AND ($endpoint IS NULL OR endpoint IN ($endpoint, ''))
ORDER BY rule, endpoint, changed_at
"""


def active_periods(
    con: duckdb.DuckDBPyConnection,
    since: datetime,
    until: datetime,
    endpoint: str | None = None,
) -> list[Period]:
    """Periods of active alerts overlapping [since, until], for timelines
    and incident markers (one still active at `until` has no end); with an
    `endpoint`, only its instances' and the store-wide ones."""
    out: list[Period] = []
    open_: dict[tuple, Period] = {}
    rows = con.execute(PERIOD_CHANGES, {"until": until, "endpoint": endpoint}).fetchall()
    for at, rule, endpoint, type_, severity, _, firing_since in rows:
        key = (rule, endpoint)
        if firing_since is not None and key not in open_:
            open_[key] = Period(rule, endpoint, type_, severity, firing_since, None)
        elif firing_since is None and key in open_:
            p = open_.pop(key)
            out.append(Period(p.rule, p.endpoint, p.type, p.severity, p.start, at))
    out += open_.values()
    return sorted((p for p in out if p.end is None or p.end >= since), key=lambda p: p.start)


def concerns(members: str, endpoint: str) -> bool:
    """Whether a notification is about an alert of `endpoint` or a
    store-wide one, from its `members` (comma-joined
    `InstanceState.member` names, `severity:type` with `[endpoint]` for an
    endpoint's instance). A doubt (an endpoint name holding a comma or a
    bracket) keeps the notification: a list may show one too many, never
    hide one."""
    for m in members.split(","):
        if "[" not in m and "]" not in m:
            return True  # a store-wide alert
        if m.endswith(f"[{endpoint}]") or not m.endswith("]") or m.count("[") != 1:
            return True
    return False


@dataclass(frozen=True)
class AlertRecord:
    """What the Alerts page shows: the health block, every rule instance
    and the silences in force as of now, and over the page's window the
    active periods, state changes and notifications (for one endpoint and
    the store-wide alerts, or all). `cut` names the lists that hit LIMIT
    (the newest LIMIT rows are listed)."""

    health: Health
    states: tuple[lifecycle.InstanceState, ...]
    periods: tuple[Period, ...]
    history: tuple[dict, ...]
    notifications: tuple[dict, ...]
    silences: tuple[lifecycle.Silence, ...]
    cut: frozenset[str] = frozenset()


def record_over(
    con: duckdb.DuckDBPyConnection,
    window: Window,
    at: datetime,
    evaluate_every: timedelta,
    rules: tuple[Rule, ...] = (),
    endpoint: str | None = None,
) -> AlertRecord:
    """The alert record as of `at`: health, instances and silences now;
    periods overlapping `window` (each with its real end, after the window's
    if so), state changes and notifications from its start to its end (both
    included). With an `endpoint`, its alerts and the store-wide ones."""
    lo, hi = window.start, window.end
    periods = [p for p in active_periods(con, lo, at, endpoint) if p.start <= hi]
    changes = history(con, lo, hi, LIMIT, endpoint)
    sent = outbox.outbox(con, lo, LIMIT, until=hi)
    cut = {"history"} if len(changes) == LIMIT else set()
    if len(sent) == LIMIT:
        cut.add("notifications")
    if endpoint is not None:
        sent = [n for n in sent if concerns(n["members"], endpoint)]
    return AlertRecord(
        health(con, at, evaluate_every, rules),
        tuple(alerts_evaluate.load_states(con).values()),
        tuple(periods),
        tuple(changes),
        tuple(sent),
        tuple(active_silences(con, at)),
        frozenset(cut),
    )


def record(
    con: duckdb.DuckDBPyConnection,
    at: datetime,
    evaluate_every: timedelta,
    days: int = 7,
    rules: tuple[Rule, ...] = (),
) -> AlertRecord:
    """The alert record as of `at`, looking back `days` days (with the
    effective `rules`, the health block's values labelled with their windows)."""
    return record_over(con, Window(at - timedelta(days=days), at), at, evaluate_every, rules)
