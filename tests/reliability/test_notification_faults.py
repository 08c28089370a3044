"""Notification faults: for an hour (simulated) the SMTP server is down and
then refuses every recipient, the Slack and Discord webhooks answer 500
and are slow; notifications keep arriving every five minutes. The outbox
is delivered every minute, as the runner does. Once service returns,
everything is delivered, once each, in order per channel."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from cachemon.alerts import lifecycle, notices
from cachemon.notify import outbox as notify_outbox
from cachemon.notify.transports import Transports
from cachemon.settings import NotifyConfig
from cachemon.store import db as store_db
from cachemon.store import snapshots
from tests.helpers.servers import SmtpSink, WebhookSink

T0 = datetime(2026, 11, 19, 9, 0, tzinfo=UTC)
NC = replace(NotifyConfig(), timeout=timedelta(seconds=1))
CHANNELS = ("email", "slack", "discord")


def _notice(channel: str, i: int, t: Transports) -> notify_outbox.OutboxRow:
    at = T0 + timedelta(minutes=5 * i)
    state = lifecycle.InstanceState(
        f"rule_{i}",
        "",
        "p99_latency",
        "critical",
        lifecycle.State.FIRING,
        at,
        at,
        value=900.0 + i,
        threshold=500.0,
        message=f"notice {i}",
        firing_since=at,
    )
    return notices.render(lifecycle.Notice(channel, "new", (state,), (), at), None, NC, t)


def test_notification_faults_then_everything_delivered_once_in_order(tmp_path, results):
    db = tmp_path / "n.duckdb"
    smtp, hooks = SmtpSink().start(), WebhookSink()
    env = {
        **smtp.env(),
        "ALERT_EMAIL": "oncall@example.org",
        "SLACK_WEBHOOK_URL": hooks.url("/slack"),
        "DISCORD_WEBHOOK_URL": hooks.url("/discord"),
    }
    t = Transports.from_env(env)
    queued, failures = {c: [] for c in CHANNELS}, Counter()
    try:
        for minute in range(0, 4 * 60):
            now = T0 + timedelta(minutes=minute)
            # The faults of the first hour; then every service is back.
            if minute == 0:
                smtp.stop()
                hooks.status, hooks.delay = 500, 0.6
            elif minute == 20:
                smtp.start()
                smtp.inbox.reject_recipients = True
            elif minute == 40:
                smtp.inbox.reject_recipients = False
                hooks.status = 200
            elif minute == 60:
                hooks.delay = 0.0
            with store_db.writer(db, now, publish=False) as con:
                if minute % 5 == 0 and minute < 60:
                    for c in CHANNELS:
                        row = _notice(c, minute // 5, t)
                        notify_outbox.enqueue(con, row)
                        queued[c].append(json.loads(row.payload))
                for d in notify_outbox.deliver(con, t, NC, now):
                    failures[d.channel] += not d.ok
        emails = [m["Subject"] for m in smtp.messages]
        slack = [
            r["json"]["text"] for r in hooks.requests if r["path"] == "/slack" and r["status"] < 300
        ]
        discord = [
            r["json"]["content"]
            for r in hooks.requests
            if r["path"] == "/discord" and r["status"] < 300
        ]
    finally:
        smtp.stop()
        hooks.close()
    snapshots.publish_snapshot(db)
    with store_db.reader(db) as con:
        statuses = Counter(s for (s,) in con.execute("SELECT status FROM notifications").fetchall())
        attempts = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE NOT ok) FROM deliveries"
        ).fetchall()[0]
    n = len(queued["email"])
    assert statuses == {"sent": 3 * n}
    assert emails == [p["subject"] for p in queued["email"]]  # each once, in order
    assert slack == [p["text"] for p in queued["slack"]]
    assert discord == [p["content"] for p in queued["discord"]]
    assert failures["email"] > 0 and failures["slack"] > 0 and attempts[1] == sum(failures.values())
    results(
        "notification faults (an hour, simulated)",
        "SMTP down 20 min, then refusing recipients 20 min; Slack and Discord webhooks 500 for 40 min "
        "and slow (0.6 s) for an hour",
        f"{3 * n} notifications, {attempts[0]} delivery attempts",
        f"{attempts[1]} failed attempts retried with backoff; all {3 * n} delivered once each, "
        "in order per channel, after service returned",
    )
