"""The daily cost report: golden email, stored once per day, sent once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, date, datetime

import pytest

from cachemon import config, settings
from cachemon.costs import optimize, report
from cachemon.notify import outbox as notify_outbox
from cachemon.notify.transports import Transports
from cachemon.store import db as store_db
from cachemon.store import snapshots
from cachemon.store.queries import CLASSES, KeyClass
from tests.helpers import ROOT
from tests.helpers.golden import check_golden as _golden
from tests.helpers.servers import SmtpSink

NOW = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)
DAY = date(2026, 11, 19)


@pytest.fixture
def db(loaded_store, tmp_path):
    path = tmp_path / "r.duckdb"
    shutil.copy(loaded_store[0], path)
    shutil.copy(snapshots.snapshot_path(loaded_store[0]), snapshots.snapshot_path(path))
    return path


def test_report_email_golden(db):
    cfg = config.with_db(settings.Config(), str(db))
    with store_db.reader(db) as con:
        r = report.build(con, cfg, DAY, NOW)
    subject, text, html = report.render(r, "[BooksTrack Cache]", "http://127.0.0.1:8501")
    assert subject == "[BooksTrack Cache] Daily Cost Optimization Report (2026-11-19)"
    _golden("report_email.txt", text)
    _golden("report_email.html", html)
    # Chat gets the headline: the total with its basis, and the saving.
    row = notify_outbox.report_row("slack", NOW, subject, text, html, cfg.notify, Transports())
    assert "Total: $0.014 list, $0.00 billed (1d measured, 3h of it with data)" in row.payload
    assert "Total Potential Savings" in row.payload
    assert "nan" not in text.lower() and r.list_total > 0
    assert [c for c, _ in r.classes] == ["hot", "warm", "cold"] and r.entries > 0


def test_sent_once_per_day_replaced_on_rerun_resend_on_request(db):
    cfg = config.with_db(settings.Config(), str(db))
    sink = SmtpSink().start()
    try:
        t = Transports.from_env({**sink.env(), "ALERT_EMAIL": "team@example.org"})

        def run(resend=False, now=NOW):
            with store_db.writer(db, now) as con:
                r = report.build(con, cfg, DAY, now)
                sent = report.send(con, r, cfg, t, now, resend=resend)
            assert sent.flush.ok and sent.flush.sent == len(sent.channels)
            return list(sent.channels)

        assert run() == ["email"]
        assert run(now=NOW.replace(hour=4)) == []  # re-run: report replaced, no second email
        assert len(sink.messages) == 1
        assert run(resend=True, now=NOW.replace(hour=5)) == ["email"]
        assert len(sink.messages) == 2
    finally:
        sink.stop()
    msg = sink.messages[0]
    assert msg["Subject"] == "[BooksTrack Cache] Daily Cost Optimization Report (2026-11-19)"
    assert "Total Potential Savings" in msg.get_body(("plain",)).get_content()
    with store_db.reader(db) as con:
        stored = report.recent(con)
    assert len(stored) == 1 and stored[0].report.generated_at == NOW.replace(hour=5)


def test_a_stored_report_reads_back_typed(db):
    """`recent` parses each payload once into the same dataclasses (the
    dashboard reads attributes, never JSON keys)."""
    cfg = config.with_db(settings.Config(), str(db))
    with store_db.writer(db, NOW) as con:
        r = report.build(con, cfg, DAY, NOW)
        report.save(con, r)
    with store_db.reader(db) as con:
        (stored,) = report.recent(con)
    assert stored.report == r and r.recommendations and r.forecast_list is not None
    assert stored.day == DAY and stored.sent is False and stored.created_at == NOW
    assert all(isinstance(c, KeyClass) for c, _ in stored.report.classes)
    assert [c for c, _ in stored.report.classes] == list(CLASSES)
    assert all(isinstance(x.evidence, tuple) for x in stored.report.recommendations)
    assert all(isinstance(x.type, optimize.Kind) for x in stored.report.recommendations)


def test_day_without_data_says_so(db):
    cfg = config.with_db(settings.Config(), str(db))
    with store_db.reader(db) as con:
        r = report.build(con, cfg, date(2026, 11, 25), NOW)
    _, text, html = report.render(r, "[X]", "http://h")
    assert not r.has_data and "No data for 2026-11-25" in text and "No data for 2026-11-25" in html
    assert "nan" not in text.lower() and "inf" not in text.lower()


def test_cli_dry_run_and_bad_date(db):
    env = dict(os.environ, CACHEMON_DB=str(db), PYTHONPATH=str(ROOT))
    env.pop("CACHEMON_CONFIG", None)

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "cachemon", "costs", "report", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    p = cli("--date", "2026-11-19", "--dry-run")
    assert p.returncode == 0, p.stderr
    assert "Cost Breakdown" in p.stdout and "Recommendations" in p.stdout
    # Each figure names its basis (#20): the day as measured and what part has data, the forecast's.
    assert (
        "List and billed USD: the usage of 2026-11-19 00:00Z – 2026-11-20 00:00Z "
        "as measured, not scaled; the data covers only 2026-11-19 08:00Z" in p.stdout
    )
    assert "- Total: $0.014 list, $0.00 billed (1d measured, 3h of it with data)" in p.stdout
    assert "month-end forecast for 2026-11: the month to date" in p.stdout
    with store_db.reader(db) as con:
        assert report.recent(con) == []  # a dry run stores nothing
    bad = cli("--date", "19/11/2026")
    assert bad.returncode == 2 and "--date: '19/11/2026' is not a day like" in bad.stderr
