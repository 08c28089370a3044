"""The alert lifecycle and notification decisions, as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from cachemon.alerts import lifecycle
from cachemon.alerts.rules import Rule

T = datetime(2026, 11, 19, 9, 0, tzinfo=UTC)
STEP = timedelta(minutes=15)
RULE = Rule(
    "p99_latency",
    "p99_latency",
    500.0,
    "critical",
    for_=timedelta(minutes=30),
    keep_firing_for=timedelta(minutes=15),
)


def run(outcomes, rule=RULE):
    s, out = None, []
    for i, kind in enumerate(outcomes):
        s = lifecycle.step(
            s,
            rule,
            "",
            lifecycle.Outcome(kind, 600.0 if kind == lifecycle.Verdict.BREACH else 100.0),
            T + i * STEP,
            "m",
        )
        out.append(s)
    return out


def test_for_keeps_pending_then_fires_and_keep_firing_for_holds():
    B, C = lifecycle.Verdict.BREACH, lifecycle.Verdict.CLEAR
    states = [s.state for s in run([C, B, B, B, C, C, C])]
    # breach at +15m: pending; held 30m at +45m: firing; first clear held by keep_firing_for 15m.
    assert states == ["ok", "pending", "pending", "firing", "firing", "resolved", "ok"]
    fired = run([C, B, B, B])[-1]
    assert fired.firing_since == T + 3 * STEP and fired.since == T + 3 * STEP


def test_pending_resets_on_clear_and_on_missing_data():
    B, C, N = lifecycle.Verdict.BREACH, lifecycle.Verdict.CLEAR, lifecycle.Verdict.NO_DATA
    assert [s.state for s in run([B, B, C, B, B])] == [
        "pending",
        "pending",
        "ok",
        "pending",
        "pending",
    ]
    assert [s.state for s in run([B, N, B, B])] == ["pending", "no_data", "pending", "pending"]


def test_no_data_and_error_keep_a_firing_alert_active():
    B, C, N, E = (
        lifecycle.Verdict.BREACH,
        lifecycle.Verdict.CLEAR,
        lifecycle.Verdict.NO_DATA,
        lifecycle.Verdict.ERROR,
    )
    states = run([B, B, B, N, E, B, C, C])
    assert [s.state for s in states] == [
        "pending",
        "pending",
        "firing",
        "no_data",
        "error",
        "firing",
        "firing",
        "resolved",
    ]
    assert all(s.active for s in states[2:7]) and not states[-1].active


def _state(type_, severity, endpoint="", state=lifecycle.State.FIRING):
    return lifecycle.InstanceState(
        type_ + "_" + severity,
        endpoint,
        type_,
        severity,
        state,
        T,
        T,
        firing_since=T if state in (lifecycle.State.FIRING, lifecycle.State.NO_DATA) else None,
    )


def test_decide_new_changed_repeat_and_resolved():
    a, b = _state("miss_rate", "critical"), _state("p99_latency", "critical")
    n, g = lifecycle.decide("email", [a], [], None, T, timedelta(hours=4))
    assert n.reason == "new" and g.members == ("critical:miss_rate",)
    n2, g2 = lifecycle.decide(
        "email", [a], [], g, T + timedelta(hours=3, minutes=45), timedelta(hours=4)
    )
    assert n2 is None and g2.sent_at == T  # suppressed inside 4 h
    n3, g3 = lifecycle.decide(
        "email", [a, b], [], g2, T + timedelta(hours=3, minutes=50), timedelta(hours=4)
    )
    assert n3.reason == "new" and [s.type for s in n3.firing] == ["miss_rate", "p99_latency"]
    n4, _ = lifecycle.decide(
        "email", [a, b], [], g3, g3.sent_at + timedelta(hours=4), timedelta(hours=4)
    )
    assert n4.reason == "repeat"
    gone = lifecycle.InstanceState(b.rule, "", b.type, b.severity, lifecycle.State.RESOLVED, T, T)
    n5, g5 = lifecycle.decide("email", [a], [gone], g3, T + timedelta(hours=4), timedelta(hours=4))
    assert (
        n5.reason == "resolved" and n5.resolved == (gone,) and g5.members == ("critical:miss_rate",)
    )
    quiet, _ = lifecycle.decide(
        "email", [a], [gone], g3, T + timedelta(hours=4), timedelta(hours=4), send_resolved=False
    )
    assert quiet is None


def test_escalation_notifies_and_critical_inhibits_warning():
    warn, crit = _state("miss_rate", "warning"), _state("miss_rate", "critical")
    live = lifecycle.notifiable([warn, crit], [], T)
    assert live == [crit]
    _, g = lifecycle.decide("email", [warn], [], None, T, timedelta(hours=4))
    n, _ = lifecycle.decide("email", live, [], g, T + STEP, timedelta(hours=4))
    assert n.reason == "new"  # warning -> critical of the same type is news
    other = _state("miss_rate", "warning", endpoint="title")
    assert lifecycle.notifiable([other, crit], [], T) == [
        other,
        crit,
    ]  # another endpoint is not inhibited


def test_silences_match_type_or_rule_and_endpoint_within_their_time():
    s = _state("miss_rate", "critical", endpoint="title")
    sil = lifecycle.Silence(1, "miss_rate", "", T, T + timedelta(hours=2), "deploy")
    assert sil.mutes(s, T + STEP) and not sil.mutes(s, T + timedelta(hours=2))
    assert lifecycle.Silence(2, s.rule, "title", T, T + STEP, "x").mutes(s, T)
    assert not lifecycle.Silence(3, "miss_rate", "isbn", T, T + STEP, "x").mutes(s, T)
    assert lifecycle.notifiable([s], [sil], T) == []


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(list(lifecycle.Verdict)), min_size=1, max_size=40),
    st.integers(0, 4),
    st.integers(0, 3),
)
def test_lifecycle_invariants(outcomes, for_steps, keep_steps):
    rule = Rule(
        "r", "miss_rate", 10.0, "warning", for_=for_steps * STEP, keep_firing_for=keep_steps * STEP
    )
    states = run(outcomes, rule)
    prev = None
    for kind, s in zip(outcomes, states):
        assert (s.state == lifecycle.State.FIRING) <= s.active  # firing implies active
        if s.state == lifecycle.State.RESOLVED:
            assert prev is not None and prev.active and kind == lifecycle.Verdict.CLEAR
        if s.state == lifecycle.State.FIRING and (prev is None or not prev.active):
            # a new firing: the breach held through `for` with no gap
            start = s.since - rule.for_
            held = [o for o, t in zip(outcomes, states) if start <= t.evaluated_at <= s.since]
            assert all(o == lifecycle.Verdict.BREACH for o in held)
        if kind in (lifecycle.Verdict.NO_DATA, lifecycle.Verdict.ERROR):
            assert s.state == kind and s.active == (prev is not None and prev.active)
        assert s.since <= s.evaluated_at
        prev = s


def test_states_and_decisions_are_enums_with_the_stored_strings():
    """The store, the API and the dashboard read these strings: the enums keep them."""
    assert [s.value for s in lifecycle.State] == [
        "ok",
        "pending",
        "firing",
        "resolved",
        "no_data",
        "error",
    ]
    assert [v.value for v in lifecycle.Verdict] == ["breach", "clear", "no_data", "error"]
    assert [r.value for r in lifecycle.Reason] == ["new", "repeat", "resolved"]
    s = run([lifecycle.Verdict.BREACH, lifecycle.Verdict.BREACH, lifecycle.Verdict.BREACH])[-1]
    assert s.state is lifecycle.State.FIRING and s.state == "firing" and f"{s.state}" == "firing"
    n, _ = lifecycle.decide("email", [s], [], None, T, timedelta(hours=4))
    assert n.reason is lifecycle.Reason.NEW and n.reason == "new"
