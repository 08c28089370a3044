"""The Alerts and Jobs pages (#21), headless (AppTest) on a real demo store:
silences marked on their alert and ended from the page, the silence form's
preselection, the no-channel sentence, a no-data anomaly rule's wait, and
the demo's job runs on the Jobs page with no "None" anywhere."""

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from streamlit.testing.v1 import AppTest

from cachemon import config
from cachemon.alerts import silences
from cachemon.clock import DAY, MINUTE, floor_to, iso, utcnow
from cachemon.errors import InputError
from cachemon.store import db as store_db
from cachemon.usecases import demo
from tests.helpers import EXPERIMENT_TOML, ROOT, SMALL

DEMO_DAYS = 2
# Two always-firing rules (the critical one alphabetically last, so the form's
# first option is not the preselected one) and an anomaly rule that two days
# of data cannot score.
RULES = """
[alerts]
builtin_rules = false
[[alerts.rules]]
name = "traffic_critical"
metric = "requests"
threshold = 0
severity = "critical"
[[alerts.rules]]
name = "any_traffic"
metric = "requests"
threshold = 1
severity = "warning"
[[alerts.rules]]
name = "hit_rate_drift"
kind = "anomaly"
metric = "combined_hit_rate"
threshold = 3.5
weeks = 3
min_weeks = 2
severity = "warning"
"""
CHANNEL_ENV = (
    "SLACK_WEBHOOK_URL",
    "DISCORD_WEBHOOK_URL",
    "SMTP_HOST",
    "MAILCHANNELS_API_KEY",
    "ALERT_EMAIL",
)
REASON = "deploy in progress, see [docs](http://example.com) <b>now</b> :red[urgent]"
NO_CHANNEL = "No notification channel is configured: alerts show here but nobody is notified"


def _stamp(t: datetime) -> str:
    """The display format, written out here: 2026-12-01 14:15Z."""
    t = t.astimezone(UTC)
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d} {t.hour:02d}:{t.minute:02d}Z"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two days of small demo traffic ending now, the seed's experiment, the rules above."""
    tmp = tmp_path_factory.mktemp("alerts_jobs")
    db, cfg_file = tmp / "cachemon.duckdb", tmp / "cachemon.toml"
    end = utcnow()
    start = floor_to(end - DEMO_DAYS * DAY, timedelta(hours=1))
    cfg_file.write_text(EXPERIMENT_TOML.format(start=iso(start)) + RULES)
    cfg = replace(config.with_db(config.load(cfg_file, env={}), str(db)), simulator=SMALL)
    demo.demo(cfg, DEMO_DAYS, end)
    return db, cfg_file, end


def _app(monkeypatch, store, page: str) -> AppTest:
    db, cfg_file, _ = store
    monkeypatch.setenv("CACHEMON_DB", str(db))
    monkeypatch.setenv("CACHEMON_CONFIG", str(cfg_file))
    for name in CHANNEL_ENV:
        monkeypatch.delenv(name, raising=False)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _plain(markdown: str) -> str:
    """Markdown as read: backslash escapes removed."""
    return re.sub(r"\\(.)", r"\1", markdown)


def _texts(at: AppTest) -> list[str]:
    """Every text of the page: markdown, captions, alerts, metrics and every table cell."""
    out = []
    for kind in ("markdown", "caption", "info", "warning", "error", "success", "subheader"):
        out += [str(e.value) for e in getattr(at, kind)]
    out += [f"{m.label} {m.value}" for m in at.metric]
    for df in at.dataframe:
        out += [str(c) for c in df.value.columns]
        out += [str(v) for v in df.value.to_numpy().ravel()]
    return out


