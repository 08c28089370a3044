"""Channels and the outbox against real servers on loopback, and with the
world injected (fake post, SMTP session and clock)."""

from __future__ import annotations

import ast
import json
import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
import trustme

from cachemon import outbound
from cachemon.alerts import lifecycle, notices
from cachemon.errors import ConfigError
from cachemon.notify import outbox as notify_outbox
from cachemon.notify.transports import Smtp, Transports
from cachemon.settings import NotifyConfig
from cachemon.store import db as store_db
from tests.helpers.servers import SmtpSink, WebhookSink, free_port

AT = datetime(2026, 11, 19, 9, 45, tzinfo=UTC)
NC = NotifyConfig()
ALERT = lifecycle.InstanceState(
    "p99_latency",
    "",
    "p99_latency",
    "critical",
    lifecycle.State.FIRING,
    AT,
    AT,
    value=900.0,
    threshold=500.0,
    message="P99 latency above threshold: 900 ms (threshold 500 ms)",
    firing_since=AT,
)


def _row(channel: str, t: Transports, at=AT) -> notify_outbox.OutboxRow:
    return notices.render(lifecycle.Notice(channel, "new", (ALERT,), (), at), None, NC, t)


def _enqueue(db, *rows):
    with store_db.writer(db, AT) as con:
        for r in rows:
            notify_outbox.enqueue(con, r)


def _deliver(db, t, now):
    with store_db.writer(db, now) as con:
        return notify_outbox.deliver(con, t, NC, now)


@pytest.mark.filterwarnings(
    "ignore:Requiring AUTH while not requiring TLS"
)  # implicit TLS: it is TLS
def test_smtp_over_implicit_tls_with_login(db, tmp_path):
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    sink = SmtpSink(tls="ssl", ca=ca, user="mailer", password="pw-123456").start()
    try:
        t = Transports.from_env(
            {
                **sink.env(),
                "SMTP_CA_FILE": str(tmp_path / "ca.pem"),
                "ALERT_EMAIL": "a@example.org,b@example.org",
            }
        )
        _enqueue(db, _row("email", t))
        assert [d.ok for d in _deliver(db, t, AT)] == [True]
    finally:
        sink.stop()
    msg = sink.messages[0]
    assert msg["To"] == "a@example.org, b@example.org"
    assert msg["Subject"] == "[BooksTrack Cache] CRITICAL: p99_latency"
    assert msg.get_body(("html",)) is not None and msg.get_body(("plain",)) is not None
    assert msg["Message-ID"].endswith("@cachemon>")


def test_wrong_smtp_password_is_named_without_the_password(db, caplog):
    sink = SmtpSink(user="mailer", password="right-one")
    sink.tls = "none"
    sink.start()
    try:
        env = {**sink.env(), "SMTP_PASSWORD": "wrong-secret-pw", "ALERT_EMAIL": "a@example.org"}
        t = Transports.from_env(env)
        _enqueue(db, _row("email", t))
        with caplog.at_level(logging.INFO):
            d = _deliver(db, t, AT)
    finally:
        sink.stop()
    assert not d[0].ok and "SMTP" in d[0].detail
    assert "wrong-secret-pw" not in caplog.text + d[0].detail + repr(t)


def test_mailchannels_api_and_webhooks(db):
    hooks = WebhookSink()
    try:
        env = {
            "MAILCHANNELS_API_KEY": "mc-key-abc",
            "MAILCHANNELS_API_URL": hooks.url("/tx/v1/send"),
            "ALERT_EMAIL": "oncall@example.org",
            "SLACK_WEBHOOK_URL": hooks.url("/slack/secret"),
            "DISCORD_WEBHOOK_URL": hooks.url("/discord/secret"),
        }
        t = Transports.from_env(env)
        assert t.channels(NC) == ("email", "slack", "discord")
        _enqueue(db, *(_row(c, t) for c in ("email", "slack", "discord")))
        assert [d.ok for d in _deliver(db, t, AT)] == [True, True, True]
        mc = next(r for r in hooks.requests if r["path"] == "/tx/v1/send")
        assert mc["headers"]["X-Api-Key"] == "mc-key-abc"
        body = mc["json"]
        assert body["personalizations"] == [{"to": [{"email": "oncall@example.org"}]}]
        assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
        assert body["subject"] == "[BooksTrack Cache] CRITICAL: p99_latency"
        assert hooks.accepted("/slack/secret")[0]["text"] == body["subject"]
        assert "allowed_mentions" in hooks.accepted("/discord/secret")[0]
    finally:
        hooks.close()


