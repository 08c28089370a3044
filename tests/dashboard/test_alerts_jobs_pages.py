"""The Alerts and Jobs pages (#21), headless (AppTest) on a real demo store:
silences marked on their alert and ended from the page, the silence form's
preselection, the no-channel sentence, a no-data anomaly rule's wait, and
the demo's job runs on the Jobs page with no "None" anywhere."""

import re
import shutil
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlparse

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from streamlit.testing.v1 import AppTest

from cachemon import config, timerange
from cachemon.alerts import health, silences
from cachemon.clock import DAY, HOUR, MINUTE, floor_to, iso, utcnow
from cachemon.errors import InputError
from cachemon.store import db as store_db
from cachemon.timerange import TimeRange
from cachemon.usecases import demo
from tests.helpers import EXPERIMENT_TOML, ROOT, SMALL
from tests.helpers.servers import chromium, streamlit_server

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
    """Markdown as read: backslash escapes and the zero-width spaces that break bare links removed."""
    return re.sub(r"\\(.)", r"\1", markdown).replace("\u200b", "")


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


# The Alerts page follows the one time range and endpoint (#21): a probe rule's
# periods are written into a copy of the demo store at known times, some
# store-wide, some of one endpoint, some of another.
PROBE = "probe_rule"


def _probe_rows(now: datetime, endpoints: tuple[str, str]) -> list[tuple]:
    """State changes (changed_at, endpoint, from, to, firing_since) of the
    probe rule: periods 30-20 min ago (store-wide), 5-4 h ago (first
    endpoint), 3 d ago (second endpoint), and one firing since 40 min ago
    (first endpoint)."""
    ours, other = endpoints
    out = []
    for start, end, ep in (
        (now - 30 * MINUTE, now - 20 * MINUTE, ""),
        (now - 300 * MINUTE, now - 240 * MINUTE, ours),
        (now - 3 * DAY, now - 3 * DAY + 90 * MINUTE, other),
        (now - 40 * MINUTE, None, ours),
    ):
        out.append((start, ep, "ok", "firing", start))
        if end is not None:
            out.append((end, ep, "firing", "ok", None))
    return out


@pytest.fixture(scope="module")
def probed(store, tmp_path_factory):
    """A copy of the demo store with the probe rule's history added."""
    db, cfg_file, end = store
    copy = tmp_path_factory.mktemp("alerts_range") / "cachemon.duckdb"
    shutil.copy(db, copy)
    endpoints = tuple(e for e, _ in config.load(cfg_file, env={}).costs.kv_ttl)[:2]
    now = floor_to(utcnow(), MINUTE)
    with store_db.writer(copy, now) as con:
        for at_, ep, was, to, since in _probe_rows(now, endpoints):
            con.execute(
                "INSERT INTO alert_history VALUES (?, ?, ?, 'probe', 'warning', ?, ?, 1, 0, "
                "'probe', ?)",
                [at_, PROBE, ep, was, to, since],
            )
        # Notifications of the probe: store-wide, of each endpoint, and a store-wide one 2 h ago.
        for nid, ago, members in (
            (9101, 10, "warning:probe"),
            (9102, 10, f"warning:probe[{endpoints[0]}]"),
            (9103, 10, f"warning:probe[{endpoints[1]}]"),
            (9104, 120, "warning:probe"),
        ):
            con.execute(
                "INSERT INTO notifications VALUES (?, ?, 'slack', 'firing', ?, ?, '{}', 'sent', 1, "
                "?, NULL, ?)",
                [nid, now - ago * MINUTE, f"probe {nid}", members] + [now - ago * MINUTE] * 2,
            )
    return copy, cfg_file, endpoints


def _probe_notifications(at: AppTest) -> set[str]:
    table = next((d.value for d in at.dataframe if "subject" in d.value.columns), None)
    subjects = set() if table is None else set(table["subject"])
    return {s for s in subjects if s.startswith("probe ")}


