"""The enums of internal decisions: severities and health (one definition shared by
rules, health and exposition), rule fields, experiment schemes, run outcomes."""

import pytest

from cachemon import config
from cachemon.alerts import rules
from cachemon.errors import ConfigError
from cachemon.runner.runs import Outcome
from cachemon.severity import HealthStatus, Severity, severity_rank
from cachemon.tuning.experiments import Scheme, example_toml


def test_severities_are_ordered_most_severe_first():
    assert [s.value for s in Severity] == ["critical", "warning", "info"]
    assert sorted(["info", "critical", "warning"], key=severity_rank) == [
        "critical",
        "warning",
        "info",
    ]
    assert severity_rank("page-me") == len(Severity)  # unknown strings sort last


def test_health_status_is_the_worst_issue():
    assert HealthStatus.of(set()) == HealthStatus.HEALTHY
    assert HealthStatus.of({Severity.INFO}) == HealthStatus.HEALTHY
    assert HealthStatus.of({"info", "warning"}) == HealthStatus.DEGRADED
    assert HealthStatus.of({Severity.WARNING, Severity.CRITICAL}) == HealthStatus.CRITICAL
    assert [h.level for h in HealthStatus] == [0, 1, 2]


def test_parsed_rules_hold_enum_members_with_the_toml_strings():
    (rule,) = rules.parse_rules(
        "t.toml",
        [
            {
                "name": "drop",
                "metric": "combined_hit_rate",
                "severity": "critical",
                "kind": "anomaly",
                "direction": "both",
            },
            {"name": "slow", "metric": "p99_latency", "threshold": 9, "severity": "info"},
        ],
        builtin=False,
    )[:1]
    assert rule.severity is Severity.CRITICAL and rule.severity == "critical"
    assert rule.kind is rules.Kind.ANOMALY and rule.direction is rules.Direction.BOTH
    assert all(isinstance(r.op, rules.Op) for r in rules.BUILTIN)


def test_experiment_scheme_is_an_enum_and_an_unknown_one_is_refused(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(example_toml(scheme="sha256-u64"))
    (e,) = config.load(cfg, env={}).experiments
    assert e.scheme is Scheme.SHA256_U64
    cfg.write_text(example_toml(scheme="md5"))
    with pytest.raises(ConfigError, match="'md5': use sha256-u64 or seed-sha256-byte"):
        config.load(cfg, env={})


def test_run_outcomes_are_the_stored_strings():
    assert [o.value for o in Outcome] == ["ok", "error", "skipped", "scheduled"]
    assert Outcome("error") is Outcome.ERROR