def test_rejected_webhook_retries_with_backoff_in_order_never_twice(db, caplog):
    hooks = WebhookSink()
    try:
        t = Transports.from_env({"SLACK_WEBHOOK_URL": hooks.url("/services/T/B/xoxb-secret-token")})
        first = _row("slack", t)
        gone = lifecycle.InstanceState(
            "p99_latency", "", "p99_latency", "critical", lifecycle.State.RESOLVED, AT, AT
        )
        second = notices.render(lifecycle.Notice("slack", "resolved", (), (gone,), AT), None, NC, t)
        _enqueue(db, first, second)
        hooks.status = 404
        with caplog.at_level(logging.INFO):
            d1 = _deliver(db, t, AT)
        assert [(d.id, d.ok) for d in d1] == [(1, False)]  # the second waits behind the first
        assert "rejected the message: HTTP 404 (check the URL or key)" in d1[0].detail
        assert _deliver(db, t, AT + timedelta(seconds=30)) == []  # backoff: not due for 1 minute
        d2 = _deliver(db, t, AT + timedelta(minutes=1))
        assert [(d.id, d.ok) for d in d2] == [
            (1, False)
        ]  # due again; still rejected; next wait 2 minutes
        hooks.status = 200
        assert _deliver(db, t, AT + timedelta(minutes=2)) == []
        d3 = _deliver(db, t, AT + timedelta(minutes=3))
        assert [(d.id, d.ok) for d in d3] == [(1, True), (2, True)]
        assert _deliver(db, t, AT + timedelta(minutes=30)) == []  # nothing is sent twice
    finally:
        hooks.close()
    assert [r["json"]["text"] for r in hooks.requests if r["status"] == 200] == [
        json.loads(first.payload)["text"],
        json.loads(second.payload)["text"],
    ]
    with store_db.reader(db) as con:
        stored = " ".join(
            str(r)
            for t_ in ("notifications", "deliveries")
            for r in con.execute(f"SELECT * FROM {t_}").fetchall()
        )
    assert "xoxb-secret-token" not in stored + caplog.text + " ".join(d.detail for d in d1 + d2)


def test_unreachable_and_unconfigured_channels(db):
    port = free_port()  # nothing listens here
    t = Transports.from_env({"DISCORD_WEBHOOK_URL": f"http://127.0.0.1:{port}/hook"})
    _enqueue(db, _row("discord", t), _row("email", t))
    results = _deliver(db, t, AT)
    assert [(d.channel, d.ok) for d in results] == [("discord", False), ("email", False)]
    assert "discord webhook: unreachable (ConnectError)" == results[0].detail
    assert "email is not configured" in results[1].detail


@pytest.mark.parametrize(
    "env, message",
    [
        ({"SMTP_HOST": "h", "SMTP_TLS": "tls1.3"}, "SMTP_TLS='tls1.3'"),
        ({"SMTP_HOST": "h", "SMTP_PORT": "smtp"}, "SMTP_PORT='smtp' is not a port"),
        ({"ALERT_EMAIL": "a@example.org\nBcc: x@y.z"}, "is not an email address"),
    ],
)
def test_bad_environment_is_named(env, message):
    with pytest.raises(ConfigError, match=message):
        Transports.from_env(env)


def test_secrets_never_in_repr():
    t = Transports.from_env(
        {
            "SMTP_HOST": "h",
            "SMTP_PASSWORD": "pw1",
            "MAILCHANNELS_API_KEY": "k2",
            "SLACK_WEBHOOK_URL": "https://hooks/s3",
            "DISCORD_WEBHOOK_URL": "https://d/s4",
        }
    )
    text = repr(t)
    assert not any(s in text for s in ("pw1", "k2", "s3", "s4"))


def test_recipients_per_severity():
    nc = NotifyConfig(
        critical=("oncall@example.org", "team@example.org"), warning=("team@example.org",)
    )
    t = Transports.from_env({"ALERT_EMAIL": "fallback@example.org", "SMTP_HOST": "h"})
    assert notices.alert_recipients(nc, t, {"critical", "warning"}) == (
        "oncall@example.org",
        "team@example.org",
    )
    assert notices.alert_recipients(nc, t, {"warning"}) == ("team@example.org",)
    assert notices.alert_recipients(nc, t, {"info"}) == (
        "fallback@example.org",
    )  # none configured: ALERT_EMAIL
    warn = lifecycle.InstanceState(
        "edge", "", "edge_hit_rate", "warning", lifecycle.State.FIRING, AT, AT, firing_since=AT
    )
    row = notices.render(lifecycle.Notice("email", "new", (warn,), (), AT), None, nc, t)
    assert json.loads(row.payload)["to"] == ["team@example.org"]


class FakeSmtp:
    """An SMTP session that keeps what it is given (Transports.smtp_open)."""

    def __init__(self):
        self.sent, self.closed = [], False

    def __call__(self, smtp, deadline, timeout):
        self.deadline = deadline
        return self

    def send_message(self, msg):
        self.sent.append(msg)

    def quit(self):
        pass

    def close(self):
        self.closed = True


