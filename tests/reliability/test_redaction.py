"""Secrets never come back through error text.

Careless servers on 127.0.0.1 (`EchoServer`) answer errors that repeat the
request's path and headers: a webhook's 404 echoing its secret path, a
MailChannels error echoing the API key, an Analytics Engine 400 and a
Workers KV 500 echoing the Authorization header. Everything cachemon then
printed, logged, stored and exported is searched for each secret (and each
token-like part of the webhook URL); the echo itself must be there, with
`[redacted]` in place of the secret, so the search proves something."""

from __future__ import annotations

import json
import os
import string
import subprocess
import sys
import urllib.parse
from datetime import timedelta

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachemon.alerts import lifecycle, notices
from cachemon.notify import outbox as notify_outbox
from cachemon.notify.transports import Transports
from cachemon.redact import LIMIT, MARK, MIN_SECRET, Redactor, secret_names
from cachemon.settings import NotifyConfig
from cachemon.store import db as store_db
from cachemon.store import export, snapshots
from cachemon.tuning import promote
from tests.helpers import ROOT, T0
from tests.helpers.servers import EchoServer

SLACK_SECRET = "B07CANARY/xoxbCanarySlackToken9f3e"
DISCORD_TOKEN = "canary-discord-token-77a1"
CANARIES = {
    "CF_API_TOKEN": "canary-cf-token-3b9d0e",
    "MAILCHANNELS_API_KEY": "canary-mc-key-51c2",
    "SLACK_WEBHOOK_URL": "xoxbCanarySlackToken9f3e",  # the URL's last segment, searched on its own too
    "DISCORD_WEBHOOK_URL": DISCORD_TOKEN,
}


def _cli(env, *args):
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _env(tmp_path, db, server: EchoServer, **extra) -> dict:
    cfg = tmp_path / "c.toml"
    cfg.write_text('source = "analytics_engine"\n[notify]\ntimeout = "5s"\n')
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CACHEMON_", "SLACK_", "DISCORD_", "SMTP_", "CF_"))
    }
    return dict(
        env,
        CACHEMON_DB=str(db),
        CACHEMON_CONFIG=str(cfg),
        PYTHONPATH=str(ROOT),
        SLACK_WEBHOOK_URL=server.url(f"/services/T0CANARY/{SLACK_SECRET}"),
        DISCORD_WEBHOOK_URL=server.url(f"/api/webhooks/123456789012/{DISCORD_TOKEN}"),
        MAILCHANNELS_API_KEY=CANARIES["MAILCHANNELS_API_KEY"],
        MAILCHANNELS_API_URL=server.url("/tx/v1/send"),
        ALERT_EMAIL="oncall@example.org",
        CF_API_TOKEN=CANARIES["CF_API_TOKEN"],
        CF_ACCOUNT_ID="acct",
        CF_API_BASE=server.url("/client/v4"),
        **extra,
    )


def _row(channel, t, i=0):
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
    return notices.render(
        lifecycle.Notice(channel, "new", (state,), (), at), None, NotifyConfig(), t
    )


def _store_texts(db) -> str:
    with store_db.reader(db) as con:
        cols = con.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'main' AND data_type = 'VARCHAR'"
        ).fetchall()
        return " ".join(
            str(v)
            for table, column in cols  # catalog names, not user text
            for (v,) in con.execute(f'SELECT "{column}" FROM "{table}"').fetchall()
        )


def _leaks(texts: dict[str, str]) -> list[tuple[str, str]]:
    return [
        (where, name)
        for where, text in texts.items()
        for name, value in CANARIES.items()
        if value in text
    ]