def _truth(db, lo: datetime, hi: datetime, endpoint: str | None) -> tuple[int, int]:
    """From the raw alert_history rows (pandas): the periods overlapping
    [lo, hi] (a period runs from a change that sets firing_since to the
    next change of its instance that clears it) and the changes in [lo, hi]."""
    with store_db.reader(db) as con:
        h = con.execute("SELECT * FROM alert_history").df()
    if endpoint is not None:
        h = h[h["endpoint"].isin([endpoint, ""])]
    t = pd.to_datetime(h["changed_at"], utc=True)
    changes = int(((t >= pd.Timestamp(lo)) & (t <= pd.Timestamp(hi))).sum())
    periods = 0
    for _, g in h.assign(t=t).sort_values("t").groupby(["rule", "endpoint"]):
        start = None
        for row in g.itertuples():
            if start is None and pd.notna(row.firing_since):
                start = pd.Timestamp(row.firing_since)
            elif start is not None and pd.isna(row.firing_since):
                periods += start <= pd.Timestamp(hi) and row.t >= pd.Timestamp(lo)
                start = None
        if start is not None:
            periods += start <= pd.Timestamp(hi)
    return periods, changes


def _range_app(monkeypatch, probed, preset: str, endpoint: str | None) -> AppTest:
    db, cfg_file, _ = probed
    at = _app(monkeypatch, (db, cfg_file, None), "alerts")
    at.session_state["time_range"] = TimeRange.of(preset)
    at.session_state["endpoint"] = endpoint or "all"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _shown(at: AppTest) -> tuple[datetime, datetime, int, int]:
    """The window the page says it shows, and its period and change counts."""
    cap = next(c.value for c in at.caption if "(UTC) ·" in c.value)
    lo, hi = (
        datetime.strptime(s, "%Y-%m-%d %H:%MZ").replace(tzinfo=UTC)
        for s in re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\dZ", cap)[:2]
    )
    periods = next((d.value for d in at.dataframe if "lasted" in d.value.columns), None)
    changes = next(d.value for d in at.dataframe if "threshold" in d.value.columns)
    return lo, hi, 0 if periods is None else len(periods), len(changes)


@pytest.mark.parametrize("preset", ["1h", "7d"])
def test_the_alerts_history_covers_the_selected_range(probed, monkeypatch, preset):
    db, _, _ = probed
    at = _range_app(monkeypatch, probed, preset, None)
    lo, hi, periods, changes = _shown(at)
    assert hi - lo == timerange.PRESETS[preset] and abs(utcnow() - hi) < 2 * MINUTE
    assert (periods, changes) == _truth(db, lo, hi, None)
    table = next(d.value for d in at.dataframe if "lasted" in d.value.columns)
    probe_rows = table[table["alert"].str.startswith("probe")]
    # 1h: the store-wide period 30-20 min ago and the one firing since 40 min ago; 7d: all four.
    assert len(probe_rows) == {"1h": 2, "7d": 4}[preset]
    every = {"probe 9101", "probe 9102", "probe 9103"}
    assert _probe_notifications(at) == every | ({"probe 9104"} if preset == "7d" else set())
    # The current state is now, whatever the range: every instance of the alert_state table.
    with store_db.reader(db) as con:
        states = con.execute("SELECT state FROM alert_state").df()["state"]
    assert any("whatever the time range" in c.value for c in at.caption)
    heading = f"Rule instances not OK ({(states != 'ok').sum()} of {len(states)})"
    assert heading in [s.value for s in at.subheader]


