"""A firing alert's value when it fired and its value now, each labelled with
the rule's window, on every surface that shows health: the /metrics JSON,
the Overview banner and the Alerts page (the banner showed the value at
firing, 36.7 %, beside KPIs of another window, 62 %, with no label)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cachemon import config, timerange
from cachemon.alerts import evaluate as alerts_evaluate
from cachemon.alerts import health, readings
from cachemon.alerts.rules import Rule, effective_rules
from cachemon.clock import Period, iso
from cachemon.notify.transports import Transports
from cachemon.severity import HealthStatus, Severity
from cachemon.store import db as store_db
from cachemon.usecases import metrics_report
from pages.shared import common
from tests.helpers import P99_RULE, T0, load, simulate, weighted_quantile

START = T0 - timedelta(hours=1)  # Thursday 07:00; the origin slows down 09:00-09:45
FIRED = START + timedelta(minutes=165)  # 09:45: the p99 rule (for 30m) fires
NOW = FIRED + timedelta(minutes=7, seconds=20)  # between two evaluations


@pytest.fixture(scope="module")
def fired(tmp_path_factory):
    """Five hours of traffic, the p99 rule evaluated every 15 minutes until it fires."""
    tmp = tmp_path_factory.mktemp("readings")
    path, cfg_file = tmp / "cachemon.duckdb", tmp / "c.toml"
    parts, truth = simulate(5, start=START)
    load(path, parts, now=START + timedelta(hours=5))
    cfg_file.write_text(P99_RULE)
    cfg = config.with_db(config.load(cfg_file, env={}), str(path))
    at = START + timedelta(minutes=15)
    while at <= FIRED:
        with store_db.writer(path, at) as con:
            alerts_evaluate.run(con, cfg, at, Transports())
        at += timedelta(minutes=15)
    return path, cfg, truth


def _p99(truth, end) -> float:
    e = truth[
        (truth.kind == "request")
        & (truth.timestamp >= end - timedelta(minutes=15))
        & (truth.timestamp < end)
    ]
    return weighted_quantile(e.latency_ms, e.sample_interval, 0.99)


def test_health_gives_the_value_when_it_fired_and_now_with_their_windows(fired):
    path, cfg, truth = fired
    rules = effective_rules(cfg.alerts)
    with store_db.reader(path) as con:
        h = health.health(con, NOW, cfg.alerts.evaluate_every, rules)
        plain = health.health(con, NOW, cfg.alerts.evaluate_every)
        report = metrics_report.build(con, cfg, Period.H1, NOW, latest=False)
        record = health.record(con, NOW, cfg.alerts.evaluate_every, rules=rules)
    (issue,) = [i for i in h.issues if i.values is not None]
    v = issue.values
    assert issue.since == FIRED and v.fired.end == FIRED and v.now.end == iso_minute(NOW)
    assert v.fired.window == v.now.window == timedelta(minutes=15)
    # The stored message names the window too (it is what Slack, Discord and the CLI show).
    assert issue.message.startswith("P99 latency over 15m above threshold: ")
    # Against the raw events: the 15 minutes before firing, and the 15 before now.
    assert v.fired.value == pytest.approx(_p99(truth, FIRED), rel=0.01)
    assert v.now.value == pytest.approx(_p99(truth, iso_minute(NOW)), rel=0.01)
    assert v.fired.value != v.now.value
    assert issue.text == (
        f"P99 latency > 500 ms: {v.fired.text()} when it fired; {v.now.text()} now"
    )
    assert f"over 15m to {iso(FIRED)} when it fired" in issue.text
    assert f"over 15m to {iso(iso_minute(NOW))} now" in issue.text
    # Without the rules (a caller that only wants the status) there is nothing to label.
    assert [i.values for i in plain.issues] == [None] * len(plain.issues)
    # The /metrics JSON carries both, and the Overview and Alerts pages draw the same text.
    (js,) = [i for i in report.to_json()["health"]["issues"] if "values" in i]
    assert js["values"]["atFiring"] == {
        "value": pytest.approx(v.fired.value, rel=1e-5),
        "unit": "ms",
        "window": "15m",
        "windowEnd": iso(FIRED),
    }
    assert js["values"]["now"]["windowEnd"] == iso(iso_minute(NOW))
    assert report.health == h and record.health == h
    banner = common.health_text(report.health)
    then = timerange.link("", timerange.around(FIRED))
    line = f"- **critical** since {timerange.stamp(FIRED)}: {issue.text} · [charts then]({then})"
    assert line in banner.splitlines()
    assert common.issue_line(issue) in banner


def iso_minute(t):
    return t.replace(second=0, microsecond=0)


def test_current_values_read_now_and_the_value_at_firing_from_the_history(fired):
    """What the email of a later evaluation shows: the value over the window
    ending then, and the value recorded when the alert fired."""
    path, cfg, _ = fired
    with store_db.reader(path) as con:
        rules = effective_rules(cfg.alerts)
        observer = alerts_evaluate.Observer(con)
        later = FIRED + timedelta(minutes=10)
        values = alerts_evaluate.current_values(
            con, observer, rules, [("p99_latency", "", FIRED)], later, later
        )
    v = values[("p99_latency", "")]
    assert v.fired.end == FIRED and v.now.end == later and v.fired.value != v.now.value


def test_the_banner_text_labels_both_values_and_keeps_other_issues_plain():
    """Pure rendering: the banner's lines for a firing alert with its values,
    an overdue evaluation (plain message), and an info issue (left out)."""
    rule = Rule("miss_rate_critical", "miss_rate", 15.0, Severity.CRITICAL)
    values = readings.AlertValues(
        readings.describe(rule, ""),
        readings.Reading(36.7, "%", FIRED, timedelta(minutes=15)),
        readings.Reading(18.1, "%", FIRED + timedelta(minutes=25), timedelta(minutes=15)),
    )
    h = health.Health(
        HealthStatus.CRITICAL,
        (
            health.Issue(Severity.CRITICAL, "Cache miss rate over 15m above ...", FIRED, values),
            health.Issue(Severity.WARNING, "alert evaluation is overdue", FIRED),
            health.Issue(Severity.INFO, "quiet: no data", FIRED),
        ),
        FIRED,
    )
    # Each line links to the Overview in the hours around its start (#21).
    then = "(/?from=2026-11-19T08:45Z&to=2026-11-19T10:45Z)"
    assert common.health_text(h) == (
        "Health: **critical**\n"
        "- **critical** since 2026-11-19 09:45Z: Cache miss rate > 15.0%: 36.7% over 15m to "
        "2026-11-19T09:45:00Z when it fired; 18.1% over 15m to 2026-11-19T10:10:00Z now"
        f" · [charts then]{then}\n"
        f"- **warning** since 2026-11-19 09:45Z: alert evaluation is overdue · [charts then]{then}"
    )
    assert h.to_json()["issues"][0]["values"]["atFiring"]["value"] == 36.7
    assert "values" not in h.to_json()["issues"][1]


def test_an_endpoints_alert_links_to_that_endpoints_charts():
    issue = health.Issue(Severity.WARNING, "title hit rate low", FIRED, endpoint="title")
    then = timerange.link("", timerange.around(FIRED), "title")
    assert then.endswith("&endpoint=title") and f"[charts then]({then})" in common.issue_line(issue)