def test_echoed_secrets_are_redacted_everywhere(tmp_path, results):
    db, server = tmp_path / "r.duckdb", EchoServer(404)
    texts: dict[str, str] = {}
    try:
        env = _env(tmp_path, db, server)
        t = Transports.from_env(env)
        with store_db.writer(db, T0, publish=False) as con:
            for i, channel in enumerate(("email", "slack", "discord")):
                notify_outbox.enqueue(con, _row(channel, t, i))
        out = _cli(env, "cachemon", "alerts", "deliver")
        texts["alerts deliver"] = out.stdout + out.stderr
        server.status = 400  # Analytics Engine: a 400 echoing the Authorization header
        pull = _cli(env, "cachemon", "pull", "--quiet")
        texts["pull"] = pull.stdout + pull.stderr
        job = _cli(env, "jobs", "--once", "ingest")
        texts["runner ingest"] = job.stdout + job.stderr
        server.status = 500  # Workers KV
        kv = promote.KvClient.from_env({**env, "CF_KV_NAMESPACE_ID": "ns"})
        with pytest.raises(promote.PromotionError) as err:
            kv.get(promote.CONFIG_KEY)
        texts["kv error"] = str(err.value)
    finally:
        server.close()
    snapshots.publish_snapshot(db)
    history = _cli(
        env, "cachemon", "alerts", "history", "--since", "2026-11-01T00:00:00Z", "--json"
    )
    texts["alerts history --json"] = history.stdout + history.stderr
    text_history = _cli(env, "cachemon", "alerts", "history", "--since", "2026-11-01T00:00:00Z")
    texts["alerts history"] = text_history.stdout + text_history.stderr
    exported = _cli(env, "cachemon", "export", "--to", str(tmp_path / "export"))
    assert exported.returncode == 0, exported.stderr
    for f in (tmp_path / "export").rglob("*.parquet"):
        texts[f"export {f.parent.parent.name}"] = pq.read_table(f).to_pandas().to_csv()
    texts["store"] = _store_texts(db)

    # The servers did echo the secrets, and each place shows the redaction.
    assert len(server.requests) >= 5
    assert (
        out.returncode == 1 and pull.returncode == 2 and "Traceback" not in out.stderr + pull.stderr
    )
    for where in (
        "alerts deliver",
        "pull",
        "runner ingest",
        "kv error",
        "alerts history --json",
        "store",
        "export notifications",
        "export job_runs",
    ):
        assert MARK in texts[where], where
    assert (
        "HTTP 404 (check the URL or key): error: no route for POST [redacted]"
        in texts["alerts deliver"]
    )
    assert "Analytics Engine answered HTTP 400: error: no route for POST" in texts["pull"]
    notes = json.loads(history.stdout)["notifications"]
    assert len(notes) == 3 and all(
        MARK in n["last_error"] and len(n["last_error"]) < 2 * LIMIT for n in notes
    )
    assert not _leaks(texts)
    results(
        "secrets echoed by servers",
        "a webhook 404 echoing its path, MailChannels and Analytics Engine "
        "errors echoing the API key and Authorization header, a KV 500 echoing it",
        f"4 secrets, {len(server.requests)} echoing answers, {len(texts)} outputs searched",
        "0 occurrences in stdout, logs, deliveries, job runs, `alerts history --json` or the Parquet export; "
        "the echoes kept, redacted and cut to 300 characters",
    )


