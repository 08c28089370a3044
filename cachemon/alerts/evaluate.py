"""The alert monitor: evaluate the rules against the store, keep each rule
instance's state, decide notifications, and answer "how healthy is it?".

`check` is one evaluation (the runner calls it every 15 minutes): it reads
the rules' observations, steps every instance through the lifecycle
(`cachemon.alerts.lifecycle`), decides per channel what to send, and writes
states, history and the outbox in one transaction, so a crash leaves either
all of an evaluation or none of it. Sending is `notify.outbox.delivery_round`'s job;
silences are `cachemon.alerts.silences`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import duckdb

from cachemon.alerts import lifecycle, notices, readings
from cachemon.alerts.anomaly import history_ends, robust_z
from cachemon.alerts.rules import METRICS, Kind, Rule, effective_rules, format_value
from cachemon.alerts.silences import active_silences
from cachemon.clock import MINUTE, Window, floor_to, format_duration, iso
from cachemon.errors import CachemonError, InputError
from cachemon.metrics import window as metrics_window
from cachemon.metrics.series import Observation, observe
from cachemon.notify import outbox as notify_outbox
from cachemon.notify.transports import Transports
from cachemon.settings import Config
from cachemon.store.connection import transaction
from cachemon.store.queries import data_span

log = logging.getLogger("cachemon.alerts")

LOAD_GROUPS = "SELECT channel, members, sent_at FROM notify_groups"
LAST_EVALUATION = "SELECT max(evaluated_at) FROM alert_evaluations WHERE evaluated_at <= $at"
STATE_COLUMNS = (
    "rule",
    "endpoint",
    "type",
    "severity",
    "state",
    "since",
    "evaluated_at",
    "value",
    "threshold",
    "message",
    "pending_since",
    "firing_since",
    "last_breach",
    "clear_since",
)
LOAD_STATES = f"SELECT {', '.join(STATE_COLUMNS)} FROM alert_state"
UPSERT_GROUP = "INSERT OR REPLACE INTO notify_groups VALUES (?, ?, ?)"


@dataclass(frozen=True)
class Evaluation:
    at: datetime
    data_until: datetime | None
    states: tuple[lifecycle.InstanceState, ...]
    changed: tuple[
        tuple[str, lifecycle.InstanceState], ...
    ]  # (previous state, new) for transitions
    notices: tuple[lifecycle.Notice, ...]
    groups: tuple[lifecycle.Group, ...]


class Observer:
    """Observations by (window end, length, endpoint), fetched in batches
    and cached, so a backfill of a week queries each series once."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con = con
        self.cache: dict[tuple, Observation] = {}

    def get(
        self, ends: list[datetime], length: timedelta, endpoint: str | None
    ) -> list[Observation]:
        missing = sorted({e for e in ends if (e, length, endpoint) not in self.cache})
        if missing:
            for e, o in zip(
                missing, observe(self.con, [e - length for e in missing], length, endpoint)
            ):
                self.cache[(e, length, endpoint)] = o
        return [self.cache[(e, length, endpoint)] for e in ends]


def evaluate(
    observer: Observer,
    rules: tuple[Rule, ...],
    at: datetime,
    prev: dict[tuple[str, str], lifecycle.InstanceState],
    stale_after: timedelta,
    data_until: datetime | None,
) -> tuple[list[lifecycle.InstanceState], list[tuple[str, lifecycle.InstanceState]]]:
    """Every rule instance's new state at `at`, and the transitions."""
    states, changed = [], []
    for rule in rules:
        for endpoint in rule.endpoints or ("",):
            outcome = _outcome(observer, rule, endpoint, at, stale_after, data_until)
            old = prev.get((rule.name, endpoint))
            new = lifecycle.step(
                old, rule, endpoint, outcome, at, _message(rule, endpoint, outcome)
            )
            states.append(new)
            before = old.state if old else "new"
            if before != new.state:
                changed.append((before, new))
    return states, changed


def _outcome(observer, rule: Rule, endpoint: str, at, stale_after, data_until) -> lifecycle.Outcome:
    if data_until is None:
        return lifecycle.Outcome(lifecycle.Verdict.NO_DATA, reason="the store has no data")
    if rule.metric == "data_age":
        age = _age(at, data_until)
        return lifecycle.Outcome(
            lifecycle.Verdict.BREACH if rule.breached(age) else lifecycle.Verdict.CLEAR, age
        )
    if at - data_until > stale_after:
        return lifecycle.Outcome(
            lifecycle.Verdict.NO_DATA, reason=f"data is stale: newest data at {iso(data_until)}"
        )
    end = readings.window_end(at, data_until)
    try:
        current, value = _read(observer, rule, endpoint, end)
        if METRICS[rule.metric].per_request and current.requests < rule.min_requests:
            return lifecycle.Outcome(
                lifecycle.Verdict.NO_DATA,
                value,
                f"{current.requests:,.0f} requests in the window, below min_requests {rule.min_requests:,.0f}",
            )
        if value is None:
            return lifecycle.Outcome(
                lifecycle.Verdict.NO_DATA, reason=f"no {rule.metric} reading in the window"
            )
        if rule.kind == Kind.ANOMALY:
            return _anomaly(observer, rule, endpoint, end, value)
    except (duckdb.Error, CachemonError) as exc:
        return lifecycle.Outcome(
            lifecycle.Verdict.ERROR, reason=f"query failed: {str(exc).splitlines()[0]}"
        )
    return lifecycle.Outcome(
        lifecycle.Verdict.BREACH if rule.breached(value) else lifecycle.Verdict.CLEAR, value
    )


