"""Outbound calls are bounded and a broken channel fails alone.

Misbehaving servers on 127.0.0.1 (tests/servers.py): one that answers a
byte at a time (a slow-drip webhook, a stalling SMTP banner), one that
answers an endless body. Every outbound caller (webhook, MailChannels,
SMTP, Analytics Engine, Workers KV) gives up at its total deadline or its
byte cap. A Slack URL with a trailing newline and an email address with a
line break fail their own delivery, with a clear message; the Discord
notification queued behind them is delivered, and nothing reaches a header."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from datetime import timedelta

import pytest

from cachemon import config, outbound, settings
from cachemon.alerts import lifecycle, notices
from cachemon.errors import ConfigError, SourceError
from cachemon.notify import outbox as notify_outbox
from cachemon.notify.transports import NotifyError, Transports, send
from cachemon.settings import NotifyConfig
from cachemon.sources.analytics_engine import Client, Credentials
from cachemon.store import db as store_db
from cachemon.tuning import promote
from tests.helpers import ROOT, T0
from tests.helpers.servers import DripServer, SmtpSink, WebhookSink

_BODY = b'{"meta": [], "data": [], "rows": 0}'
HTTP_OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
    len(_BODY),
    _BODY,
)
DEADLINE = 1.5  # seconds, for the fast scenarios
SLACK_URL = "/services/T0/B0/drip"


def _row(channel: str, t: Transports, nc: NotifyConfig, i: int = 0) -> notify_outbox.OutboxRow:
    at = T0 + timedelta(minutes=i)
    state = lifecycle.InstanceState(
        "p99_latency",
        "",
        "p99_latency",
        "critical",
        lifecycle.State.FIRING,
        at,
        at,
        value=900.0,
        threshold=500.0,
        message="P99 latency above threshold",
        firing_since=at,
    )
    return notices.render(lifecycle.Notice(channel, "new", (state,), (), at), None, nc, t)


def _enqueue(db, *rows) -> None:
    with store_db.writer(db, T0, publish=False) as con:
        for r in rows:
            notify_outbox.enqueue(con, r)


def _deliver(db, t, nc, now=T0 + timedelta(hours=1)):
    with store_db.writer(db, now, publish=False) as con:
        return notify_outbox.deliver(con, t, nc, now)


def _outbox(db) -> list[tuple]:
    with store_db.writer(db, T0 + timedelta(hours=2), publish=False) as con:
        return con.execute(
            "SELECT channel, status, attempts, last_error FROM notifications ORDER BY id"
        ).fetchall()


def _call_webhook(url, tmp_path):
    nc = replace(NotifyConfig(), timeout=timedelta(seconds=DEADLINE))
    t = Transports.from_env({"SLACK_WEBHOOK_URL": url})
    db = tmp_path / "o.duckdb"
    _enqueue(db, _row("slack", t, nc))
    (d,) = _deliver(db, t, nc)
    assert not d.ok
    return d.detail


def _call_mailchannels(url, tmp_path):
    nc = replace(NotifyConfig(), timeout=timedelta(seconds=DEADLINE))
    t = Transports.from_env(
        {
            "MAILCHANNELS_API_KEY": "mc-key-1234",
            "MAILCHANNELS_API_URL": url,
            "ALERT_EMAIL": "oncall@example.org",
        }
    )
    with pytest.raises(NotifyError) as err:
        send(t, "email", json.loads(_row("email", t, nc).payload), nc.timeout, T0)
    return str(err.value)


def _call_ae(url, tmp_path):
    base = url.rsplit("/", 1)[0]
    ae = replace(settings.AnalyticsEngineConfig(), timeout=timedelta(seconds=DEADLINE), retries=0)
    with pytest.raises(SourceError) as err:
        Client(Credentials("acct", "ae-token-1234", base), ae, sleep=lambda s: None).query(
            "SELECT 1 FORMAT JSON"
        )
    return str(err.value)


def _call_kv(url, tmp_path):
    kv = promote.KvClient(url.rsplit("/", 1)[0], "acct", "ns", "kv-token-1234", timeout=DEADLINE)
    with pytest.raises(promote.PromotionError) as err:
        kv.get(promote.CONFIG_KEY)
    return str(err.value)


CALLERS = {
    "slack webhook": _call_webhook,
    "MailChannels": _call_mailchannels,
    "Analytics Engine": _call_ae,
    "Workers KV": _call_kv,
}


def test_every_outbound_caller_stops_at_its_total_deadline(tmp_path, results):
    """The server answers a 200 one byte every 0.5 s: each read is quick, so
    a per-read timeout never fires; the whole answer would take ~50 s."""
    server = DripServer(HTTP_OK, interval=0.5)
    took = {}
    # The first outbound call of a process imports httpx (kept out of every
    # command's start-up): import it before the clocks start, so each figure
    # is the call's own.
    assert outbound.bad_url(server.url("/x/y")) == ""
    try:
        for name, call in CALLERS.items():
            start = time.monotonic()
            detail = call(server.url("/x/y"), tmp_path / name.replace(" ", "_"))
            took[name] = time.monotonic() - start
            assert "1.5 s" in detail, (name, detail)
        took["SMTP"], detail = _smtp_drip(
            DripServer(b"220 drip.example ESMTP ready\r\n", 0.5, read_first=False)
        )
        assert "no complete answer within 1.5 s" in detail
    finally:
        server.close()
    assert all(DEADLINE - 0.1 < s < DEADLINE + 1.0 for s in took.values()), took
    results(
        "slow-drip servers (every outbound caller)",
        "a 200 answered one byte every 0.5 s (webhook, MailChannels, Analytics Engine, KV); an SMTP banner "
        "dripped the same way",
        f"{len(took)} callers, deadline {DEADLINE:g} s",
        f"each gave up at {min(took.values()):.1f}–{max(took.values()):.1f} s with a 'timed out' error; "
        "the notification stays queued",
    )


def _smtp_drip(server: DripServer) -> tuple[float, str]:
    nc = replace(NotifyConfig(), timeout=timedelta(seconds=DEADLINE))
    try:
        t = Transports.from_env(
            {
                "SMTP_HOST": "127.0.0.1",
                "SMTP_PORT": str(server.port),
                "SMTP_TLS": "none",
                "ALERT_EMAIL": "oncall@example.org",
            }
        )
        start = time.monotonic()
        with pytest.raises(NotifyError) as err:
            send(t, "email", json.loads(_row("email", t, nc).payload), nc.timeout, T0)
        return time.monotonic() - start, str(err.value)
    finally:
        server.close()


def test_endless_answers_are_cut_at_the_byte_cap(tmp_path, results):
    """A server streams zeros without end: a webhook's error page is read up
    to 16 KiB, an Analytics Engine or KV answer up to its cap."""
    error = DripServer(b"HTTP/1.1 500 Oops\r\n\r\n", interval=0, endless=True)
    ok = DripServer(b"HTTP/1.1 200 OK\r\n\r\n", interval=0, endless=True)
    try:
        start = time.monotonic()
        webhook = _call_webhook(error.url(SLACK_URL), tmp_path)
        ae = replace(settings.AnalyticsEngineConfig(), timeout=timedelta(seconds=20), retries=0)
        with pytest.raises(SourceError, match="more than 1,048,576 bytes; nothing was written"):
            Client(Credentials("acct", "t0k3n-1234", ok.url("/c")), ae, max_bytes=1 << 20).query(
                "SELECT 1 FORMAT JSON"
            )
        kv = promote.KvClient(ok.url("").rstrip("/"), "acct", "ns", "kv-token-1234", timeout=20)
        with pytest.raises(promote.PromotionError, match="larger than 1,048,576 bytes"):
            kv.get(promote.CONFIG_KEY)
        took = time.monotonic() - start
    finally:
        error.close()
        ok.close()
    assert "HTTP 500" in webhook and len(webhook) < 400
    assert took < 10
    results(
        "endless answers",
        "a 500 and a 200 whose bodies never end (zeros at loopback speed)",
        "3 callers (webhook, Analytics Engine, KV)",
        f"all stopped at their cap (16 KiB error text, 1 MiB answers) in {took:.1f} s; clear errors",
    )


def _cli(env, *args):
    return subprocess.run(
        [sys.executable, "-m", "cachemon", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _cli_env(tmp_path, db, **extra):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[notify]\ntimeout = "3s"\n')
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CACHEMON_", "SLACK_", "DISCORD_", "SMTP_"))
    }
    return dict(env, CACHEMON_DB=str(db), CACHEMON_CONFIG=str(cfg), PYTHONPATH=str(ROOT), **extra)


def test_deliver_with_a_two_second_drip_webhook_ends_at_the_deadline(tmp_path, results):
    """The issue's case: one byte every two seconds. `alerts deliver` ends
    after the 3 s deadline instead of minutes later."""
    db, server = tmp_path / "d.duckdb", DripServer(HTTP_OK, interval=2.0)
    try:
        env = _cli_env(tmp_path, db, SLACK_WEBHOOK_URL=server.url(SLACK_URL))
        nc = replace(NotifyConfig(), timeout=timedelta(seconds=3))
        _enqueue(db, _row("slack", Transports.from_env(env), nc))
        start = time.monotonic()
        out = _cli(env, "alerts", "deliver")
        took = time.monotonic() - start
    finally:
        server.close()
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "via slack: failed: slack webhook: timed out after 3 s (total deadline)" in out.stdout
    assert took < 15  # the whole answer would take 2 s a byte: minutes
    assert _outbox(db) == [
        ("slack", "pending", 1, "slack webhook: timed out after 3 s (total deadline)")
    ]
    results(
        "slow-drip webhook, `alerts deliver`",
        "a 200 answered one byte every 2 s",
        "1 command, deadline 3 s",
        f"command ended in {took:.1f} s (exit 1, the failure recorded on the delivery; the answer would "
        f"have taken {2 * len(HTTP_OK)} s)",
    )


def test_a_broken_slack_url_fails_alone_and_discord_is_delivered(tmp_path, results):
    db, hooks = tmp_path / "b.duckdb", WebhookSink()
    try:
        env = _cli_env(
            tmp_path,
            db,
            SLACK_WEBHOOK_URL=hooks.url("/slack/T0/B0/secret-0001") + "\n",
            DISCORD_WEBHOOK_URL=hooks.url("/discord/1/token-0002"),
        )
        t, nc = Transports.from_env(env), NotifyConfig()
        _enqueue(db, _row("slack", t, nc), _row("discord", t, nc, 1))
        out = _cli(env, "alerts", "deliver")
        discord = hooks.accepted("/discord/1/token-0002")
    finally:
        hooks.close()
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "delivery 2 via discord: sent" in out.stdout
    error = (
        "slack webhook: cannot send: the URL contains a line break, space or control character "
        "(check SLACK_WEBHOOK_URL)"
    )
    assert f"delivery 1 via slack: failed: {error}" in out.stdout
    assert len(discord) == 1 and not [r for r in hooks.requests if r["path"].startswith("/slack")]
    assert _outbox(db) == [("slack", "pending", 1, error), ("discord", "sent", 1, None)]
    assert "secret-0001" not in out.stdout + out.stderr
    results(
        "broken channel",
        "SLACK_WEBHOOK_URL with a trailing newline; a Discord notification queued behind it",
        "2 notifications, 1 `alerts deliver`",
        "no traceback; Slack failed alone with a clear message (kept queued, retried); Discord delivered",
    )


def test_line_breaks_never_reach_email_headers(tmp_path, results):
    refused = 0
    for env in (
        {"ALERT_EMAIL": "oncall@example.org\r\nBcc: evil@example.org"},
        {
            "ALERT_EMAIL": "oncall@example.org",
            "ALERT_FROM": "ops@example.org\nBcc: evil@example.org",
        },
    ):
        with pytest.raises(ConfigError, match=r"is not an email address"):
            Transports.from_env(env)
        refused += 1
    for bad in (
        {"email_from": "ops@example.org\n"},
        {"critical": ("oncall@example.org\n",)},
        {"report": ("a@example.org\r",)},
    ):
        with pytest.raises(ConfigError, match=r"is not an email address"):
            NotifyConfig(**bad)
        refused += 1
    # A trailing newline around an address in the environment is only whitespace: cleaned.
    t = Transports.from_env(
        {"ALERT_EMAIL": "oncall@example.org\n", "ALERT_FROM": "ops@example.org\n"}
    )
    assert t.alert_email == ("oncall@example.org",) and t.sender == "ops@example.org"

    # An outbox row written before this check (an older store) with a line
    # break in a recipient: refused at the header, and Discord goes on.
    db, smtp, hooks = tmp_path / "e.duckdb", SmtpSink().start(), WebhookSink()
    try:
        t = Transports.from_env(
            {
                **smtp.env(),
                "ALERT_EMAIL": "oncall@example.org",
                "DISCORD_WEBHOOK_URL": hooks.url("/discord"),
            }
        )
        nc = NotifyConfig()
        email = _row("email", t, nc)
        payload = json.loads(email.payload) | {"to": ["oncall@example.org\nBcc: evil@example.org"]}
        _enqueue(db, replace(email, payload=json.dumps(payload)), _row("discord", t, nc, 1))
        d = _deliver(db, t, nc)
    finally:
        smtp.stop()
        hooks.close()
    assert [(x.channel, x.ok) for x in d] == [("email", False), ("discord", True)]
    assert (
        "email recipient 'oncall@example.org\\nBcc: evil@example.org' is not an email address"
        in d[0].detail
    )
    assert smtp.messages == [] and len(hooks.accepted("/discord")) == 1
    results(
        "line breaks in email addresses",
        "CR/LF in ALERT_EMAIL, ALERT_FROM, [notify] addresses and in a stored recipient",
        f"{refused + 1} addresses",
        f"{refused} refused at load naming the setting; the stored one refused at send (0 emails sent), "
        "Discord delivered; a trailing newline alone is trimmed",
    )


def test_the_runner_stops_on_sigterm_while_a_webhook_drips(tmp_path, results):
    """The issue's runner: SIGTERM while `deliver` waits on a webhook that
    drips a byte every 2 s. The runner finishes the job in progress, which
    now ends at the 3 s deadline, and exits."""
    db, server = tmp_path / "j.duckdb", DripServer(HTTP_OK, interval=2.0)
    cfg = tmp_path / "j.toml"
    cfg.write_text(
        '[simulator]\nseed = 5\nrequests_per_hour = 3000\ncatalog_keys = 2000\n[notify]\ntimeout = "3s"\n'
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CACHEMON_", "SLACK_", "DISCORD_", "SMTP_"))
    }
    env = dict(
        env,
        CACHEMON_DB=str(db),
        CACHEMON_CONFIG=str(cfg),
        PYTHONPATH=str(ROOT),
        SLACK_WEBHOOK_URL=server.url(SLACK_URL),
    )
    nc = replace(NotifyConfig(), timeout=timedelta(seconds=3))
    _enqueue(db, _row("slack", Transports.from_env(env), nc))
    runner = subprocess.Popen(
        [sys.executable, "-m", "jobs", "--clock-start", "2026-11-19T08:20:00Z"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        limit = time.monotonic() + 90
        while server.connections == 0 and time.monotonic() < limit and runner.poll() is None:
            time.sleep(0.05)
        assert server.connections > 0, "the runner never called the webhook"
        runner.send_signal(signal.SIGTERM)
        start = time.monotonic()
        out, _ = runner.communicate(timeout=60)
        took = time.monotonic() - start
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.communicate()
        server.close()
    assert runner.returncode == 0 and "runner stopped" in out, out
    assert took < 3 + 3, (took, out)
    assert "slack webhook: timed out after 3 s (total deadline)" in out
    status = dict((c, s) for c, s, _, _ in _outbox(db))
    assert status["slack"] == "pending"  # kept, to be retried by the next runner
    results(
        "SIGTERM to the runner during a slow-drip delivery",
        "a webhook answering one byte every 2 s; SIGTERM while `deliver` waits on it",
        "1 runner, deadline 3 s",
        f"the runner stopped {took:.1f} s after SIGTERM (exit 0); the notification stays queued",
    )


def test_a_call_from_inside_an_event_loop_is_bounded_too():
    """An async caller (a server's handler) gets the same deadline: the call
    runs on a helper thread with its own loop and ends with it."""
    import asyncio

    from cachemon import outbound

    server = DripServer(HTTP_OK, interval=0.5)

    async def handler():
        with pytest.raises(outbound.DeadlineExceeded, match="within 1 s"):
            outbound.call("POST", server.url("/hook"), limit=1.0, max_bytes=1024)

    try:
        start = time.monotonic()
        asyncio.run(handler())
        assert time.monotonic() - start < 2.5
    finally:
        server.close()


def test_a_bad_email_setting_fails_alone_in_the_runner(tmp_path, monkeypatch, results):
    """A broken email setting (SMTP_TLS typo) must not stop the runner's
    other channels: Discord is delivered, the job is recorded as failed
    naming the setting, and email is left out (not queued to fail forever)."""
    from jobs.__main__ import Jobs

    db, hooks = tmp_path / "j.duckdb", WebhookSink()
    try:
        env = {
            "SMTP_HOST": "127.0.0.1",
            "SMTP_TLS": "tls1.3",
            "DISCORD_WEBHOOK_URL": hooks.url("/discord"),
        }
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        t = Transports.from_env(env, strict=False)
        assert t.email_problem == "SMTP_TLS='tls1.3': use none, starttls or ssl"
        assert t.channels(NotifyConfig()) == ("discord",)
        _enqueue(db, _row("discord", t, NotifyConfig()))
        cfg = config.with_db(config.load(None), str(db))
        deliver = dict((spec.name, fn) for spec, fn in Jobs(cfg).registry())["deliver"]
        with pytest.raises(ConfigError, match=r"email left out: SMTP_TLS='tls1.3'"):
            deliver(T0 + timedelta(hours=1))
    finally:
        hooks.close()
    assert len(hooks.accepted("/discord")) == 1
    assert _outbox(db) == [("discord", "sent", 1, None)]
    with pytest.raises(ConfigError, match="SMTP_TLS"):  # the operator's own command stays strict
        Transports.from_env(env)
    results(
        "broken email setting in the runner",
        "SMTP_TLS typo with Discord configured",
        "1 deliver job",
        "Discord delivered; the job recorded as failed naming SMTP_TLS; email left out, not queued",
    )