def test_email_date_is_the_callers_clock_not_the_wall_clock(db):
    session = FakeSmtp()
    t = Transports(Smtp("mail.invalid", 25, "none"), alert_email=("a@example.org",))
    t = replace(t, smtp_open=session)
    _enqueue(db, _row("email", t))
    later = AT + timedelta(days=3, minutes=7)  # a fake clock, far from the machine's
    sent = _flush(db, t, later)
    assert [d.ok for d in sent.deliveries] == [True] and session.closed
    assert session.sent[0]["Date"] == format_datetime(later) == "Sun, 22 Nov 2026 09:52:00 +0000"


def test_smtp_deadline_runs_on_the_injected_clock(db):
    ticks = iter([100.0, 100.0 + NC.timeout.total_seconds() + 1])  # the send starts, then expires

    def slow_server(smtp, deadline, timeout):
        deadline.remaining()  # connecting: the deadline has passed by now
        raise AssertionError("unreachable")

    t = replace(
        Transports(Smtp("mail.invalid", 25, "none"), alert_email=("a@example.org",)),
        smtp_open=slow_server,
        clock=lambda: next(ticks),
    )
    _enqueue(db, _row("email", t))
    d = _flush(db, t, AT).deliveries[0]
    assert not d.ok and d.detail == "SMTP server mail.invalid:25: no complete answer within 10 s"


def test_webhook_post_is_injected(db):
    posts = []

    def post(method, url, **kw):
        posts.append((method, url, kw["json"]["text"], kw["limit"]))
        return outbound.Answer(200, {}, b"", True)

    t = Transports(slack_url="https://hooks.invalid/T/B/secret", post=post)
    _enqueue(db, _row("slack", t))
    assert [d.ok for d in _flush(db, t, AT).deliveries] == [True]
    assert posts == [
        ("POST", "https://hooks.invalid/T/B/secret", "[BooksTrack Cache] CRITICAL: p99_latency", 10)
    ]


def test_flush_is_one_call_with_outcomes_and_lines(db):
    answers = [500, 200, 200]  # slack refuses once, then takes its retry

    def post(method, url, **kw):
        return outbound.Answer(answers.pop(0), {}, b"server error", True)

    t = Transports(
        slack_url="https://hooks.invalid/s", discord_url="https://d.invalid/d", post=post
    )
    with store_db.writer(db, AT) as con:
        with notify_outbox.delivery_round(con, NC, t, AT) as r:
            notify_outbox.enqueue(con, _row("slack", t))
            notify_outbox.enqueue(con, _row("discord", t))
            assert r.flush is notify_outbox.NOTHING  # delivered when the block ends, not before
        sent = r.flush
    assert [(d.channel, d.ok) for d in sent.deliveries] == [("slack", False), ("discord", True)]
    assert [(o.channel, o.state) for o in sent.outcomes] == [
        ("slack", notify_outbox.Fate.FAILED),
        ("discord", notify_outbox.Fate.SENT),
    ]
    assert not sent.ok and (sent.sent, sent.failed) == (1, 1)
    assert sent.lines[0].startswith("delivery 1 via slack: failed: slack webhook rejected")
    assert sent.lines[1] == "delivery 2 via discord: sent"
    with store_db.writer(db, AT + timedelta(hours=2)) as con:
        again = notify_outbox.flush(con, NC, t, AT + timedelta(hours=2))  # no mark: none of its own
    assert again.ok and again.outcomes == () and again.lines == ("delivery 1 via slack: sent",)


def test_a_round_delivers_nothing_when_its_block_fails_or_in_a_dry_run(db):
    posts = []

    def post(method, url, **kw):
        posts.append(url)
        return outbound.Answer(200, {}, b"ok", True)

    t = Transports(slack_url="https://hooks.invalid/s", post=post)
    with store_db.writer(db, AT) as con:
        with pytest.raises(RuntimeError):
            with notify_outbox.delivery_round(con, NC, t, AT) as failed:
                notify_outbox.enqueue(con, _row("slack", t))
                raise RuntimeError("the caller's own failure")
        with notify_outbox.delivery_round(con, NC, t, AT, dry_run=True) as dry:
            pass
    assert (
        failed.flush is notify_outbox.NOTHING and dry.flush is notify_outbox.NOTHING and posts == []
    )
    assert _flush(db, t, AT).lines == ("delivery 1 via slack: sent",)  # the deliver job's turn


def _flush(db, t, now) -> notify_outbox.Flush:
    with store_db.writer(db, now) as con:
        return notify_outbox.flush(con, NC, t, now)


def test_notify_never_imports_alerts():
    """notify is below alerts: the alert parts of a message live in cachemon.alerts."""
    package = Path(notify_outbox.__file__).parent
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not any(n.startswith("cachemon.alerts") for n in names), path.name
