"""What a command says about its notifications is what happened: a
command that queues and delivers (`costs report`, `alerts check`) names,
per notification, sent / failed (with the reason, kept for retry) / still
queued (and why), and exits non-zero unless all went out. A bad SMTP_PORT
is refused when the environment is read, before anything is stored.
Real `cachemon` processes, a real SMTP sink and a dead port on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from cachemon.errors import ConfigError
from cachemon.notify.transports import Transports
from cachemon.store import db as store_db
from tests.helpers import ALWAYS_RULE, ROOT, T0
from tests.helpers.servers import SmtpSink, free_port

DAY = "2026-11-19"


def _copy(loaded_store, tmp_path):
    # The whole folder: a reader reads the store's published snapshot beside it.
    shutil.copytree(loaded_store[0].parent, tmp_path / "s")
    return tmp_path / "s" / loaded_store[0].name


def _cli(db, env_extra: dict, *args, config=None):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SMTP_", "SLACK_", "DISCORD_", "ALERT_", "MAILCHANNELS_", "CACHEMON_"))
    }
    env.update(CACHEMON_DB=str(db), PYTHONPATH=str(ROOT), **env_extra)
    if config:
        env["CACHEMON_CONFIG"] = str(config)
    return subprocess.run(
        [sys.executable, "-m", "cachemon", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _outbox(db):
    """(id, channel, status, attempts) of every notification, and the attempts logged per notification."""
    with store_db.reader(db) as con:
        rows = con.execute(
            "SELECT id, channel, status, attempts FROM notifications ORDER BY id"
        ).fetchall()
        tried = dict(
            con.execute("SELECT notification_id, count(*) FROM deliveries GROUP BY ALL").fetchall()
        )
    return rows, tried


def test_costs_report_says_per_channel_what_happened(loaded_store, tmp_path, results):
    db = _copy(loaded_store, tmp_path)
    smtp = SmtpSink().start()
    dead = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    env = {**smtp.env(), "ALERT_EMAIL": "oncall@example.org", "SLACK_WEBHOOK_URL": dead}
    try:
        first = _cli(db, env, "costs", "report", "--date", DAY)
        rows, tried = _outbox(db)
        # Independent truth: the sink got exactly one email; the Slack row is pending after one attempt.
        assert len(smtp.messages) == 1
        assert [(ch, st, n) for _, ch, st, n in rows] == [
            ("email", "sent", 1),
            ("slack", "pending", 1),
        ]
        email_id, slack_id = rows[0][0], rows[1][0]
        assert first.returncode == 1, first.stderr
        assert "sent via" not in first.stderr
        assert f"delivery {email_id} via email: sent" in first.stderr
        assert f"delivery {slack_id} via slack: failed: slack webhook: unreachable" in first.stderr
        assert "kept in the outbox, retried from" in first.stderr
        assert dead not in first.stderr + first.stdout  # the webhook URL is a secret

        # Again with --resend: the new Slack notification waits behind the failed one, never tried.
        again = _cli(db, env, "costs", "report", "--date", DAY, "--resend")
        rows, tried = _outbox(db)
        new_slack = [r for r in rows if r[1] == "slack"][-1]
        assert new_slack[2] == "pending" and new_slack[0] not in tried
        assert again.returncode == 1
        assert (
            f"notification {new_slack[0]} via slack: queued, not sent yet: waits behind notification "
            f"{slack_id}"
        ) in again.stderr
    finally:
        smtp.stop()
    results(
        "notification claims: costs report",
        "Slack webhook on a dead port, SMTP up; then --resend",
        "2 runs, 4 notifications",
        "per notification: email sent, Slack failed (reason, kept for retry), the resent one queued behind "
        "it (never tried); exit 1 both times, never `sent via`",
    )


def test_alerts_check_exits_non_zero_when_a_send_failed(loaded_store, tmp_path, results):
    db = _copy(loaded_store, tmp_path)
    cfg = tmp_path / "rules.toml"
    cfg.write_text(ALWAYS_RULE)
    dead = f"http://127.0.0.1:{free_port()}/hook"
    at = (T0.replace(hour=10, minute=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    p = _cli(db, {"SLACK_WEBHOOK_URL": dead}, "alerts", "check", "--at", at, config=cfg)
    rows, _ = _outbox(db)
    assert [(ch, st, n) for _, ch, st, n in rows] == [("slack", "pending", 1)]
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"delivery {rows[0][0]} via slack: failed: slack webhook: unreachable" in p.stdout
    results(
        "notification claims: alerts check",
        "an alert firing, Slack webhook on a dead port",
        "1 check",
        "`queued slack` then `delivery 1 via slack: failed: … unreachable`, exit 1 (was exit 0)",
    )


@pytest.mark.parametrize("port", ["99999", "0", "65536", "-1", "٣", "25x"])
def test_a_bad_smtp_port_is_refused_when_read(port):
    with pytest.raises(ConfigError, match=r"SMTP_PORT=.* is not a port number \(1 to 65535\)"):
        Transports.from_env({"SMTP_HOST": "127.0.0.1", "SMTP_PORT": port})


def test_good_smtp_ports_are_taken():
    for port in ("1", "25", "65535"):
        assert Transports.from_env({"SMTP_HOST": "127.0.0.1", "SMTP_PORT": port}).smtp.port == int(
            port
        )


def test_costs_report_with_a_bad_smtp_port_stores_nothing(loaded_store, tmp_path, results):
    db = _copy(loaded_store, tmp_path)
    with store_db.reader(db) as con:
        before = con.execute("SELECT count(*) FROM cost_reports").fetchone()[0]
    p = _cli(
        db,
        {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": "99999", "ALERT_EMAIL": "a@example.org"},
        "costs",
        "report",
        "--date",
        DAY,
    )
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        "cachemon: error: SMTP_PORT='99999' is not a port number (1 to 65535)"
    ]
    with store_db.reader(db) as con:
        assert con.execute("SELECT count(*) FROM cost_reports").fetchone()[0] == before
    assert _outbox(db) == ([], {})
    results(
        "bad SMTP_PORT",
        "SMTP_PORT=99999 for costs report",
        "1 run",
        "one `cachemon: error:` line naming SMTP_PORT and 1 to 65535, exit 2; no report, no notification stored",
    )