def _read(observer, rule: Rule, endpoint: str, end: datetime):
    """The rule's observation over its window ending at `end`, and its
    metric's value there: the one reading behind states, banners and email."""
    current = observer.get([end], rule.window, endpoint or None)[0]
    return current, METRICS[rule.metric].read(current)


def current_values(
    con: duckdb.DuckDBPyConnection,
    observer: Observer,
    rules: tuple[Rule, ...],
    instances,
    at: datetime,
    data_until: datetime | None,
) -> dict[tuple[str, str], readings.AlertValues]:
    """For each active instance (rule name, endpoint, firing since) of a
    rule in `rules`, its value when it fired and its value as of `at`, each
    labelled with its window. Instances of rules no longer configured are
    left out (their window is not known)."""
    by_name = {r.name: r for r in rules}
    out = {}
    for name, endpoint, since in instances:
        rule = by_name.get(name)
        if rule is None:
            continue
        now = None
        if data_until is not None:
            if rule.metric == "data_age":
                value = _age(at, data_until)
            else:
                try:
                    value = _read(observer, rule, endpoint, readings.window_end(at, data_until))[1]
                except (duckdb.Error, CachemonError):
                    value = None  # shown as n/a: the evaluation reports the failure
            now = readings.reading(rule, value, at, data_until)
        was = readings.fired(con, rule, endpoint, since)
        if was is None and since == at:
            was = now  # fired in this very evaluation, not recorded yet
        out[(name, endpoint)] = readings.AlertValues(readings.describe(rule, endpoint), was, now)
    return out


def _age(at: datetime, data_until: datetime) -> float:
    return max(0.0, (at - data_until).total_seconds())


def _anomaly(observer, rule: Rule, endpoint: str, end: datetime, value: float) -> lifecycle.Outcome:
    ends = history_ends(end, rule.weeks)
    past = observer.get([e for _, e in ends], rule.window, endpoint or None)
    usable = [
        (w, METRICS[rule.metric].read(o))
        for (w, _), o in zip(ends, past)
        if o.requests >= rule.min_requests
    ]
    weeks = len({w for w, v in usable if v is not None})
    if weeks < rule.min_weeks:
        return lifecycle.Outcome(
            lifecycle.Verdict.NO_DATA,
            value,
            f"needs {rule.min_weeks} weeks of history at this time of week, has {weeks}",
        )
    z = robust_z(value, [v for _, v in usable])
    if z is None:
        return lifecycle.Outcome(
            lifecycle.Verdict.NO_DATA, value, "history has no spread to compare with"
        )
    return lifecycle.Outcome(
        lifecycle.Verdict.BREACH if rule.breached(z) else lifecycle.Verdict.CLEAR,
        value,
        f"robust z = {z:+.1f}",
    )


def _message(rule: Rule, endpoint: str, o: lifecycle.Outcome) -> str:
    where = f" ({endpoint})" if endpoint else ""
    # The window is part of the figure: "p99 over 15m" is not the dashboard's p99 over 1h.
    over = f" over {format_duration(rule.window)}" if METRICS[rule.metric].windowed else ""
    label = METRICS[rule.metric].label + where + over
    if o.kind in (lifecycle.Verdict.NO_DATA, lifecycle.Verdict.ERROR):
        failed = "no data" if o.kind == lifecycle.Verdict.NO_DATA else "evaluation failed"
        return f"{label}: {failed}: {o.reason}"
    shown = format_value(o.value, rule.unit)
    if rule.kind == Kind.ANOMALY:
        return f"{label} is unusual for this time of week: {shown} ({o.reason})"
    limit = format_value(rule.threshold, rule.unit)
    if o.kind == lifecycle.Verdict.CLEAR:
        return f"{label} {shown} (threshold {rule.op} {limit})"
    verb = "above" if rule.op.startswith(">") else "below"
    return f"{label} {verb} threshold: {shown} (threshold {limit})"