def test_the_alerts_history_of_an_endpoint_keeps_its_alerts_and_the_store_wide_ones(
    probed, monkeypatch
):
    db, _, (ours, other) = probed
    at = _range_app(monkeypatch, probed, "7d", ours)
    lo, hi, periods, changes = _shown(at)
    assert (periods, changes) == _truth(db, lo, hi, ours)
    assert _truth(db, lo, hi, ours) != _truth(db, lo, hi, None)
    table = next(d.value for d in at.dataframe if "lasted" in d.value.columns)
    probe_rows = sorted(table[table["alert"].str.startswith("probe")]["alert"])
    assert probe_rows == ["probe", f"probe [{ours}]", f"probe [{ours}]"]
    assert any(
        f"endpoint {ours}: its alerts and the store-wide ones" in _plain(c.value)
        for c in at.caption
    )
    history = next(d.value for d in at.dataframe if "threshold" in d.value.columns)
    assert set(history["endpoint"]) <= {ours, "all"} and other not in set(history["endpoint"])
    # Its notifications and the store-wide ones; not the other endpoint's.
    assert _probe_notifications(at) == {"probe 9101", "probe 9102", "probe 9104"}


_NAMES = st.text(min_size=1, max_size=8)
_SIMPLE = st.text(alphabet="abcxyz_-/", min_size=1, max_size=8)


@given(ours=_NAMES, others=st.lists(st.one_of(st.just(""), _NAMES), min_size=1, max_size=4))
def test_a_notification_about_an_endpoint_or_store_wide_is_never_hidden(ours, others):
    members = [f"warning:probe[{e}]" if e else "warning:probe" for e in others]
    if ours in others or "" in others:
        assert health.concerns(",".join(members), ours)


@given(ours=_SIMPLE, others=st.lists(_SIMPLE, min_size=1, max_size=4))
def test_a_notification_about_other_endpoints_only_is_left_out(ours, others):
    members = ",".join(f"critical:probe[{e}]" for e in others)
    assert health.concerns(members, ours) == (ours in others)


def test_dragging_across_a_quiet_stretch_of_the_alerts_timeline_zooms_to_it(store):
    """In Chromium: a box drag over the timeline (a Plotly timeline, dates on
    x), where no alert was active, sets the range to about that span."""
    from playwright.sync_api import sync_playwright

    db, cfg_file, _ = store
    # No auto refresh while the test drags (a refresh redraws the chart and drops a drag).
    env = {"CACHEMON_DB": str(db), "CACHEMON_CONFIG": str(cfg_file)}
    env["CACHEMON_REFRESH_SECONDS"] = "3600"
    with streamlit_server(env) as url, sync_playwright() as p:
        browser = chromium(p)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.goto(f"{url}/alerts?range=7d")
        page.get_by_text("drag across the timeline", exact=False).wait_for(timeout=90_000)
        caption = page.get_by_text("drag across the timeline", exact=False).inner_text()
        lo, hi = (
            datetime.strptime(s, "%Y-%m-%d %H:%MZ").replace(tzinfo=UTC)
            for s in re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\dZ", caption)[:2]
        )
        area = page.locator(".js-plotly-plot .nsewdrag").first
        area.wait_for(timeout=30_000)
        area.scroll_into_view_if_needed()
        page.wait_for_timeout(2000)  # the chart settles (a scroll, a resize) before the drag
        box = area.bounding_box()
        y = box["y"] + box["height"] / 2
        # A tenth to three tenths of the week: days before the demo's two, no bar there.
        x0, x1 = (box["x"] + box["width"] * f for f in (0.1, 0.3))
        page.mouse.move(x0, y)
        page.mouse.down()
        for i in range(1, 11):
            page.mouse.move(x0 + (x1 - x0) * i / 10, y)
            page.wait_for_timeout(50)
        page.mouse.up()
        page.wait_for_function("location.search.includes('from=')", timeout=60_000)
        query = parse_qs(urlparse(page.evaluate("location.href")).query)
        browser.close()
    got = [
        datetime.strptime(query[k][0], "%Y-%m-%dT%H:%MZ").replace(tzinfo=UTC)
        for k in ("from", "to")
    ]
    week = hi - lo
    # The drag's ends on the axis, to a few pixels (the plot is ~800 px wide: ~15 min a pixel).
    assert (
        abs(got[0] - (lo + week / 10)) < 3 * HOUR and abs(got[1] - (lo + 3 * week / 10)) < 3 * HOUR
    )
