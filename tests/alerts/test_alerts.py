"""The alert monitor end to end: simulator data with the Thursday origin
slowdown, a real SMTP server and a real webhook receiver on loopback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import timedelta

import pytest
import trustme

from cachemon import config
from cachemon.alerts import evaluate as alerts_evaluate
from cachemon.alerts import health, silences
from cachemon.clock import iso
from cachemon.errors import InputError
from cachemon.notify.transports import Transports
from cachemon.severity import HealthStatus, Severity
from cachemon.store import db as store_db
from cachemon.store import snapshots
from tests.helpers import ALWAYS_RULE, P99_RULE, ROOT, T0, load, simulate, weighted_quantile
from tests.helpers.servers import SmtpSink, WebhookSink

START = T0 - timedelta(hours=1)  # Thursday 07:00; the slowdown is 09:00-09:45
FIRE = 165  # minutes after START: 09:45, when the p99 rule (for 30m) fires


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Five hours of small simulated traffic (07:00-12:00), and its raw events."""
    path = tmp_path_factory.mktemp("alerts") / "base.duckdb"
    parts, truth = simulate(5, start=START)
    load(path, parts, now=START + timedelta(hours=5))
    return path, truth


@pytest.fixture
def db(base, tmp_path):
    path = tmp_path / "a.duckdb"
    shutil.copy(base[0], path)
    shutil.copy(snapshots.snapshot_path(base[0]), snapshots.snapshot_path(path))
    return path


@pytest.fixture
def smtp():
    s = SmtpSink().start()
    yield s
    s.stop()


@pytest.fixture
def hooks():
    h = WebhookSink()
    yield h
    h.close()


def _cfg(tmp_path, db, rules: str):
    p = tmp_path / "c.toml"
    p.write_text(rules)
    return config.with_db(config.load(p, env={}), str(db))


def _env(smtp, hooks=None, **extra) -> dict:
    e = {"ALERT_EMAIL": "oncall@example.org", "ALERT_FROM": "cachemon@example.org", **smtp.env()}
    if hooks:
        e["SLACK_WEBHOOK_URL"] = hooks.url("/slack/T000/B000/secret-slack-token")
    return e | extra


def _at(minutes: int):
    return START + timedelta(minutes=minutes)


def _run(cfg, at, env):
    with store_db.writer(cfg.store.path, at) as con:
        return alerts_evaluate.run(con, cfg, at, Transports.from_env(env))


def _history(cfg):
    with store_db.reader(cfg.store.path) as con:
        return con.execute(
            "SELECT changed_at, rule, from_state, to_state, value FROM alert_history "
            "ORDER BY changed_at"
        ).fetchall()


def test_incident_fires_after_for_notifies_once_and_resolves(tmp_path, db, base, smtp, hooks):
    cfg = _cfg(tmp_path, db, P99_RULE)
    env = _env(smtp, hooks)
    results = {iso(_at(m)): _run(cfg, _at(m), env) for m in range(15, 5 * 60 + 1, 15)}
    # pending at 09:15 (first breached window 09:00-09:15), firing once `for` (30m) held, at 09:45.
    changes = [(iso(t), to) for t, rule, _, to, _ in _history(cfg) if rule == "p99_latency"]
    assert changes == [
        ("2026-11-19T07:15:00Z", "ok"),
        ("2026-11-19T09:15:00Z", "pending"),
        ("2026-11-19T09:45:00Z", "firing"),
        ("2026-11-19T10:00:00Z", "resolved"),
        ("2026-11-19T10:15:00Z", "ok"),
    ]
    # The value evaluated is the window's p99 from the merged histogram: within 1 % of the raw events'.
    truth = base[1]
    req = truth[
        (truth.kind == "request")
        & (truth.timestamp >= _at(FIRE - 15))
        & (truth.timestamp < _at(FIRE))
    ]
    firing = next(s for s in results["2026-11-19T09:45:00Z"].evaluation.states)
    assert firing.value == pytest.approx(
        weighted_quantile(req.latency_ms, req.sample_interval, 0.99), rel=0.01
    )
    # Exactly one alert email and one resolve notice, with the seed's subject.
    subjects = [m["Subject"] for m in smtp.messages]
    assert subjects == [
        "[BooksTrack Cache] CRITICAL: p99_latency",
        "[BooksTrack Cache] RESOLVED: p99_latency",
    ]
    alert = smtp.messages[0]
    assert alert["To"] == "oncall@example.org" and alert["From"] == "cachemon@example.org"
    text = alert.get_body(("plain",)).get_content()
    html = alert.get_body(("html",)).get_content()
    assert "Threshold: 500 ms" in text and "Origin API slowness" in text
    assert "http://127.0.0.1:8501/alerts" in html and "Recent Metrics" in html
    # Slack got the same two messages.
    slack = hooks.accepted("/slack/T000/B000/secret-slack-token")
    assert [p["text"] for p in slack] == subjects
    # Every notification is recorded as sent, once.
    with store_db.reader(db) as con:
        rows = con.execute(
            "SELECT channel, status, attempts FROM notifications ORDER BY id"
        ).fetchall()
    assert rows == [("email", "sent", 1), ("slack", "sent", 1)] * 2


