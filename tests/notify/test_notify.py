"""Channels and the outbox against real servers on loopback."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import pytest
import trustme

from cachemon.alerts import lifecycle as lc
from cachemon.errors import ConfigError
from cachemon.notify import outbox as notify
from cachemon.settings import NotifyConfig
from cachemon.store import db as store
from tests.helpers.servers import SmtpSink, WebhookSink, free_port

AT = datetime(2026, 11, 19, 9, 45, tzinfo=UTC)
NC = NotifyConfig()
ALERT = lc.InstanceState(
    "p99_latency",
    "",
    "p99_latency",
    "critical",
    lc.FIRING,
    AT,
    AT,
    value=900.0,
    threshold=500.0,
    message="P99 latency above threshold: 900 ms (threshold 500 ms)",
    firing_since=AT,
)


def _row(channel: str, t: notify.Transports, at=AT) -> notify.OutboxRow:
    return notify.render(lc.Notice(channel, "new", (ALERT,), (), at), None, NC, t)


def _enqueue(db, *rows):
    with store.writer(db, AT) as con:
        for r in rows:
            notify.enqueue(con, r)


def _deliver(db, t, now):
    with store.writer(db, now) as con:
        return notify.deliver(con, t, NC, now)


@pytest.mark.filterwarnings(
    "ignore:Requiring AUTH while not requiring TLS"
)  # implicit TLS: it is TLS
def test_smtp_over_implicit_tls_with_login(db, tmp_path):
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    sink = SmtpSink(tls="ssl", ca=ca, user="mailer", password="pw-123456").start()
    try:
        t = notify.Transports.from_env(
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
        t = notify.Transports.from_env(env)
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
        t = notify.Transports.from_env(env)
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
        t = notify.Transports.from_env(
            {"SLACK_WEBHOOK_URL": hooks.url("/services/T/B/xoxb-secret-token")}
        )
        first = _row("slack", t)
        gone = lc.InstanceState("p99_latency", "", "p99_latency", "critical", lc.RESOLVED, AT, AT)
        second = notify.render(lc.Notice("slack", "resolved", (), (gone,), AT), None, NC, t)
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
    with store.reader(db) as con:
        stored = " ".join(
            str(r)
            for t_ in ("notifications", "deliveries")
            for r in con.execute(f"SELECT * FROM {t_}").fetchall()
        )
    assert "xoxb-secret-token" not in stored + caplog.text + " ".join(d.detail for d in d1 + d2)


def test_unreachable_and_unconfigured_channels(db):
    port = free_port()  # nothing listens here
    t = notify.Transports.from_env({"DISCORD_WEBHOOK_URL": f"http://127.0.0.1:{port}/hook"})
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
        notify.Transports.from_env(env)


def test_secrets_never_in_repr():
    t = notify.Transports.from_env(
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
    t = notify.Transports.from_env({"ALERT_EMAIL": "fallback@example.org", "SMTP_HOST": "h"})
    assert notify.recipients(nc, t, {"critical", "warning"}) == (
        "oncall@example.org",
        "team@example.org",
    )
    assert notify.recipients(nc, t, {"warning"}) == ("team@example.org",)
    assert notify.recipients(nc, t, {"info"}) == (
        "fallback@example.org",
    )  # none configured: ALERT_EMAIL
    warn = lc.InstanceState(
        "edge", "", "edge_hit_rate", "warning", lc.FIRING, AT, AT, firing_since=AT
    )
    row = notify.render(lc.Notice("email", "new", (warn,), (), AT), None, nc, t)
    assert json.loads(row.payload)["to"] == ["team@example.org"]
