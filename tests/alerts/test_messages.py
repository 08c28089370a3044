"""Rendered notifications against golden files; escaping for each medium.
Set UPDATE_GOLDEN=1 to rewrite the golden files after a deliberate change."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from cachemon.alerts import lifecycle, messages, readings
from cachemon.alerts.rules import Rule, type_units
from tests.helpers.golden import check_golden as _golden

AT = datetime(2026, 11, 19, 9, 45, tzinfo=UTC)
HOSTILE = "<img src=x onerror=alert(1)>\nSubject: pwned"

FIRING = lifecycle.InstanceState(
    "p99_latency",
    "",
    "p99_latency",
    "critical",
    lifecycle.State.FIRING,
    AT,
    AT,
    value=1832.4,
    threshold=500.0,
    message="P99 latency above threshold: 1,832 ms (threshold 500 ms)",
    firing_since=AT,
)
WARN = lifecycle.InstanceState(
    "edge_low",
    "title",
    "edge_hit_rate",
    "warning",
    lifecycle.State.FIRING,
    AT,
    AT,
    value=71.25,
    threshold=75.0,
    message="Edge hit rate (title) below threshold: 71.2% (threshold 75.0%)",
    firing_since=AT,
)
RESOLVED = lifecycle.InstanceState(
    "queue_depth",
    "",
    "queue_depth",
    "critical",
    lifecycle.State.RESOLVED,
    AT,
    AT,
    value=40.0,
    threshold=1000.0,
    message="Warming queue depth 40 jobs (threshold > 1,000 jobs)",
)
CONTEXT = {
    "window": {"start": "2026-11-19T09:30:00Z", "end": "2026-11-19T09:45:00Z"},
    "hitRates": {"edge": 80.5, "kv": 13.25, "r2_cold": 0.5, "api": 5.75, "combined": 94.25},
    "latency": {"p50": 4.9, "p95": 88.1, "p99": 1832.4, "avg": 31.0},
    "volume": {"total_requests": 31250},
    "errorRate": 0.61,
    "topKeys": [
        {
            "key": "search:title:q=hamlet",
            "endpoint": "title",
            "requests": 1250,
            "hitRate": 98.5,
            "tier": "edge",
        },
        {"key": HOSTILE, "endpoint": "title", "requests": 900, "hitRate": 0.0, "tier": "api"},
    ],
}


# Each firing alert's value when it fired and now, labelled with its window
# (both fired at this evaluation).
P99 = Rule("p99_latency", "p99_latency", 500.0, "critical")
EDGE = Rule("edge_low", "edge_hit_rate", 75.0, "warning", op="<", endpoints=("title",))
VALUES = {
    FIRING.key: readings.AlertValues(
        readings.describe(P99, ""),
        readings.reading(P99, 1832.4, AT, AT),
        readings.reading(P99, 1832.4, AT, AT),
    ),
    WARN.key: readings.AlertValues(
        readings.describe(EDGE, "title"),
        readings.reading(EDGE, 71.25, AT, AT),
        readings.reading(EDGE, 71.25, AT, AT),
    ),
}


def _email():
    notice = lifecycle.Notice("email", "new", (FIRING, WARN), (RESOLVED,), AT)
    return messages.alert_email(
        notice,
        CONTEXT,
        ("oncall@example.org",),
        "cachemon@example.org",
        "[BooksTrack Cache]",
        "https://cache.example.org/",
        "<id@cachemon>",
        VALUES,
    )


def test_alert_email_golden():
    email = _email()
    assert email.subject == "[BooksTrack Cache] CRITICAL: p99_latency (+1 more)"
    _golden("alert_email.txt", email.text)
    _golden("alert_email.html", email.html)


def test_email_labels_each_value_with_its_window():
    """The value now and the value when it fired, each with the rule's window:
    never one bare "Current" figure beside recent metrics of another window."""
    fired = AT - timedelta(minutes=30)
    still = replace(WARN, firing_since=fired)  # the repeat of an alert that fired earlier
    values = {
        WARN.key: readings.AlertValues(
            readings.describe(EDGE, "title"),
            readings.reading(EDGE, 68.4, fired, fired),
            readings.reading(EDGE, 71.25, AT, AT),
        )
    }
    notice = lifecycle.Notice("email", "repeat", (still,), (), AT)
    text = messages.alert_email(
        notice, CONTEXT, ("a@example.org",), "c@example.org", "[X]", "http://h", "<i@c>", values
    ).text
    assert "  Now: 71.2% over 15m to 2026-11-19T09:45:00Z" in text
    assert "  When it fired: 68.4% over 15m to 2026-11-19T09:15:00Z" in text
    assert "Since: 2026-11-19T09:15:00Z" in text and "Current:" not in text
    text = _email().text
    assert "  Now: 1,832 ms over 15m to 2026-11-19T09:45:00Z" in text
    # The recent metrics' latencies as the alert values show them (4.9 ms, 88 ms).
    assert "- Latency: p50 4.90 ms, p95 88 ms, p99 1,832 ms" in text


def test_email_escapes_keys_and_has_no_raw_newline_in_text_lines():
    email = _email()
    assert "<img" not in email.html and "&lt;img src=x onerror=alert(1)&gt;" in email.html
    assert "&lt;img src=x onerror=alert(1)&gt;\\nSubject: pwned" in email.html
    assert not any(line.startswith("Subject:") for line in email.text.splitlines())
    assert "https://cache.example.org/alerts" in email.text


def test_resolved_only_and_no_context():
    notice = lifecycle.Notice("email", "resolved", (), (RESOLVED,), AT)
    email = messages.alert_email(
        notice, None, ("a@example.org",), "c@example.org", "[X]", "http://h", "<i@c>"
    )
    assert email.subject == "[X] RESOLVED: queue_depth"
    assert "Possible" not in email.text and "No recent metrics" in email.text


def test_subject_cannot_carry_a_header():
    evil = lifecycle.InstanceState(
        "r", "ti\r\ntle", "miss_rate", "critical", lifecycle.State.FIRING, AT, AT, firing_since=AT
    )
    s = messages.subject(lifecycle.Notice("email", "new", (evil,), (), AT), "[BooksTrack Cache]")
    assert "\r" not in s and "\n" not in s and s.endswith("[ti\\r\\ntle]")


@pytest.mark.parametrize(
    "render, golden",
    [(messages.slack_payload, "slack.json"), (messages.discord_payload, "discord.json")],
)
def test_chat_payloads_golden(render, golden):
    bad = lifecycle.InstanceState(
        "r",
        "<!channel> @everyone *x*",
        "miss_rate",
        "critical",
        lifecycle.State.FIRING,
        AT,
        AT,
        message="Cache miss rate (<!channel>) above threshold",
        firing_since=AT,
    )
    payload = render(
        lifecycle.Notice("slack", "new", (bad, FIRING), (RESOLVED,), AT),
        "[BooksTrack Cache]",
        "http://h/",
    )
    _golden(golden, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    text = json.dumps(payload)
    assert "<!channel>" not in text
    if golden == "discord.json":
        assert payload["allowed_mentions"] == {"parse": []} and len(payload["content"]) <= 2000


def test_alert_units_are_derived_from_the_rules_metrics():
    """One table of units (`MetricDef.unit`): the messages' units per alert
    type follow from the rules, and are what they always were."""
    assert messages.UNITS == {
        "miss_rate": "%",
        "edge_hit_rate": "%",
        "error_rate": "%",
        "p99_latency": "ms",
        "p95_latency": "ms",
        "queue_depth": "jobs",
        "kv_storage": "bytes",
        "data_stale": "s",
    }
    mixed = (
        Rule("a", "p99_latency", 1.0, "warning", type="slow"),
        Rule("b", "error_rate", 1.0, "critical", type="slow"),  # one type, two units
        Rule("z", "combined_hit_rate", 3.0, "warning", kind="anomaly"),  # threshold is a z-score
        Rule("q", "queue_depth", 5.0, "info"),
    )
    assert type_units(mixed) == {"q": "jobs"}  # the type defaults to the rule name


def test_each_firing_alert_links_to_the_charts_around_its_start():
    """The link opens the dashboard's Overview an hour either side of the
    alert's start, for its endpoint (the URL the dashboard reads back)."""
    from urllib.parse import parse_qs, urlparse

    from cachemon import timerange

    links = [line.split(": ", 1)[1] for line in _email().text.splitlines() if "Chart at" in line]
    assert len(links) == 2
    for link in links:
        url = urlparse(link)
        assert url.netloc == "cache.example.org" and url.path == "/"
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        assert timerange.parse_query(q) == timerange.around(AT)
    assert "endpoint" not in links[0] and links[1].endswith("&endpoint=title")