def test_dedup_four_hours_then_repeat_across_process_restarts(tmp_path, db, smtp):
    cfg = _cfg(tmp_path, db, ALWAYS_RULE)
    env = _env(smtp)
    child_env = dict(
        os.environ,
        **env,
        CACHEMON_DB=str(db),
        CACHEMON_CONFIG=str(tmp_path / "c.toml"),
        PYTHONPATH=str(ROOT),
    )
    for m in range(15, 5 * 60 + 1, 15):
        if m in (30, 255):  # a fresh process: nothing carried in memory
            p = subprocess.run(
                [sys.executable, "-m", "cachemon", "alerts", "check", "--at", iso(_at(m))],
                cwd=ROOT,
                env=child_env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert p.returncode == 0, p.stderr
            assert "firing" in p.stdout
        else:
            _run(cfg, _at(m), env)
    with store_db.reader(db) as con:
        sent = [
            iso(r[0])
            for r in con.execute("SELECT created_at FROM notifications ORDER BY id").fetchall()
        ]
    # First at 07:15; nothing for 4 hours; the repeat at 11:15.
    assert sent == ["2026-11-19T07:15:00Z", "2026-11-19T11:15:00Z"]
    assert len(smtp.messages) == 2
    assert "Still firing" in smtp.messages[1].get_body(("plain",)).get_content()


def test_outbox_delivers_after_smtp_server_returns_never_twice(tmp_path, db, caplog):
    cfg = _cfg(tmp_path, db, P99_RULE)
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    sink = SmtpSink(tls="starttls", ca=ca, user="mailer", password="s3cret-smtp-pass")
    env = _env(sink, SMTP_CA_FILE=str(ca_file))
    for m in range(15, FIRE, 15):  # up to 09:30: pending, nothing to send yet
        _run(cfg, _at(m), env)
    fired = _run(cfg, _at(FIRE), env)  # 09:45: fires while the SMTP server is down
    assert [d.ok for d in fired.deliveries] == [False]
    assert "unreachable" in fired.deliveries[0].detail
    with store_db.reader(db) as con:
        status, attempts, error = con.execute(
            "SELECT status, attempts, last_error FROM notifications"
        ).fetchall()[0]
    assert (status, attempts) == ("pending", 1) and "SMTP server 127.0.0.1" in error
    sink.start()
    try:
        later = _run(
            cfg, _at(FIRE + 15), env
        )  # 10:00: the server is back; the alert also resolves now
        assert [d.ok for d in later.deliveries] == [True, True]
        _run(cfg, _at(FIRE + 30), env)
        subjects = [m["Subject"] for m in sink.messages]
        assert subjects == [
            "[BooksTrack Cache] CRITICAL: p99_latency",
            "[BooksTrack Cache] RESOLVED: p99_latency",
        ]
    finally:
        sink.stop()
    with store_db.reader(db) as con:
        attempts = con.execute(
            "SELECT notification_id, ok FROM deliveries ORDER BY attempted_at, notification_id"
        ).fetchall()
        dumped = " ".join(
            str(r)
            for t in ("notifications", "deliveries", "alert_history")
            for r in con.execute(f"SELECT * FROM {t}").fetchall()
        )
    assert attempts == [(1, False), (1, True), (2, True)]
    assert "s3cret-smtp-pass" not in dumped and "s3cret-smtp-pass" not in caplog.text


def test_silence_mutes_notifications_not_evaluation(tmp_path, db, smtp):
    cfg = _cfg(tmp_path, db, ALWAYS_RULE)
    with store_db.writer(db, START) as con:
        s = silences.add_silence(
            con, "busy", timedelta(hours=2), "load test", START, created_by="ann"
        )
    assert s.ends_at == _at(120)
    for m in range(15, 120, 15):
        r = _run(cfg, _at(m), _env(smtp))
        assert r.evaluation.states[0].state == "firing" and not r.outbox
    assert smtp.messages == []
    _run(cfg, _at(120), _env(smtp))  # the silence has ended, the alert still fires: notify now
    assert [m["Subject"] for m in smtp.messages] == ["[BooksTrack Cache] WARNING: busy"]
    with store_db.writer(db, _at(140)) as con:
        with pytest.raises(InputError, match="no alert type or rule named 'nope'"):
            silences.add_silence(con, "nope", timedelta(hours=1), "x", _at(140))
        with pytest.raises(InputError, match="reason"):
            silences.add_silence(con, "busy", timedelta(hours=1), "  ", _at(140))


def test_no_data_when_stale_or_quiet_and_data_stale_fires(tmp_path, db, smtp):
    rules = (
        P99_RULE
        + """
[[alerts.rules]]
name = "quiet_title"
metric = "miss_rate"
threshold = 10
severity = "warning"
endpoints = ["title"]
min_requests = 1e9
[[alerts.rules]]
name = "data_stale"
metric = "data_age"
threshold = 1800
severity = "warning"
"""
    )
    cfg = _cfg(tmp_path, db, rules)
    r = _run(cfg, _at(60), _env(smtp))
    by_rule = {s.rule: s for s in r.evaluation.states}
    assert (
        by_rule["quiet_title"].state == "no_data"
        and "below min_requests" in by_rule["quiet_title"].message
    )
    assert by_rule["quiet_title"].endpoint == "title"
    assert by_rule["data_stale"].state == "ok"
    late = _run(cfg, _at(6 * 60), _env(smtp))  # data ends at 12:00; evaluating at 13:00
    by_rule = {s.rule: s for s in late.evaluation.states}
    assert by_rule["p99_latency"].state == "no_data" and "stale" in by_rule["p99_latency"].message
    assert by_rule["data_stale"].state == "firing" and by_rule["data_stale"].value == 3600
    assert [m["Subject"] for m in smtp.messages] == ["[BooksTrack Cache] WARNING: data_stale"]
    with store_db.reader(db) as con:
        h = health.health(con, _at(6 * 60), cfg.alerts.evaluate_every)
    assert h.status == "degraded"
    assert [(i.severity, i.message.split(":")[0]) for i in h.issues][:1] == [
        ("warning", "Data age above threshold")
    ]
    assert {i.severity for i in h.issues} == {"warning", "info"}
    assert h.status is HealthStatus.DEGRADED and h.issues[0].severity is Severity.WARNING
    # The Alerts page's record: typed fields, not a dict read back by key.
    with store_db.reader(db) as con:
        rec = health.record(con, _at(6 * 60), cfg.alerts.evaluate_every, days=7)
    assert rec.health == h
    assert {s.rule for s in rec.states} == {"p99_latency", "quiet_title", "data_stale"}
    assert [p.rule for p in rec.periods if p.end is None] == ["data_stale"]
    assert len(rec.notifications) == 1 and rec.silences == ()


def test_firing_alert_survives_missing_data_and_a_clock_jump(tmp_path, db, smtp):
    cfg = _cfg(tmp_path, db, P99_RULE)
    for m in range(15, FIRE + 1, 15):
        _run(cfg, _at(m), _env(smtp))
    assert len(smtp.messages) == 1  # fired at 09:45
    with store_db.writer(db, _at(FIRE)) as con:
        before = alerts_evaluate.load_states(con)
        with pytest.raises(InputError, match="before the last evaluation"):
            alerts_evaluate.run(con, cfg, _at(60), Transports.from_env(_env(smtp)))
        with pytest.raises(InputError, match="already evaluated"):
            alerts_evaluate.run(con, cfg, _at(FIRE), Transports.from_env(_env(smtp)))
        assert alerts_evaluate.load_states(con) == before
    jump = _run(cfg, _at(FIRE) + timedelta(days=3), _env(smtp))  # the clock jumps 3 days ahead
    s = jump.evaluation.states[0]
    assert s.state == "no_data" and s.firing_since == _at(
        FIRE
    )  # still active: not silently resolved
    assert len(smtp.messages) == 1 and not jump.outbox


def test_query_failure_is_an_error_state(tmp_path, db, smtp):
    cfg = _cfg(tmp_path, db, P99_RULE)
    with store_db.writer(db, _at(15)) as con:
        con.execute("ALTER TABLE latency_minute RENAME TO latency_minute_gone")
        r = alerts_evaluate.run(con, cfg, _at(15), Transports.from_env(_env(smtp)))
    s = r.evaluation.states[0]
    assert s.state == "error" and "query failed" in s.message and "latency_minute" in s.message
    with store_db.reader(db) as con:
        assert health.health(con, _at(15), cfg.alerts.evaluate_every).status == "degraded"


def test_hostile_cache_key_is_escaped_everywhere(tmp_path, db, smtp, hooks):
    key = '<script>alert("x")</script>\r\nBcc: victim@example.org'
    rows = [
        {
            "timestamp": iso(_at(FIRE - 10) + timedelta(seconds=i)),
            "tier": "api",
            "key": key,
            "endpoint": "title",
            "latency_ms": 2500.0,
            "sample_interval": 50.0,
        }
        for i in range(40)
    ]
    f = tmp_path / "hostile.ndjson"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = _cfg(tmp_path, db, P99_RULE)
    from cachemon.ingest import load as ingest_load

    ingest_load.import_files(cfg, [f], _at(FIRE))
    env = _env(smtp, hooks, DISCORD_WEBHOOK_URL=hooks.url("/discord/123/secret-discord-token"))
    for m in range(15, FIRE + 1, 15):
        _run(cfg, _at(m), env)
    assert len(smtp.messages) == 1
    msg = smtp.messages[0]
    assert msg["Bcc"] is None and msg["To"] == "oncall@example.org"
    assert [e.rcpt_tos for e in smtp.inbox.envelopes] == [["oncall@example.org"]]
    html = msg.get_body(("html",)).get_content()
    text = msg.get_body(("plain",)).get_content()
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html and "<script>" not in html
    assert "\\r\\nBcc: victim@example.org" in text  # shown escaped, on one line
    assert not any(line.startswith("Bcc:") for line in text.splitlines())
    discord = hooks.accepted("/discord/123/secret-discord-token")[0]
    assert discord["allowed_mentions"] == {"parse": []}


def test_cli_history_silences_and_health_in_metrics(tmp_path, db, smtp):
    cfg = _cfg(tmp_path, db, P99_RULE)
    for m in range(15, FIRE + 1, 15):
        _run(cfg, _at(m), _env(smtp))
    env = dict(
        os.environ,
        CACHEMON_DB=str(db),
        CACHEMON_CONFIG=str(tmp_path / "c.toml"),
        PYTHONPATH=str(ROOT),
    )

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "cachemon", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    h = cli("alerts", "history", "--since", iso(START), "--json")
    assert h.returncode == 0, h.stderr
    data = json.loads(h.stdout)
    assert [c["to_state"] for c in data["changes"]][:2] == ["firing", "pending"]
    assert data["notifications"][0]["status"] == "sent"
    m = cli("metrics", "--period", "15m", "--at", iso(_at(FIRE)))
    block = json.loads(m.stdout)["health"]
    assert block["status"] == "critical" and block["issues"][0]["since"] == "2026-11-19T09:45:00Z"
    prom = cli(
        "metrics", "--period", "15m", "--at", iso(_at(FIRE)), "--format", "prometheus"
    ).stdout
    assert (
        'cachemon_alerts_firing{severity="critical"} 1.0' in prom
        and "cachemon_health_status 2.0" in prom
    )
    bad = cli("alerts", "silence", "p99_latency", "--for", "forever", "--reason", "x")
    assert bad.returncode == 2 and "--for: 'forever' is not a duration" in bad.stderr
    ok = cli("alerts", "silence", "p99_latency", "--for", "2h", "--reason", "deploy")
    assert ok.returncode == 0 and "muted until" in ok.stdout
    listed = cli("alerts", "silences")
    assert "p99_latency" in listed.stdout and "deploy" in listed.stdout
    dry = cli("alerts", "check", "--at", iso(_at(FIRE + 15)), "--dry-run")
    assert dry.returncode == 0 and "resolved" in dry.stdout
    with store_db.reader(db) as con:  # a dry run writes nothing
        assert alerts_evaluate.due(con, _at(FIRE + 15))


def test_job_runner_notifies_once_across_a_restart(tmp_path, smtp):
    """The real runner (simulated clock, 5 minutes a second) ingests the
    Thursday slowdown live and evaluates every 15 minutes; it is stopped
    mid-incident and started again. Exactly one alert and one resolve."""
    rules = tmp_path / "r.toml"
    rules.write_text(
        P99_RULE.replace('for = "30m"\n', "")
        + "[simulator]\nseed = 7\nrequests_per_hour = 6000\ncatalog_keys = 3000\n"
        "sample_threshold_per_minute = 30\n"
    )
    env = dict(
        os.environ,
        **_env(smtp),
        CACHEMON_DB=str(tmp_path / "r.duckdb"),
        CACHEMON_CONFIG=str(rules),
        PYTHONPATH=str(ROOT),
    )

    def run_until(start: str, stop_at, sim_seconds_per_second=300):
        import signal
        import time

        p = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jobs",
                "--clock-start",
                start,
                "--clock-speed",
                str(sim_seconds_per_second),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.time() + 120
            while time.time() < deadline and not stop_at():
                time.sleep(0.2)
        finally:
            p.send_signal(signal.SIGTERM)
            out, _ = p.communicate(timeout=60)
        assert p.returncode == 0, out
        return out

    subjects = lambda: [m["Subject"] for m in smtp.messages]  # noqa: E731
    run_until("2026-11-19T08:50:00Z", lambda: len(smtp.messages) >= 1)
    assert subjects() == ["[BooksTrack Cache] CRITICAL: p99_latency"]
    # Restart mid-incident (the slowdown lasts until 09:45): no second alert email.
    run_until("2026-11-19T09:35:00Z", lambda: len(smtp.messages) >= 2)
    assert subjects() == [
        "[BooksTrack Cache] CRITICAL: p99_latency",
        "[BooksTrack Cache] RESOLVED: p99_latency",
    ]
    with store_db.reader(tmp_path / "r.duckdb") as con:
        rows = con.execute("SELECT kind, status FROM notifications ORDER BY id").fetchall()
    assert rows == [("firing", "sent"), ("resolved", "sent")]
