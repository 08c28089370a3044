"""The alert lifecycle, as pure functions: one rule instance's state after an
evaluation, and what each notification channel should be told.

States: ok, pending (breached, `for` not yet held), firing, resolved (was
firing, now clear; back to ok at the next clear evaluation), no_data (too
little traffic, stale data, not enough history) and error (the query
failed). No-data and error never resolve an alert: an instance that was
firing keeps `firing_since` through them, so the notification set does not
change until the rule is evaluated clear again.

Notification decisions follow the seed's deduplication, per channel: the
group key is the sorted set of active alerts; a new member, or a resolved
one (resolve notices on by default), notifies at once; the same set repeats
after `repeat_interval` (4 h) while one of them is confirmed firing. Silenced and inhibited alerts (a warning whose
type and endpoint also fire as critical) are left out of the set.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from cachemon.alerts.rules import Rule
from cachemon.severity import Severity, severity_rank


class State(StrEnum):
    """An instance's lifecycle state; the value is what the store holds."""

    OK = "ok"
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"
    NO_DATA = "no_data"
    ERROR = "error"


class Verdict(StrEnum):
    """What one evaluation found: no data and a failed query are states too."""

    BREACH = "breach"
    CLEAR = "clear"
    NO_DATA = State.NO_DATA.value
    ERROR = State.ERROR.value


class Reason(StrEnum):
    """Why a channel is told now."""

    NEW = "new"
    REPEAT = "repeat"
    RESOLVED = "resolved"


@dataclass(frozen=True)
class Outcome:
    """What one evaluation found for an instance."""

    kind: Verdict
    value: float | None = None
    reason: str = ""  # why no_data / error


@dataclass(frozen=True)
class InstanceState:
    """A rule instance (rule × endpoint; endpoint "" = all traffic)."""

    rule: str
    endpoint: str
    type: str
    severity: str
    state: State
    since: datetime  # when this state was entered
    evaluated_at: datetime
    value: float | None = None
    threshold: float | None = None
    message: str = ""
    pending_since: datetime | None = None
    firing_since: datetime | None = None
    last_breach: datetime | None = None
    clear_since: datetime | None = None  # first clear evaluation while held by keep_firing_for

    @property
    def key(self) -> tuple[str, str]:
        return (self.rule, self.endpoint)

    @property
    def active(self) -> bool:
        """Firing, or firing when data went missing (not resolved by it)."""
        return self.firing_since is not None

    @property
    def member(self) -> str:
        """Its name in a notification group: severity, type and endpoint."""
        return f"{self.severity}:{self.type}" + (f"[{self.endpoint}]" if self.endpoint else "")


def step(
    prev: InstanceState | None,
    rule: Rule,
    endpoint: str,
    outcome: Outcome,
    at: datetime,
    message: str,
) -> InstanceState:
    """The instance's state after evaluating `outcome` at `at`."""
    base = prev or InstanceState(
        rule.name, endpoint, rule.alert_type, rule.severity, State.OK, at, at
    )
    common = dict(
        evaluated_at=at,
        value=outcome.value,
        type=rule.alert_type,
        severity=rule.severity,
        threshold=rule.threshold,
        message=message,
    )
    if outcome.kind in (Verdict.NO_DATA, Verdict.ERROR):
        return _enter(base, State(outcome.kind), at, pending_since=None, **common)
    if outcome.kind == Verdict.BREACH:
        if base.active:
            return _enter(base, State.FIRING, at, last_breach=at, clear_since=None, **common)
        started = base.pending_since if base.state == State.PENDING and base.pending_since else at
        if at - started >= rule.for_:
            return _enter(
                base,
                State.FIRING,
                at,
                pending_since=None,
                firing_since=at,
                last_breach=at,
                clear_since=None,
                **common,
            )
        return _enter(base, State.PENDING, at, pending_since=started, last_breach=at, **common)
    if base.active:
        # As Prometheus: keep firing until `keep_firing_for` has passed since
        # the first evaluation that found the condition clear.
        cleared = base.clear_since or at
        if at - cleared < rule.keep_firing_for:
            return _enter(base, State.FIRING, at, clear_since=cleared, **common)
        return _enter(
            base,
            State.RESOLVED,
            at,
            firing_since=None,
            pending_since=None,
            clear_since=None,
            **common,
        )
    return _enter(base, State.OK, at, pending_since=None, **common)


def _enter(base: InstanceState, state: State, at: datetime, **changes) -> InstanceState:
    since = base.since if base.state == state else at
    return replace(base, state=state, since=since, **changes)


@dataclass(frozen=True)
class Silence:
    id: int
    matcher: str  # an alert type or a rule name
    endpoint: str  # "" matches every endpoint
    starts_at: datetime
    ends_at: datetime
    reason: str
    created_by: str = ""

    def mutes(self, s: InstanceState, at: datetime) -> bool:
        return (
            self.starts_at <= at < self.ends_at
            and self.matcher in (s.type, s.rule)
            and self.endpoint in ("", s.endpoint)
        )


@dataclass(frozen=True)
class Group:
    """A channel's last notified set (the dedup state)."""

    channel: str
    members: tuple[str, ...]
    sent_at: datetime | None


@dataclass(frozen=True)
class Notice:
    """A decision to tell a channel about its active and resolved alerts."""

    channel: str
    reason: Reason
    firing: tuple[InstanceState, ...]
    resolved: tuple[InstanceState, ...]
    at: datetime

    @property
    def kind(self) -> str:
        return "firing" if self.firing else "resolved"


def notifiable(
    states: list[InstanceState], silences: list[Silence], at: datetime
) -> list[InstanceState]:
    """Active instances that may notify: not silenced, not inhibited."""
    critical = {
        (s.type, s.endpoint) for s in states if s.active and s.severity == Severity.CRITICAL
    }
    return [
        s
        for s in states
        if s.active
        and not any(x.mutes(s, at) for x in silences)
        and not (s.severity != Severity.CRITICAL and (s.type, s.endpoint) in critical)
    ]


def decide(
    channel: str,
    routed: list[InstanceState],
    resolved_now: list[InstanceState],
    prev: Group | None,
    at: datetime,
    repeat: timedelta,
    send_resolved: bool = True,
) -> tuple[Notice | None, Group]:
    """Whether `channel` is told now, and its new dedup state. `routed` are
    the notifiable active instances routed to it; `resolved_now` the
    instances that resolved in this evaluation."""
    members = tuple(sorted({s.member for s in routed}))
    before = set(prev.members) if prev else set()
    resolved = tuple(s for s in resolved_now if s.member in before and s.member not in members)
    firing = tuple(sorted(routed, key=_order))
    reason = None
    if set(members) - before:
        reason = Reason.NEW
    elif resolved and send_resolved:
        reason = Reason.RESOLVED
    elif (
        any(s.state == State.FIRING for s in routed)
        and prev
        and prev.sent_at
        and at - prev.sent_at >= repeat
    ):
        # Only a confirmed breach repeats: "still firing" is not news when
        # the data has gone missing (no_data keeps the alert active, quietly).
        reason = Reason.REPEAT
    if reason is None:
        return None, Group(channel, members, prev.sent_at if prev else None)
    return Notice(channel, reason, firing, resolved, at), Group(channel, members, at)


def _order(s: InstanceState):
    return (severity_rank(s.severity), s.type, s.endpoint)