def test_a_silenced_alert_is_marked_and_unsilence_ends_the_silence_on_record(store, monkeypatch):
    db, _, _ = store
    # Made by the CLI a minute ago (the page reads as of its 30 s refresh tick).
    made = utcnow() - MINUTE
    with store_db.writer(db, made) as con:
        x = silences.add_silence(
            con, "traffic_critical", timedelta(hours=2), REASON, made, "", "ops"
        )
    badge = f"silenced until {_stamp(x.ends_at)} by ops: {REASON}"
    at = _app(monkeypatch, store, "alerts")
    raw = [m.value for m in at.markdown if badge in _plain(m.value)]
    marked = [_plain(m) for m in raw]
    # On the alert itself: the badge is in the traffic_critical entry, not any_traffic's.
    assert len(marked) == 1 and "traffic_critical" in marked[0], marked
    assert "any_traffic" not in marked[0]
    # The reason is shown as typed: its link, HTML and colour markup are escaped, not rendered.
    assert "\\[docs\\]\\(http\\:" in raw[0] and "\\<b\\>" in raw[0] and "\\:red\\[" in raw[0]
    at.button(key=f"unsilence_{x.id}_traffic_critical_").click().run()
    assert not at.exception, [e.value for e in at.exception]
    with store_db.reader(db) as con:
        rows = con.execute(
            "SELECT reason, expired_at FROM silences WHERE id = ?", [x.id]
        ).fetchall()
        assert silences.active_silences(con, utcnow()) == []
    # Ended, not deleted: the record stays, with when it ended.
    assert rows[0][0] == REASON
    assert rows[0][1] is not None and x.starts_at <= rows[0][1] <= utcnow()
    assert not any(badge in _plain(m.value) for m in at.markdown)
    assert any(s.value.startswith(f"Silence {x.id} ended at") for s in at.success)


def test_expire_silence_keeps_the_record_and_refuses_a_second_end(store):
    db, _, _ = store
    now = floor_to(utcnow(), MINUTE)
    with store_db.writer(db, now) as con:
        x = silences.add_silence(con, "any_traffic", timedelta(hours=1), "test", now)
        silences.expire_silence(con, x.id, now + MINUTE)
        ((expired_at,),) = con.execute(
            "SELECT expired_at FROM silences WHERE id = ?", [x.id]
        ).fetchall()
        assert expired_at == now + MINUTE
        assert x.id not in [s.id for s in silences.active_silences(con, now + MINUTE)]
        with pytest.raises(InputError, match=f"no active silence with id {x.id}"):
            silences.expire_silence(con, x.id, now + 2 * MINUTE)


def test_the_silence_form_preselects_the_firing_rule_or_the_one_clicked(store, monkeypatch):
    at = _app(monkeypatch, store, "alerts")
    form = at.selectbox(key="silence_matcher")
    assert form.options[0] == "any_traffic"  # the first option is not the one preselected
    assert form.value == "traffic_critical"  # the first firing alert: critical before warning
    at.button(key="silence_any_traffic_").click().run()
    assert at.selectbox(key="silence_matcher").value == "any_traffic"


def test_no_channel_is_said_plainly_where_notifications_are(store, monkeypatch):
    at = _app(monkeypatch, store, "alerts")
    assert any(w.value.startswith(NO_CHANNEL) for w in at.warning), [w.value for w in at.warning]
    monkeypatch.setenv("SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/T0/B0/x")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("pages/alerts.py").run()
    assert not any(NO_CHANNEL in w.value for w in at.warning)


def test_a_no_data_anomaly_rule_explains_it_waits_for_weeks_of_history(store, monkeypatch):
    db, _, end = store
    with store_db.reader(db) as con:
        first, last = con.execute("SELECT min(minute), max(minute) FROM rollup_minute").fetchone()
    held = (last - first + MINUTE) / DAY  # the days of traffic the store holds
    at = _app(monkeypatch, store, "alerts")
    waits = [c.value for c in at.caption if "needs 2 weeks of history" in c.value]
    assert len(waits) == 1, [c.value for c in at.caption]
    shown = float(re.search(r"needs 2 weeks of history, has ([\d.]+) days", waits[0]).group(1))
    assert shown == pytest.approx(held, abs=0.05) and held == pytest.approx(DEMO_DAYS, abs=0.05)


