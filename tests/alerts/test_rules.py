"""Alert rules: the seed's built-ins, TOML rules, and validation messages."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cachemon import config, settings
from cachemon.alerts.rules import BUILTIN, METRICS, effective_rules, format_value
from cachemon.errors import ConfigError


def _load(tmp_path, text: str):
    p = tmp_path / "rules.toml"
    p.write_text(text)
    return config.load(p, env={})


def test_builtins_are_the_seeds_thresholds():
    seed = {  # ALERT_THRESHOLDS of the design, as (metric, op, threshold, severity)
        ("miss_rate", ">", 15.0, "critical"),
        ("p99_latency", ">", 500.0, "critical"),
        ("error_rate", ">", 5.0, "critical"),
        ("queue_depth", ">", 1000.0, "critical"),
        ("miss_rate", ">", 10.0, "warning"),
        ("p95_latency", ">", 100.0, "warning"),
        ("edge_hit_rate", "<", 75.0, "warning"),
        ("kv_storage", ">", 1e9, "warning"),
    }
    assert seed <= {(r.metric, r.op, r.threshold, r.severity) for r in BUILTIN}
    assert {r.alert_type for r in BUILTIN if r.metric == "miss_rate"} == {"miss_rate"}
    rules = effective_rules(settings.Config().alerts)
    assert [r.name for r in rules] == [r.name for r in BUILTIN]
    assert all(r.min_requests is not None for r in rules)


def test_user_rules_override_disable_and_add(tmp_path):
    cfg = _load(
        tmp_path,
        """
[alerts]
min_requests = 50
disable = ["kv_storage"]
[[alerts.rules]]
name = "p99_latency"
metric = "p99_latency"
threshold = 800
severity = "critical"
for = "30m"
keep_firing_for = "15m"
[[alerts.rules]]
name = "title_misses"
metric = "miss_rate"
threshold = 12.5
severity = "warning"
window = "30m"
endpoints = ["title", "isbn"]
channels = ["slack"]
""",
    )
    rules = {r.name: r for r in effective_rules(cfg.alerts)}
    assert "kv_storage" not in rules and "queue_depth" in rules
    p99 = rules["p99_latency"]
    assert (p99.threshold, p99.for_, p99.keep_firing_for) == (
        800.0,
        timedelta(minutes=30),
        timedelta(minutes=15),
    )
    t = rules["title_misses"]
    assert (
        t.endpoints == ("title", "isbn")
        and t.channels == ("slack",)
        and t.window == timedelta(minutes=30)
    )
    assert t.min_requests == 50 and t.alert_type == "title_misses"


@pytest.mark.parametrize(
    "body, message",
    [
        (
            'name = "x"\nmetric = "hit_ratio"\nthreshold = 1\nseverity = "warning"',
            "rule 'x': metric: unknown metric 'hit_ratio'",
        ),
        (
            'name = "x"\nmetric = "miss_rate"\nthreshold = 1\nseverity = "urgent"',
            "rule 'x': severity: 'urgent': use one of critical, warning, info",
        ),
        (
            'name = "x"\nmetric = "miss_rate"\nseverity = "warning"',
            "rule 'x': threshold: is required",
        ),
        (
            'name = "x"\nmetric = "miss_rate"\nthreshold = "high"\nseverity = "warning"',
            "rule 'x': threshold: must be a number",
        ),
        (
            'name = "x"\nmetric = "miss_rate"\nthreshold = 1\nseverity = "warning"\nfor = 30',
            "rule 'x': for: must be a duration string",
        ),
        (
            'name = "x"\nmetric = "miss_rate"\nthreshold = 1\nseverity = "warning"\nfor = "soon"',
            "rule 'x': for: for: 'soon' is not a duration",
        ),
        (
            'name = "x"\nmetric = "miss_rate"\nthreshold = 1\nseverity = "warning"\nthreshhold = 2',
            "rule 'x': threshhold: unknown field",
        ),
        (
            'name = "x"\nmetric = "queue_depth"\nthreshold = 1\nseverity = "warning"\nendpoints = ["title"]',
            "rule 'x': endpoints: metric 'queue_depth' is store-wide",
        ),
        (
            'name = "x"\nmetric = "miss_rate"\nthreshold = 1\nseverity = "warning"\nchannels = ["pager"]',
            "rule 'x': channels: unknown channel 'pager'",
        ),
        (
            'name = "x"\nmetric = "miss_rate"\nthreshold = 1\nseverity = "warning"\nop = "=="',
            "rule 'x': op: '=='",
        ),
        (
            'name = "Bad Name"\nmetric = "miss_rate"\nthreshold = 1\nseverity = "warning"',
            "rule 'Bad Name': name:",
        ),
        ('metric = "miss_rate"\nthreshold = 1\nseverity = "warning"', "rule #1: name: is required"),
        (
            'name = "x"\nmetric = "miss_rate"\nthreshold = 1\nseverity = "warning"\nwindow = "90s"',
            "rule 'x': window: must be whole minutes",
        ),
        (
            'name = "x"\nkind = "anomaly"\nmetric = "queue_depth"\nseverity = "warning"',
            "rule 'x': metric: anomaly rules watch traffic metrics",
        ),
    ],
)
def test_invalid_rule_names_file_rule_and_field(tmp_path, body, message):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, "[alerts]\n[[alerts.rules]]\n" + body + "\n")
    assert str(tmp_path / "rules.toml") in str(err.value)
    assert message in str(err.value)


def test_duplicate_and_unknown_disable(tmp_path):
    rule = (
        '[[alerts.rules]]\nname = "x"\nmetric = "miss_rate"\nthreshold = 1\nseverity = "warning"\n'
    )
    with pytest.raises(ConfigError, match="rule 'x' is defined twice"):
        _load(tmp_path, "[alerts]\n" + rule + rule)
    with pytest.raises(ConfigError, match="disable names unknown rule 'nope'"):
        _load(tmp_path, '[alerts]\ndisable = ["nope"]\n')
    with pytest.raises(ConfigError, match="not an email address"):
        _load(tmp_path, '[notify]\ncritical = ["oncall@example.org\\nBcc: x@y"]\n')


def test_every_metric_formats():
    assert format_value(15.234, "%") == "15.2%"
    assert format_value(1754.9, "ms") == "1,755 ms" and format_value(4.25, "ms") == "4.25 ms"
    # Microseconds keep three significant digits (0.0 ms said nothing).
    assert format_value(0.0041234, "ms") == "0.00412 ms" and format_value(0.0, "ms") == "0 ms"
    assert format_value(1.2e9, "bytes") == "1.20 GB" and format_value(350e6, "bytes") == "350.00 MB"
    assert format_value(3600, "s") == "1h" and format_value(None, "%") == "n/a"
    assert set(METRICS) >= {
        "miss_rate",
        "edge_hit_rate",
        "p99_latency",
        "queue_depth",
        "kv_storage",
        "data_age",
    }


def test_readme_config_examples_load(tmp_path):
    """docs/alerts.md's TOML examples are valid config (docs cannot rot)."""
    import re

    from tests.helpers import ROOT

    blocks = re.findall(r"```toml\n(.*?)```", (ROOT / "docs" / "alerts.md").read_text(), re.S)
    alerts = next(b for b in blocks if "[[alerts.rules]]" in b)
    notify = next(b for b in blocks if b.startswith("[notify]"))
    cfg = _load(tmp_path, alerts + notify)
    names = [r.name for r in effective_rules(cfg.alerts)]
    assert "title_misses" in names and "hit_rate_drift" in names and "kv_storage" not in names
    assert cfg.notify.critical == ("oncall@example.org", "team@example.org")