def check(
    con: duckdb.DuckDBPyConnection,
    cfg: Config,
    at: datetime,
    channels: tuple[str, ...] = (),
    notify: bool = True,
    observer: Observer | None = None,
) -> Evaluation:
    """Evaluate every rule at `at` (nothing written: see `record`).
    `channels` are those configured; `notify=False` (a backfill) decides
    no notifications."""
    last = last_evaluation(con, None)
    if last is not None and at <= last:
        why = (
            "was already evaluated"
            if at == last
            else f"is before the last evaluation {iso(last)} (did the clock go back?)"
        )
        raise InputError(
            f"evaluation time {iso(at)} {why}; evaluations move forward only, nothing was changed"
        )
    span = data_span(con, at)  # data dated after `at` must not hide stale data
    prev = load_states(con)
    rules = effective_rules(cfg.alerts)
    states, changed = evaluate(
        observer or Observer(con),
        rules,
        at,
        prev,
        cfg.metrics.stale_after,
        span[1] if span else None,
    )
    notices, groups = [], []
    if notify:
        notices, groups = _decide(con, cfg, rules, states, changed, at, channels)
    return Evaluation(
        at, span[1] if span else None, tuple(states), tuple(changed), tuple(notices), tuple(groups)
    )


def _decide(
    con: duckdb.DuckDBPyConnection,
    cfg: Config,
    rules: tuple[Rule, ...],
    states,
    changed,
    at,
    channels,
):
    routes = {r.name: set(r.channels or channels) for r in rules}
    live = lifecycle.notifiable(states, active_silences(con, at), at)
    resolved_now = [s for before, s in changed if s.state == lifecycle.State.RESOLVED]
    groups_before = load_groups(con)
    notices, groups = [], []
    for channel in channels:
        routed = [s for s in live if channel in routes.get(s.rule, ())]
        resolved = [s for s in resolved_now if channel in routes.get(s.rule, ())]
        notice, group = lifecycle.decide(
            channel,
            routed,
            resolved,
            groups_before.get(channel),
            at,
            cfg.alerts.repeat_interval,
            cfg.alerts.send_resolved,
        )
        groups.append(group)
        if notice:
            notices.append(notice)
    return notices, groups


def record(con: duckdb.DuckDBPyConnection, ev: Evaluation, outbox: list | None = None) -> None:
    """Write an evaluation (states, transitions, groups, and the rendered
    notifications `outbox`) in one transaction."""
    _write(
        con,
        ev.states,
        ev.changed,
        [_evaluation_row(ev.at, ev.data_until, ev.states, len(outbox or []), False)],
        ev.groups,
        outbox or [],
    )


def _evaluation_row(at, data_until, states, notifications: int, backfill: bool) -> dict:
    firing = sum(1 for s in states if s.state == lifecycle.State.FIRING)
    return {
        "evaluated_at": at,
        "data_until": data_until,
        "instances": len(states),
        "firing": firing,
        "notifications": notifications,
        "backfill": backfill,
    }


def _write(
    con: duckdb.DuckDBPyConnection, states, changed, evaluations: list[dict], groups, outbox
) -> None:
    history = [
        {
            "changed_at": s.since,
            "rule": s.rule,
            "endpoint": s.endpoint,
            "type": s.type,
            "severity": s.severity,
            "from_state": before,
            "to_state": s.state,
            "value": s.value,
            "threshold": s.threshold,
            "message": s.message,
            "firing_since": s.firing_since,
        }
        for before, s in changed
    ]
    with transaction(con):
        con.execute("DELETE FROM alert_state")
        _append(con, "alert_state", [{c: getattr(s, c) for c in STATE_COLUMNS} for s in states])
        _append(con, "alert_history", history)
        _append(con, "alert_evaluations", evaluations)
        for g in groups:
            con.execute(UPSERT_GROUP, [g.channel, ",".join(g.members), g.sent_at])
        for row in outbox:
            notify_outbox.enqueue(con, row)


# Fixed table names only; the rows go through Arrow, not SQL text
# (DuckDB's executemany costs ~10 ms a call, a backfill makes thousands).
_APPEND = {
    t: f"INSERT INTO {t} BY NAME SELECT * FROM _rows"
    for t in ("alert_state", "alert_history", "alert_evaluations")
}


def _append(con: duckdb.DuckDBPyConnection, table: str, rows: list[dict]) -> None:
    import pyarrow as pa  # here: `metrics` and the API read alerts without pyarrow

    if not rows:
        return
    con.register("_rows", pa.Table.from_pylist(rows))
    try:
        con.execute(_APPEND[table])
    finally:
        con.unregister("_rows")