def test_an_older_store_is_redacted_at_the_output_edges(tmp_path, results):
    """Error text stored before redaction existed (or before a secret was
    set) is redacted again by `alerts history` and `export`."""
    db, secret = tmp_path / "old.duckdb", "canary-old-secret-81f0"
    t = Transports.from_env({"SLACK_WEBHOOK_URL": "https://hooks.example.org/x"})
    with store_db.writer(db, T0, publish=False) as con:
        notify_outbox.enqueue(con, _row("slack", t))
        con.execute(
            "UPDATE notifications SET last_error = ?", [f"rejected: token {secret} is invalid"]
        )
    snapshots.publish_snapshot(db)
    env = dict(
        {k: v for k, v in os.environ.items() if not k.startswith("CACHEMON_")},
        CACHEMON_DB=str(db),
        PYTHONPATH=str(ROOT),
        SMTP_PASSWORD=secret,
    )
    history = _cli(
        env, "cachemon", "alerts", "history", "--since", "2026-11-01T00:00:00Z", "--json"
    )
    with store_db.reader(db) as con:
        written = export.parquet(con, tmp_path / "export", redactor=Redactor.from_env(env))
    table = pq.read_table(tmp_path / "export" / "notifications").to_pandas()
    assert (
        json.loads(history.stdout)["notifications"][0]["last_error"]
        == f"rejected: token {MARK} is invalid"
    )
    assert list(table["last_error"]) == [f"rejected: token {MARK} is invalid"]
    assert secret not in history.stdout + history.stderr and any(w.rows for w in written)
    results(
        "secret already in an older store",
        "a delivery error holding SMTP_PASSWORD, written before redaction",
        "1 stored error, 2 outputs",
        "`alerts history --json` and the Parquet export show [redacted]",
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        ("GET /services/T0/B0/abcdef123456 not found", f"GET {MARK} not found"),
        ("unknown token abcdef123456 for T0", f"unknown token {MARK} for T0"),  # a segment alone
        (
            "url https%3A%2F%2Fhooks.example.org%2Fservices%2FT0%2FB0%2Fabcdef123456",
            f"url {MARK}",
        ),  # quoted
        ("Authorization: Bearer tok-5678-secret", f"Authorization: Bearer {MARK}"),
        ("password was p4ssw0rd-long", f"password was {MARK}"),
        ("keep services, webhooks and T0 readable", "keep services, webhooks and T0 readable"),
    ],
)
def test_redactor_forms(text, expected):
    env = {
        "SLACK_WEBHOOK_URL": "https://hooks.example.org/services/T0/B0/abcdef123456",
        "CF_API_TOKEN": "tok-5678-secret",
        "SMTP_PASSWORD": "p4ssw0rd-long",
        "CF_ACCOUNT_ID": "acct-1",
        "CACHEMON_DASHBOARD_URL": "https://dash.example.org/board-2026",
    }
    assert Redactor.from_env(env)(text) == expected


def test_redactor_caps_escapes_and_knows_its_variables():
    red = Redactor.from_env(
        {
            "CACHEMON_HEARTBEAT_URL": "https://hc.example.org/ping/5f3c-uuid-77",
            "SMTP_PASSWORD": "abc",
            "PATH": "/usr/bin",
            "CF_API_BASE": "https://api.example.org/v4",
        }
    )
    clipped = red.clip("line one\nline two " + "x" * 1000 + " /ping/5f3c-uuid-77")
    assert (
        len(clipped) == LIMIT
        and clipped.startswith("line one\\nline two")
        and clipped.endswith("…")
    )
    assert red.clip(b"ping 5f3c-uuid-77 failed") == f"ping {MARK} failed"
    assert red("abc stays: too short to search for") == "abc stays: too short to search for"
    assert sorted(
        secret_names(
            {
                "CF_API_TOKEN": "x",
                "CF_ACCOUNT_ID": "y",
                "CACHEMON_DASHBOARD_URL": "z",
                "CACHEMON_HEARTBEAT_URL": "w",
                "MAILCHANNELS_API_KEY": "v",
                "HOME": "/",
            }
        )
    ) == ["CACHEMON_HEARTBEAT_URL", "CF_API_TOKEN", "MAILCHANNELS_API_KEY"]
    assert "5f3c" not in repr(red)


_TOKEN = st.text(
    alphabet=string.ascii_letters + string.digits + "-_.~", min_size=MIN_SECRET, max_size=40
)


@settings(max_examples=300, deadline=None)
@given(
    secret=_TOKEN,
    path=st.lists(_TOKEN, min_size=1, max_size=4),
    before=st.text(max_size=60),
    after=st.text(max_size=60),
    how=st.sampled_from(["plain", "quoted", "json", "path", "url"]),
)
def test_no_secret_survives_redaction(secret, path, before, after, how):
    """Whatever surrounds it, however it is escaped, a secret (or a secret
    URL's path) is never in the redacted text."""
    url = "https://hooks.example.org/" + "/".join(path)
    red = Redactor.from_env({"CF_API_TOKEN": secret, "SLACK_WEBHOOK_URL": url})
    shown = {
        "plain": secret,
        "quoted": urllib.parse.quote(secret, safe=""),
        "json": json.dumps(secret)[1:-1],
        "path": "/" + "/".join(path),
        "url": url,
    }[how]
    out = red.clip(before + shown + after, limit=10_000)
    assert secret not in out and "/" + "/".join(path) not in out
