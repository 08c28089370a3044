"""Promotion to Workers KV and rollback, against the loopback KV emulator,
with the notice received by a real SMTP server."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pytest

from cachemon import config, outbound, settings
from cachemon.clock import iso
from cachemon.ingest import load as ingest_load
from cachemon.notify.transports import Transports
from cachemon.store import db as store_db
from cachemon.testing.kv_emulator import Fault, KvEmulator
from cachemon.tuning import promote, results
from tests.helpers import T0
from tests.helpers.servers import SmtpSink

TOKEN = "kv-secret-token-123"


@pytest.fixture
def kv():
    emu = KvEmulator(TOKEN)
    yield emu
    emu.close()


def _env(emu, **extra):
    return {
        "CF_API_BASE": emu.base,
        "CF_ACCOUNT_ID": emu.account,
        "CF_API_TOKEN": TOKEN,
        "CF_KV_NAMESPACE_ID": emu.namespace,
        **extra,
    }


def _experiment(tmp_path):
    (tmp_path / "e.toml").write_text("""
[[experiments]]
name = "extended-title-ttl"
endpoint = "title"
start = "2026-11-19T08:00:00Z"
[[experiments.cohorts]]
name = "control"
ttl = "24h"
weight = 0.5
[[experiments.cohorts]]
name = "treatment"
ttl = "48h"
weight = 0.5
""")
    return config.load(tmp_path / "e.toml", env={})


def test_promotion_writes_reads_back_and_records(tmp_path, kv):
    cfg = _experiment(tmp_path)
    client = promote.KvClient.from_env(_env(kv))
    kv.values[promote.CONFIG_KEY] = json.dumps(promote.defaults(cfg)).encode()
    dry = promote.promote(client, cfg, cfg.experiments[0], "treatment", dry_run=True)
    assert (
        dry.new["title"] == 172800 and json.loads(kv.values[promote.CONFIG_KEY])["title"] == 86400
    )
    act = promote.promote(client, cfg, cfg.experiments[0], "treatment")
    assert act.action == "promote" and act.old["title"] == 86400
    assert json.loads(kv.values[promote.CONFIG_KEY]) == {
        "title": 172800,
        "isbn": 2592000,
        "author": 604800,
    }
    assert [(m, s) for m, _, s in kv.log][-2:] == [
        ("PUT", 200),
        ("GET", 200),
    ]  # written, then read back
    assert repr(client).count(TOKEN) == 0


@pytest.mark.parametrize(
    "stored",
    [
        b"{not json",
        b'{"title": "24h", "isbn": 1, "author": 1}',
        b'{"title": 10, "isbn": 2592000, "author": 604800}',
        b"[]",
    ],
)
def test_corrupt_config_rolls_back_to_defaults(tmp_path, kv, stored):
    cfg = _experiment(tmp_path)
    kv.values[promote.CONFIG_KEY] = stored
    act = promote.check(promote.KvClient.from_env(_env(kv)), cfg)
    assert act.action == "rollback" and "rolled back to default TTLs" in act.detail
    assert json.loads(kv.values[promote.CONFIG_KEY]) == promote.defaults(cfg)


def test_kv_faults_are_clear_errors(tmp_path, kv):
    client = promote.KvClient.from_env(_env(kv))
    kv.faults.append(Fault(status=500))
    with pytest.raises(promote.PromotionError, match="HTTP 500"):
        client.put(promote.CONFIG_KEY, b"{}")
    bad = promote.KvClient.from_env(_env(kv, CF_API_TOKEN="wrong"))
    with pytest.raises(promote.PromotionError, match="needs Workers KV Storage Edit") as err:
        bad.get(promote.CONFIG_KEY)
    assert TOKEN not in str(err.value)
    client.put("k", b"1")
    client.put("k", b"2")  # within a second: KV answers 429, the client waits and retries
    assert kv.values["k"] == b"2" and ("PUT", "k", 429) in kv.log
    with pytest.raises(Exception, match="CF_KV_NAMESPACE_ID"):
        promote.KvClient.from_env({"CF_ACCOUNT_ID": "a", "CF_API_TOKEN": "t"})


def _winning_events(e, path):
    """Two hours of title traffic: 800 keys in their real cohorts; the
    treatment's keys are served from cache 97 % of the time, control's 85 %."""
    rng = np.random.default_rng(3)
    rows = []
    for i in range(800):
        key = f"search:title:q=w{i}"
        cohort = e.assign(key).name
        p = 0.97 if cohort == "treatment" else 0.85
        for _j in range(20):
            rows.append(
                {
                    "timestamp": iso(T0 + timedelta(seconds=int(rng.integers(0, 7200)))),
                    "tier": "kv" if rng.random() < p else "api",
                    "key": key,
                    "endpoint": "title",
                    "latency_ms": 20.0,
                    "experiment": e.name,
                    "cohort": cohort,
                }
            )
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_kv_429_backs_off_through_the_injected_sleep():
    """KV takes one write per second per key: a 429 is retried after a
    pause, taken through the injected `sleep` (no test waits for it)."""
    answers = [429, 429, 200]
    calls, slept = [], []

    def call(method, url, **kw):
        calls.append((method, url.rsplit("/", 1)[-1], kw["headers"]["Authorization"]))
        return outbound.Answer(answers.pop(0), {}, b"", True)

    env = {"CF_ACCOUNT_ID": "a", "CF_API_TOKEN": TOKEN, "CF_KV_NAMESPACE_ID": "n"}
    client = promote.KvClient.from_env(env, sleep=slept.append, call=call)
    client.put(promote.CONFIG_KEY, b"{}")
    assert slept == [promote.RETRY_AFTER_429] * 2
    assert calls == [("PUT", "config%3Akv-ttls", f"Bearer {TOKEN}")] * 3
    answers[:] = [429] * 4  # gives up after four tries: the last answer is the failure
    with pytest.raises(promote.PromotionError, match="HTTP 429"):
        client.put(promote.CONFIG_KEY, b"{}")
    assert len(slept) == 2 + 3 and not answers


def test_daily_run_promotes_a_winner_and_mails_the_notice(tmp_path, kv):
    cfg = config.with_db(_experiment(tmp_path), str(tmp_path / "p.duckdb"))
    _winning_events(cfg.experiments[0], tmp_path / "w.ndjson")
    at = T0 + timedelta(hours=2)
    ingest_load.import_files(
        cfg, [tmp_path / "w.ndjson"], at
    )  # after the events: future ones are refused
    kv.values[promote.CONFIG_KEY] = json.dumps(promote.defaults(cfg)).encode()
    sink = SmtpSink().start()
    try:
        env = _env(kv, **sink.env(), ALERT_EMAIL="team@example.org")
        t = Transports.from_env(env)
        with store_db.writer(tmp_path / "p.duckdb", at) as con:
            run = promote.daily(con, cfg, at, at, env, t)
            rows = promote.history(con)
            saved = results.history(con, "extended-title-ttl")
    finally:
        sink.stop()
    analyses, actions = run.analyses, run.actions
    assert run.flush.ok and [o.subject for o in run.flush.outcomes] == [
        "[BooksTrack Cache] Promotion: extended-title-ttl"
    ]  # daily delivers its own notice, as report.send and alerts.run do
    a = analyses[0]
    hit = a.comparisons[0].metrics[0]
    assert a.decision == "winner" and hit.lower > 2.0 and a.srm_p > 0.001
    assert [x.action for x in actions] == ["promote"] and json.loads(kv.values[promote.CONFIG_KEY])[
        "title"
    ] == 172800
    assert rows[0][1] == "promote" and "86400 s → 172800 s" in rows[0][5]
    assert [r["decision"] for r in saved] == ["winner"]
    assert [m["Subject"] for m in sink.messages] == [
        "[BooksTrack Cache] Promotion: extended-title-ttl"
    ]


def test_unreadable_experiment_config_restores_defaults_and_alerts(tmp_path, kv):
    (tmp_path / "bad.toml").write_text('[[experiments]]\nname = "x"\nendpoint = "title"\n')
    with pytest.raises(config.ConfigError) as err:
        config.load(tmp_path / "bad.toml", env={})
    cfg = config.with_db(settings.Config(), str(tmp_path / "b.duckdb"))
    kv.values[promote.CONFIG_KEY] = b'{"title": 172800, "isbn": 2592000, "author": 604800}'
    sink = SmtpSink().start()
    try:
        env = _env(kv, **sink.env(), ALERT_EMAIL="oncall@example.org")
        t = Transports.from_env(env)
        with store_db.writer(tmp_path / "b.duckdb", T0) as con:
            run = promote.on_bad_config(con, cfg, str(err.value), env, t, T0)
            assert run.flush.ok and len(run.flush.outcomes) == 1  # delivered by the call
            rows = promote.history(con)
    finally:
        sink.stop()
    (act,) = run.actions
    assert act.action == "rollback" and json.loads(
        kv.values[promote.CONFIG_KEY]
    ) == promote.defaults(cfg)
    assert rows[0][1] == "rollback" and "experiment config invalid" in rows[0][5]
    assert [m["Subject"] for m in sink.messages] == ["[BooksTrack Cache] CRITICAL: config_rollback"]
    assert (
        promote.on_bad_config(None, cfg, "x", {}, t, T0) is None
    )  # no KV configured: nothing to restore