def backfill(con: duckdb.DuckDBPyConnection, cfg: Config, start: datetime, end: datetime) -> int:
    """Evaluate every slot in (start, end] without notifying, so history and
    health cover data loaded in bulk (a demo, an import); one query per
    series and one write. Returns the number of slots evaluated."""
    every = cfg.alerts.evaluate_every
    last = last_evaluation(con, None)
    t = floor_to(max(start, last) if last else start, every) + every
    slots = []
    while t <= end:
        slots.append(t)
        t += every
    if not slots:
        return 0
    rules, span = effective_rules(cfg.alerts), data_span(con, end)
    observer = Observer(con)
    for rule in rules:
        for endpoint in rule.endpoints or ("",):
            ends = list(slots)
            if rule.kind == Kind.ANOMALY:
                ends += [e for t in slots for _, e in history_ends(t, rule.weeks)]
            observer.get(ends, rule.window, endpoint or None)
    prev, changed, evaluations = load_states(con), [], []
    for t in slots:
        states, moved = evaluate(
            observer, rules, t, prev, cfg.metrics.stale_after, span[1] if span else None
        )
        prev = {s.key: s for s in states}
        changed += moved
        evaluations.append(_evaluation_row(t, span[1] if span else None, states, 0, True))
    _write(con, list(prev.values()), changed, evaluations, [], [])
    return len(slots)


def reset(con: duckdb.DuckDBPyConnection) -> None:
    """Forget alert states, history, evaluations and dedup groups (the data
    they describe was replaced). Notifications and silences stay: they are
    records of what people were told and decided."""
    for table in ("alert_state", "alert_history", "alert_evaluations", "notify_groups"):
        con.execute(f"DELETE FROM {table}")  # fixed names, no user text


def load_states(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], lifecycle.InstanceState]:
    cur = con.execute(LOAD_STATES)
    names = [d[0] for d in cur.description]
    out = {}
    for r in cur.fetchall():
        s = lifecycle.InstanceState(**dict(zip(names, r)))
        out[s.key] = replace(s, state=lifecycle.State(s.state))  # the store holds its value
    return out


def load_groups(con: duckdb.DuckDBPyConnection) -> dict[str, lifecycle.Group]:
    return {
        c: lifecycle.Group(c, tuple(m.split(",")) if m else (), t)
        for c, m, t in con.execute(LOAD_GROUPS).fetchall()
    }


def last_evaluation(con: duckdb.DuckDBPyConnection, at: datetime | None) -> datetime | None:
    if at is None:
        return con.execute("SELECT max(evaluated_at) FROM alert_evaluations").fetchall()[0][0]
    return con.execute(LAST_EVALUATION, {"at": at}).fetchall()[0][0]


def _context(con: duckdb.DuckDBPyConnection, at: datetime, stale_after: timedelta) -> dict | None:
    """The last 15 minutes' figures for a notification (None without data)."""
    try:
        m = metrics_window.compute(
            con, Window.ending(at, timedelta(minutes=15)), "15m", top=5, latest=True
        )
    except CachemonError:
        return None
    return metrics_window.to_json(m, stale_after)


@dataclass(frozen=True)
class CheckResult:
    """One evaluation, what it queued and how its delivery went."""

    evaluation: Evaluation
    outbox: tuple[notify_outbox.OutboxRow, ...]
    flush: notify_outbox.Flush  # notify.NOTHING for a dry run

    @property
    def deliveries(self) -> tuple[notify_outbox.Delivery, ...]:
        """Every delivery attempted after the evaluation (earlier notifications' too)."""
        return self.flush.deliveries


def due(con: duckdb.DuckDBPyConnection, at: datetime) -> bool:
    """Whether `at` (floored to the minute) is after the last evaluation."""
    last = last_evaluation(con, None)
    return last is None or floor_to(at, MINUTE) > last


def run(
    con: duckdb.DuckDBPyConnection,
    cfg: Config,
    at: datetime,
    transports: Transports,
    dry_run: bool = False,
) -> CheckResult:
    """One evaluation with its notifications: decide, render, and (unless
    `dry_run`) record it all in one transaction and deliver the outbox."""
    at = floor_to(at, MINUTE)
    observer = Observer(con)
    ev = check(con, cfg, at, transports.channels(cfg.notify), observer=observer)
    ctx = _context(con, at, cfg.metrics.stale_after) if ev.notices else None
    values = (
        current_values(
            con,
            observer,
            effective_rules(cfg.alerts),
            {(s.rule, s.endpoint, s.firing_since) for n in ev.notices for s in n.firing},
            at,
            ev.data_until,
        )
        if ev.notices
        else {}
    )
    rows = tuple(notices.render(n, ctx, cfg.notify, transports, values) for n in ev.notices)
    if dry_run:
        return CheckResult(ev, rows, notify_outbox.NOTHING)
    with notify_outbox.delivery_round(con, cfg.notify, transports, at) as sent:
        record(con, ev, list(rows))
    return CheckResult(ev, rows, sent.flush)