def test_each_alert_links_to_the_overview_around_its_time(store, monkeypatch):
    at = _app(monkeypatch, store, "alerts")
    entry = next(_plain(m.value) for m in at.markdown if "**traffic_critical**" in _plain(m.value))
    since = re.search(r"firing since (\d{4}-\d\d-\d\d \d\d:\d\dZ)", entry).group(1)
    t = datetime.strptime(since, "%Y-%m-%d %H:%MZ")
    link = re.search(r"\[Overview at this time\]\(([^)]*)\)", entry).group(1)
    hour = timedelta(hours=1)
    assert link.startswith("/?") and f"from={(t - hour):%Y-%m-%dT%H:%M}" in link
    assert f"to={(t + hour):%Y-%m-%dT%H:%M}" in link


def test_the_demo_records_the_jobs_it_ran_and_the_jobs_page_shows_them(store, monkeypatch):
    db, _, end = store
    with store_db.reader(db) as con:
        runs = con.execute(
            "SELECT job, outcome, started_at, finished_at, rows FROM job_runs ORDER BY job"
        ).fetchall()
        evaluations = con.execute("SELECT count(*) FROM alert_evaluations").fetchone()[0]
        analyses = con.execute("SELECT count(*) FROM experiment_results").fetchone()[0]
    # The jobs whose work the demo did, at its time; not ingest (the runner's heartbeat).
    assert [(j, o, r) for j, o, _, _, r in runs] == [
        ("alerts", "ok", evaluations),
        ("experiments", "ok", analyses),
        ("report", "ok", 1),
    ]
    assert evaluations > 0 and analyses > 0
    assert all(s == f == end for _, _, s, f, _ in runs)
    at = _app(monkeypatch, store, "jobs")
    schedule = at.dataframe[0].value
    rows = {r["job"]: r for r in schedule.to_dict("records")}
    for job in ("report", "experiments", "alerts"):
        assert rows[job]["outcome"] == "ok"
        assert str(rows[job]["last run"]) == _stamp(end)
    assert rows["ingest"]["outcome"] == "never ran" and rows["ingest"]["last run"] == "never"
    texts = _texts(at)
    assert not [t for t in texts if re.search(r"\b(None|nan|NaT|inf)\b", t)], texts


def test_notifications_are_listed_in_the_display_format_without_none(store, monkeypatch):
    db, _, end = store
    at_ = floor_to(end, MINUTE) - 10 * MINUTE
    with store_db.writer(db, utcnow()) as con:
        for nid, status, sent, error in (
            (9001, "sent", at_ + MINUTE, None),
            (9002, "pending", None, "connection refused"),
        ):
            con.execute(
                "INSERT INTO notifications VALUES (?, ?, 'slack', 'alert', ?, 'critical:x', '{}', "
                "?, 1, ?, ?, ?)",
                [nid, at_, f"subject {nid}", status, at_ + 5 * MINUTE, error, sent],
            )
    at = _app(monkeypatch, store, "alerts")
    table = next(d.value for d in at.dataframe if "subject" in d.value.columns)
    rows = {r["subject"]: r for r in table.to_dict("records")}
    assert rows["subject 9001"]["created"] == _stamp(at_)
    assert rows["subject 9001"]["sent"] == _stamp(at_ + MINUTE)
    assert rows["subject 9002"]["status"] == f"pending (next try {_stamp(at_ + 5 * MINUTE)})"
    assert rows["subject 9002"]["last error"] == "connection refused"
    assert rows["subject 9002"]["sent"] == "—" and rows["subject 9001"]["last error"] == "—"
    texts = _texts(at)
    assert not [t for t in texts if re.search(r"\b(None|nan|NaT|inf)\b", t)], texts


def test_unsilencing_a_silence_ended_meanwhile_says_so(store, monkeypatch):
    db, _, _ = store
    made = utcnow() - MINUTE
    with store_db.writer(db, made) as con:
        x = silences.add_silence(con, "any_traffic", timedelta(hours=1), "maintenance", made)
    at = _app(monkeypatch, store, "alerts")
    with store_db.writer(db, utcnow()) as con:  # `alerts unsilence` in another terminal
        silences.expire_silence(con, x.id, utcnow())
    at.button(key=f"unsilence_{x.id}_any_traffic_").click().run()
    assert [e.value for e in at.error if e.value.startswith("Silence")] == [
        f"Silence {x.id} was not ended: no active silence with id {x.id}"
    ]
