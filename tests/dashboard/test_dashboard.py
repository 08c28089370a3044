"""The dashboard: every page headless (AppTest) against `cachemon metrics`
and the library, and in a real browser (Debian's Chromium)."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from cachemon import config
from cachemon.alerts import health, silences
from cachemon.clock import HOUR, floor_to, iso, utcnow
from cachemon.costs import basis, report
from cachemon.costs.basis import Basis, Price
from cachemon.ingest import keys
from cachemon.ingest import load as ingest_load
from cachemon.runner import runs as runner_runs
from cachemon.store import db as store_db
from cachemon.store.queries import data_span
from cachemon.timerange import TimeRange, stamp
from cachemon.tuning import analysis as tuning_analysis
from cachemon.tuning import promote, results, stats
from cachemon.usecases import demo
from tests.helpers import EXPERIMENT_TOML, ROOT, SMALL, load, simulate
from tests.helpers.servers import chromium, streamlit_server

PAGES = {
    "overview": "pages/overview.py",
    "trends": "pages/trends.py",
    "keys": "pages/keys.py",
    "experiments": "pages/experiments.py",
    "ttl": "pages/ttl.py",
    "alerts": "pages/alerts.py",
    "costs": "pages/costs.py",
    "jobs": "pages/jobs.py",
}
EVIL = "search:title:q=<script>alert(1)</script>"
ARTIFACTS = Path(os.environ.get("CACHEMON_ARTIFACTS", ROOT / "test-artifacts"))


def _make_store(tmp: Path, end, hours: float = 6.0, evil: bool = False) -> tuple[Path, Path]:
    """`hours` of small simulated traffic ending at `end`, the simulator's
    experiment configured and analysed, a report, job runs and a promotion;
    with `evil`, a busy key whose text is a script tag."""
    db, cfg_file = tmp / "cachemon.duckdb", tmp / "cachemon.toml"
    start = floor_to(end - timedelta(hours=hours), timedelta(hours=1))
    cfg_file.write_text(EXPERIMENT_TOML.format(start=iso(start)))
    cfg = replace(config.with_db(config.load(cfg_file, env={}), str(db)), simulator=SMALL)
    demo.demo(cfg, hours / 24, end)
    if evil:
        events = tmp / "evil.ndjson"
        events.write_text(
            "".join(
                json.dumps(
                    {
                        "timestamp": iso(end - timedelta(seconds=1 + i % 3000)),
                        "tier": "edge",
                        "key": EVIL,
                        "endpoint": "title",
                        "latency_ms": 3.0,
                    }
                )
                + "\n"
                for i in range(2500)
            )
        )
        ingest_load.import_files(cfg, [events], end)
    with store_db.writer(db, end) as con:
        results.save(con, tuning_analysis.analyze(con, cfg.experiments[0], end, cfg.pricing))
        report.save(con, report.build(con, cfg, end.date(), end))
        promote.record(
            con,
            promote.Action(
                "promote",
                "extended-title-ttl",
                {"title": 86400},
                {"title": 172800},
                "title KV TTL 86400 s → 172800 s (treatment won)",
            ),
            end,
        )
        # The runner's log these tests read, not the demo's own runs (those are
        # test_alerts_jobs_pages.py's): the failed report is the last report run.
        con.execute("DELETE FROM job_runs")
        for job, outcome, error in (
            ("ingest", "ok", None),
            ("report", "error", "SMTP refused\nSourceError: boom"),
        ):
            runner_runs.record_run(
                con,
                runner_runs.RunRecord(
                    job,
                    end - timedelta(minutes=2),
                    end - timedelta(minutes=1),
                    outcome,
                    error,
                    1,
                    10,
                ),
            )
    return db, cfg_file


@pytest.fixture(scope="module")
def live_store(tmp_path_factory):
    """Six hours of small traffic ending now, as the run command produces."""
    return _make_store(tmp_path_factory.mktemp("dash"), utcnow(), evil=True)


@pytest.fixture(scope="module")
def past_store(tmp_path_factory):
    """Data that ended two hours ago: stale, and fixed, so the page and the
    CLI compute the same windows whatever the minute."""
    return _make_store(
        tmp_path_factory.mktemp("past"),
        floor_to(utcnow(), timedelta(minutes=1)) - timedelta(hours=2),
    )


def _app(monkeypatch, db, cfg_file=None, page=None, **state) -> AppTest:
    """The app run on `page`; `state` presets the sidebar's choices (AppTest
    drops the sidebar from reruns, so the browser test clicks them)."""
    monkeypatch.setenv("CACHEMON_DB", str(db))
    if cfg_file:
        monkeypatch.setenv("CACHEMON_CONFIG", str(cfg_file))
    else:
        monkeypatch.delenv("CACHEMON_CONFIG", raising=False)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    # The sidebar's range (`period`, a preset name; 1h unless given) as the session holds it.
    state["time_range"] = TimeRange.of(state.pop("period", "1h"))
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    if page:
        at.switch_page(PAGES[page]).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _cli_metrics(db, cfg_file, *args) -> dict:
    env = dict(os.environ, CACHEMON_DB=str(db), CACHEMON_CONFIG=str(cfg_file), PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-m", "cachemon", "metrics", "--top", "5", *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    return json.loads(out)


def _shown(at) -> dict[str, float]:
    return {m.label: float(m.value.replace(",", "").replace("$", "")) for m in at.metric}


def _expect(js: dict) -> dict[str, float]:
    h, lat = js["hitRates"], js["latency"]
    out = {
        "Combined hit rate %": h["combined"],
        "Edge hit rate %": h["edge"],
        "KV hit rate %": h["kv"],
        "R2 hit rate %": h["r2_cold"],
        "p50 latency ms": lat["p50"],
        "p95 latency ms": lat["p95"],
        "p99 latency ms": lat["p99"],
        "Requests": js["volume"]["total_requests"],
        "Error rate %": js["errorRate"],
    }
    if "costs" in js:
        basis = Basis.from_json(js["costs"]["perDay"]["basis"])
        out[f"Cost USD/day ({basis.short(Price.LIST)})"] = js["costs"]["perDay"]["list"]
    return out


def _assert_overview_equals_cli(at, js):
    shown = _shown(at)
    for label, value in _expect(js).items():
        # The page rounds to 2 decimals (whole requests); the JSON to 4.
        assert shown[label] == pytest.approx(value, abs=0.0051 if label != "Requests" else 0.5), (
            label
        )


def test_overview_shows_the_numbers_of_cachemon_metrics(past_store, monkeypatch):
    db, cfg_file = past_store
    at = _app(monkeypatch, db, cfg_file)
    _assert_overview_equals_cli(at, _cli_metrics(db, cfg_file, "--period", "1h"))
    assert any("Stale data" in w.value for w in at.warning)
    at = _app(monkeypatch, db, cfg_file, period="15m")
    _assert_overview_equals_cli(at, _cli_metrics(db, cfg_file, "--period", "15m"))
    at = _app(monkeypatch, db, cfg_file, period="15m", endpoint="isbn")
    js = _cli_metrics(db, cfg_file, "--period", "15m", "--endpoint", "isbn")
    _assert_overview_equals_cli(at, js)
    assert list(at.dataframe[0].value["endpoint"].unique()) == ["isbn"]
    assert at.dataframe[0].value["key"].iloc[0] == js["topKeys"][0]["key"]


def test_overview_shows_health_from_alert_states(live_store, monkeypatch):
    at = _app(monkeypatch, *live_store)
    banners = [b.value for b in (*at.success, *at.warning, *at.error)]
    # The demo evaluated the alert rules over its span, so health is known.
    assert any(b.startswith("Health: **") for b in banners)
    assert not any("have not been evaluated" in b for b in banners)
    assert not any("Stale data" in w.value for w in at.warning)
    # Keys from the internet are data, shown as text.
    assert EVIL in set(at.dataframe[0].value["key"])


def test_trends_chart_the_library_series(live_store, monkeypatch):
    db, cfg_file = live_store
    # The page follows the sidebar's range (#21: its own Range control is gone).
    at = _app(monkeypatch, db, cfg_file, "trends", period="7d")
    assert len(at.get("plotly_chart")) == 6
    shown = at.dataframe[0].value
    cfg = config.load(cfg_file, env={"CACHEMON_DB": str(db)})
    with store_db.reader(db) as con:
        span_end = data_span(con)[1]
    assert shown["time (UTC)"].iloc[-1] + HOUR >= span_end  # 7d: hourly buckets
    total = _cli_metrics(db, cfg_file, "--period", "24h")["volume"]["total_requests"]
    assert shown["requests"].sum() == pytest.approx(total, abs=0.5)  # six hours of data: all of it
    at = _app(monkeypatch, db, cfg_file, "trends", period="24h")
    assert any("in 5-minute buckets" in c.value for c in at.caption)
    assert at.dataframe[0].value["requests"].sum() == pytest.approx(total, abs=0.5)
    assert cfg.experiments  # the page read the same config


def test_top_keys_filter_download_and_drill_down(live_store, monkeypatch):
    db, cfg_file = live_store
    at = _app(monkeypatch, db, cfg_file, "keys")
    table = at.dataframe[0].value
    js = _cli_metrics(db, cfg_file, "--period", "1h")
    # Same counts for the same keys (near-ties may order differently: sums of
    # fractional sample weights in another order).
    assert list(table["requests"].head(5)) == pytest.approx(
        [k["requests"] for k in js["topKeys"]], abs=0.5
    )
    shown = dict(zip(table["key"], table["requests"]))
    assert all(shown[k["key"]] == pytest.approx(k["requests"], abs=0.5) for k in js["topKeys"])
    assert len(at.get("download_button")) == 1 and len(at.get("plotly_chart")) == 1
    at.text_input(key="key_contains").input("ISBN").run()
    keys = at.dataframe[0].value["key"]
    assert len(keys) and all("isbn" in k for k in keys)
    at.selectbox(key="key_class").select("hot").run()
    assert len(at.dataframe[0].value) and set(at.dataframe[0].value["class"]) == {"hot"}
    at.text_input(key="key_contains").input("no key has this text").run()
    assert any("No key matches" in i.value for i in at.info)


def test_top_keys_page_warns_when_it_counts_wider_than_the_period(tmp_path, monkeypatch):
    """Where the period's per-key minutes are compacted (here the hour its
    start falls in, as a store written before schema 9 holds it), the page
    says which wider span it counts instead of showing it as the period's."""
    end = floor_to(utcnow(), timedelta(minutes=1))
    end -= timedelta(minutes=7) if end.minute == 0 else timedelta(0)  # a ragged start
    db = tmp_path / "cachemon.duckdb"
    parts, _ = simulate(3, start=end - timedelta(hours=3))
    load(db, parts, now=end)
    with store_db.writer(db, end) as con:
        keys.compact_minutes(con, floor_to(end - timedelta(hours=1), timedelta(hours=1)) + HOUR)
    at = _app(monkeypatch, db, None, "keys")
    assert any("Not exact" in w.value for w in at.warning), [w.value for w in at.warning]


def test_experiments_show_the_stored_analysis_and_promotions(live_store, monkeypatch):
    db, cfg_file = live_store
    at = _app(monkeypatch, db, cfg_file, "experiments")
    with store_db.reader(db) as con:
        latest = results.history(con, "extended-title-ttl")[-1]["result"]
    shown = {m.label: m.value for m in at.metric}
    assert shown["Decision"] == latest["decision"]
    assert float(shown["SRM p-value"]) == pytest.approx(latest["srm_p"], abs=5e-5)
    # The days still needed (#20): the stored outlook's figure and its sentence, not a plan.
    outlook = latest["comparisons"][0]["outlook"]
    assert shown["Days still needed"] == outlook["headline"]
    assert any(outlook["text"] in c.value for c in at.caption)
    cohorts = at.dataframe[0].value
    assert list(cohorts["allocation"]) == ["129/256 (50.39%)", "127/256 (49.61%)"]
    assert list(cohorts["keys"]) == [n for _, n in latest["units"]]
    assert len(at.get("plotly_chart")) == len(latest["comparisons"]) == 1
    assert "promote" in set(at.dataframe[-1].value["action"])


def test_experiments_without_config_say_how_to_add_one(live_store, monkeypatch):
    at = _app(monkeypatch, live_store[0], None, "experiments")
    assert "[[experiments]]" in at.info[0].value


def test_alerts_page_lists_states_and_creates_a_silence(live_store, monkeypatch):

    db, cfg_file = live_store
    at = _app(monkeypatch, db, cfg_file, "alerts")
    assert not at.main.error  # the sidebar shows the fixture's failed report job
    assert [h.value for h in at.header] == ["Alerts"]
    # "All rule instances" (#21: the instances not OK are entries with buttons, not a table).
    states = at.dataframe[0].value
    assert {"p99_latency", "miss_rate_critical", "edge_hit_rate"} <= set(states["rule"])
    at.selectbox(key="silence_matcher").select("p99_latency")
    at.text_input(key="silence_reason").input("deploy in progress")
    at.button(key="silence_submit").click().run()
    assert any("muted until" in s.value for s in at.success), [e.value for e in at.error]
    with store_db.reader(db) as con:
        assert [s.reason for s in silences.active_silences(con, utcnow())] == ["deploy in progress"]
    assert "deploy in progress" in set(at.dataframe[-1].value["reason"])


def test_costs_show_the_cost_block_and_the_report(past_store, monkeypatch):
    # The past store: with data ending now, the page and the CLI could see different windows across a minute.
    db, cfg_file = past_store
    at = _app(monkeypatch, db, cfg_file, "costs")
    js = _cli_metrics(db, cfg_file, "--period", "1h")["costs"]
    shown = {m.label: m.value for m in at.metric}
    # Every cost figure names its basis (#20): the rate's window in the label, all of it in the help.
    rate = "USD/day (rate from 1h of data)"
    assert float(shown[f"List {rate}"].strip("$")) == pytest.approx(js["perDay"]["list"], abs=0.005)
    assert float(shown[f"Billed {rate}"].strip("$").replace(",", "")) == pytest.approx(
        js["perDay"]["billed"], abs=0.005
    )
    month = js["forecast"]["month"]
    labels = [m.label for m in at.metric][2:]
    assert labels[0].startswith(f"List USD ({month} to date")
    assert labels[1:] == [
        f"List USD ({month} month-end forecast)",
        f"Billed USD ({month} month-end forecast)",
    ]
    helps = [m.proto.help for m in at.metric]
    assert helps[0] == js["perDay"]["basis"]["text"]["list"] + f" ({basis.PRICES})."
    # Windows in the one timestamp format (`timerange.stamp`), not ISO brackets.
    assert "a rate, the usage of " in helps[0] and "Z – " in helps[0] and "[" not in helps[0]
    assert "scaled to a day" in helps[0]
    assert "month to date" in helps[2] and "month-end forecast" in helps[3]
    assert "whole month" in helps[4]
    lines = at.dataframe[0].value
    assert lines["list USD/day"].sum() == pytest.approx(
        js["perDay"]["list"], abs=1e-6
    )  # JSON: 6 decimals
    with store_db.reader(db) as con:
        stored = report.recent(con, 1)[0].report
    assert list(at.dataframe[-1].value["list USD"]) == [pytest.approx(stored.list_total)]
    assert len(at.get("plotly_chart")) == 2


def test_jobs_show_schedule_failures_and_freshness(live_store, monkeypatch):
    db, cfg_file = live_store
    at = _app(monkeypatch, db, cfg_file, "jobs")
    schedule = at.dataframe[0].value
    assert list(schedule["job"]) == [
        "ingest",
        "alerts",
        "deliver",
        "compact",
        "report",
        "experiments",
    ]
    assert dict(zip(schedule["job"], schedule["outcome"]))["report"] == "error"
    assert any(e.value.startswith("Failing: report") for e in at.error)
    assert "SourceError: boom" in set(at.dataframe[-1].value["error"])
    assert at.metric[0].label == "Newest data"


def test_sidebar_shows_the_runner_and_failing_jobs(live_store, monkeypatch):
    """The store's run log has an ok ingest and a failed report: the sidebar
    names the failed job and when, and when ingest last succeeded."""
    db, cfg_file = live_store
    with store_db.reader(db) as con:
        (failed_at,) = con.execute(
            "SELECT max(started_at) FROM job_runs WHERE job = 'report'"
        ).fetchone()
    at = _app(monkeypatch, db, cfg_file)
    side = at.sidebar
    assert [e.value for e in side.error] == [
        f"Failing jobs: report (failed {stamp(failed_at)}) · see Jobs"
    ]
    runner_lines = [
        x.value for x in (*side.caption, *side.warning) if x.value.startswith("Runner: ")
    ]
    assert len(runner_lines) == 1 and runner_lines[0].startswith("Runner: last ingest ok ")


def test_ttl_whatif_page_shows_the_library_predictions(live_store, monkeypatch):
    from cachemon.clock import Window as W
    from cachemon.costs import optimize
    from cachemon.store.queries import data_span
    from cachemon.tuning import whatif as tuning_whatif

    db, cfg_file = live_store
    # The global endpoint (#21: the page's own Endpoint control is gone).
    at = _app(monkeypatch, db, cfg_file, "ttl", endpoint="title")
    assert not at.main.error
    table = at.dataframe[0].value
    cfg = config.load(cfg_file, env={"CACHEMON_DB": str(db)})
    with store_db.reader(db) as con:
        end = min(
            data_span(con)[1], floor_to(utcnow(), timedelta(seconds=30))
        )  # the page's refresh tick
        limit = cfg.costs.max_kv_ttl
        rec = optimize.recommended_ttls(con, cfg, W(end - cfg.costs.class_window, end), end)
        rec = rec["title"].recommended
        # The default candidates (#21: up to the staleness limit) and the recommended TTL.
        ttls = tuning_whatif.default_candidates(timedelta(days=1), limit)
        w = tuning_whatif.whatif(
            con, cfg, ["title"], sorted({*ttls, rec}), W(end - timedelta(days=7), end), end
        )[0]
    # Within 0.05 points: a tick may pass between the page's read and this one.
    shown = table["KV hit %"].str.split().str[0].astype(float)
    assert list(shown) == pytest.approx([p.kv_hit_rate for p in w.candidates], abs=0.05)
    assert table["TTL"].str.endswith("(recommended)").sum() == 1
    # A draft experiment when the recommendation changes the TTL, else "keep" and no draft.
    if rec != w.current_ttl:
        assert "[[experiments]]" in at.code[0].value
    else:
        assert not at.code and any(x.value.startswith("Keep ") for x in at.success)
    # The store keeps SHARDS samples (every write does): the page says the replay made the
    # figures, with their sampling error.
    assert w.method.name == tuning_whatif.REPLAY
    assert any(x.value.startswith(f"Predictions: {tuning_whatif.REPLAY}.") for x in at.caption)
    assert table["KV hit %"].str.contains(" ± ").all()
    at.text_input(key="ttl_candidates").input("6h,10s").run()
    assert any("between 60s and 365d" in e.value for e in at.error)


@pytest.mark.parametrize("page", list(PAGES))
def test_an_empty_store_says_how_to_fill_it(tmp_path, monkeypatch, page):
    at = _app(monkeypatch, tmp_path / "none.duckdb", None, page)
    if page == "experiments":
        return  # no experiment configured: that message comes first (tested above)
    assert not at.error
    assert any("python -m cachemon demo" in i.value for i in at.info), [i.value for i in at.info]


def test_a_store_with_no_data_yet_says_how_to_fill_it(tmp_path, monkeypatch):
    db = tmp_path / "empty.duckdb"
    with store_db.writer(db, utcnow()):
        pass
    at = _app(monkeypatch, db, None, "overview")
    assert any("the store has no request data yet" in c.value for c in at.caption)
    assert any("python -m cachemon import FILE" in i.value for i in at.info)


# A login configuration as Streamlit needs it to offer a login; the provider
# is never contacted (nobody clicks "Log in").
AUTH = {
    "redirect_uri": "http://127.0.0.1:8501/oauth2callback",
    "cookie_secret": "x" * 32,
    "client_id": "cachemon",
    "client_secret": "s",
    "server_metadata_url": "http://127.0.0.1:9/.well-known/openid-configuration",
}


def test_login_is_required_when_auth_is_configured(past_store, monkeypatch):
    monkeypatch.setenv("CACHEMON_DB", str(past_store[0]))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.secrets["auth"] = AUTH
    at.run()
    assert not at.exception
    assert [b.label for b in at.button] == ["Log in"] and not at.metric
    assert not at.sidebar.children  # no sidebar (data span, runner status) either
    with pytest.raises(ValueError, match=r"Known pages: \['Log in'\]"):
        at.switch_page(PAGES["costs"])  # the navigation holds the login page only


def test_a_logged_in_user_gets_every_page(past_store, monkeypatch):
    db, cfg_file = past_store
    monkeypatch.setenv("CACHEMON_DB", str(db))
    monkeypatch.setenv("CACHEMON_CONFIG", str(cfg_file))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.secrets["auth"] = AUTH
    at.user = {"is_logged_in": True, "email": "ops@example.com"}
    at.run()
    assert not at.exception and at.metric
    assert "Signed in as ops@example.com" in [c.value for c in at.sidebar.caption]
    assert "Log out" in [b.label for b in at.sidebar.button]
    for name, path in PAGES.items():
        at.switch_page(path).run()
        assert not at.exception, (name, [e.value for e in at.exception])


def test_an_unreadable_secrets_file_keeps_the_dashboard_closed(past_store, tmp_path, monkeypatch):
    """A secrets file that does not parse may hold an [auth] section: the
    dashboard says why it cannot log in, and shows nothing else."""
    import streamlit as st
    from streamlit import config as st_config

    broken = tmp_path / "secrets.toml"
    broken.write_text('[auth\nclient_id = "cachemon"\n')
    monkeypatch.setenv("CACHEMON_DB", str(past_store[0]))
    monkeypatch.setattr(st.secrets, "_secrets", None)  # nothing parsed before
    files = st_config.get_option("secrets.files")
    st_config.set_option("secrets.files", [str(broken)])
    try:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    finally:
        st_config.set_option("secrets.files", files)
    assert not at.exception
    assert [e.value for e in at.error] and "The login is not usable" in at.error[0].value
    assert not at.metric and not at.button and not at.sidebar.children


def test_experiments_page_takes_the_srm_threshold_from_the_library(live_store, monkeypatch):
    """The page's SRM banner and help use `stats.SRM_P`, not a copy of it."""
    monkeypatch.setattr(stats, "SRM_P", 0.999999)  # any computed p-value is now a mismatch
    at = _app(monkeypatch, *live_store, "experiments")
    srm = next(m for m in at.metric if m.label == "SRM p-value")
    assert "p < 0.999999 blocks decisions" in srm.help
    assert any(e.value.startswith("Sample ratio mismatch") for e in at.error)


@pytest.fixture(scope="module")
def server(live_store):
    db, cfg_file = live_store
    with streamlit_server({"CACHEMON_DB": str(db), "CACHEMON_CONFIG": str(cfg_file)}) as url:
        yield url


CHARTS = {
    "overview": 1,
    "trends": 6,
    "keys": 1,
    "experiments": 1,
    "ttl": 0,  # endpoint "all": the summary table (the curves are one endpoint's)
    "alerts": 1,
    "costs": 2,
    "jobs": 1,
}
READY = {
    "overview": "Combined hit rate %",
    "trends": "Requests served by tier",
    "keys": "Drill-down",
    "experiments": "Promotions and rollbacks",
    "ttl": "the Costs recommendation",  # the summary of all endpoints and one endpoint's page
    "alerts": "Silences",
    "costs": "Daily reports",
    "jobs": "Runs, last 24 hours",
}


TITLES = ["Overview", "Trends", "Top keys", "Experiments", "TTL what-if", "Alerts", "Costs", "Jobs"]


def _nav(page) -> list[str]:
    """The titles in the sidebar's page navigation (each link's text ends with its title)."""
    links = page.locator('[data-testid="stSidebarNav"] a').all_inner_texts()
    return [t.strip().splitlines()[-1] for t in links]


def test_every_page_in_a_real_browser(server, live_store):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with store_db.reader(
        live_store[0]
    ) as con:  # the Alerts timeline is drawn when an alert was active
        charts = CHARTS | {
            "alerts": int(bool(health.active_periods(con, utcnow() - timedelta(days=7), utcnow())))
        }
    with sync_playwright() as p:
        browser = chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        dialogs = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        # A deep link first: the first visit after a start must get the
        # app's navigation, not Streamlit's legacy pages-folder routing.
        for name in ["costs", *(n for n in PAGES if n != "costs")]:
            page.goto(f"{server}/{'' if name == 'overview' else name}")
            page.get_by_text(READY[name], exact=False).first.wait_for(timeout=60_000)
            page.wait_for_function(
                f"document.querySelectorAll('.main-svg').length >= {charts[name]}", timeout=60_000
            )
            page.wait_for_timeout(500)
            page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)
            assert page.locator('[data-testid="stException"]').count() == 0, name
            assert "Traceback" not in page.content(), name
            # app.py's pages once each, not also the pages/ folder's files.
            assert _nav(page) == TITLES, name
            if name == "overview":
                # A job whose last run failed is named on the sidebar, not only on the Jobs page.
                page.locator('[data-testid="stSidebar"]').get_by_text(
                    "Failing jobs: report"
                ).wait_for(timeout=30_000)
                value = page.locator('[data-testid="stMetric"]').first.locator(
                    '[data-testid="stMetricValue"]'
                )
                assert 50 < float(value.inner_text()) <= 100
                # The sidebar's range applies to the page (a real widget interaction).
                sidebar = page.locator('[data-testid="stSidebar"]')
                sidebar.get_by_text("15m", exact=True).click()
                page.get_by_text("compared with the previous 15m").wait_for(timeout=30_000)
                page.wait_for_url("**range=15m**", timeout=30_000)
            if name == "keys":
                # The busiest key is a script tag: shown as text in the drill-down selector.
                assert page.get_by_role("combobox", name="Key").input_value() == f"{EVIL} (title)"
                scripts = page.evaluate("[...document.scripts].map(s => s.textContent).join(' ')")
                assert "alert(1)" not in scripts
        assert dialogs == []
        browser.close()


def test_no_page_shows_nan_or_inf_whatever_the_store_holds(tmp_path_factory):
    """An older store can hold rows written before values were bounded
    (1e308 requests, inf bytes, nan latency, a minute in 2150). Every page
    still renders, in a real browser, and never shows nan or inf."""
    import re

    from playwright.sync_api import sync_playwright

    end = floor_to(utcnow(), timedelta(minutes=1))
    db, cfg_file = _make_store(tmp_path_factory.mktemp("poisoned"), end, hours=3)
    with store_db.writer(db, end) as con:
        for i in range(1, 4):
            m = end - timedelta(minutes=i)
            con.execute(
                "INSERT INTO rollup_minute VALUES ('simulator', $m, 'edge', 'title', '', '', 1e308, 0, "
                "'inf'::DOUBLE, 'nan'::DOUBLE, 'nan'::DOUBLE, 'inf'::DOUBLE, 1)",
                {"m": m},
            )
            con.execute(
                "INSERT INTO rollup_hour VALUES ('simulator', $h, 'kv', 'title', '', '', 'inf'::DOUBLE, "
                "'nan'::DOUBLE, 1, 1, 1, 1, 1)",
                {"h": floor_to(m, timedelta(hours=1))},
            )
            con.execute(
                "INSERT INTO latency_minute VALUES ('simulator', $m, 'edge', 'title', '', '', 3, "
                "'inf'::DOUBLE)",
                {"m": m},
            )
        con.execute(
            "INSERT INTO rollup_minute VALUES ('simulator', $m, 'edge', 'title', '', '', 1, 0, 0, 1, 1, 1, 1)",
            {"m": end.replace(year=2150)},
        )
    bad = re.compile(r"\b(nan|inf|infinity)\b", re.I)
    with streamlit_server({"CACHEMON_DB": str(db), "CACHEMON_CONFIG": str(cfg_file)}) as url:
        with sync_playwright() as p:
            browser = chromium(p)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            seen = {}
            for name in PAGES:
                page.goto(f"{url}/{'' if name == 'overview' else name}")
                page.get_by_text(READY[name], exact=False).first.wait_for(timeout=60_000)
                page.wait_for_timeout(1500)
                text = page.inner_text("body")
                assert page.locator('[data-testid="stException"]').count() == 0, name
                seen[name] = sorted({m.group(0) for m in bad.finditer(text)})
            browser.close()
    assert seen == {name: [] for name in PAGES}, seen


def _login_env(live_store, tmp_path) -> dict:
    """The dashboard's environment with a login configured (secrets file)."""
    db, cfg_file = live_store
    secrets = tmp_path / "secrets.toml"
    secrets.write_text("[auth]\n" + "".join(f'{k} = "{v}"\n' for k, v in AUTH.items()))
    return {
        "CACHEMON_DB": str(db),
        "CACHEMON_CONFIG": str(cfg_file),
        "STREAMLIT_SECRETS_FILES": str(secrets),
    }


def test_with_a_login_configured_every_url_shows_only_the_login(live_store, tmp_path):
    """Nobody logged in: every page's URL, a deep link first after the start
    (when Streamlit would still route the pages/ folder itself), renders the
    login page and nothing of the store: no sidebar, no figures, no tables."""
    from playwright.sync_api import sync_playwright

    env = _login_env(live_store, tmp_path)
    with streamlit_server(env) as url, sync_playwright() as p:
        browser = chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        for name in ["costs", *(n for n in PAGES if n != "costs")]:
            page.goto(f"{url}/{'' if name == 'overview' else name}")
            page.get_by_text("This dashboard needs a login.").wait_for(timeout=60_000)
            page.wait_for_timeout(1000)  # a late render would show here
            body = page.inner_text("body")
            assert page.get_by_role("button", name="Log in").count() == 1, name
            assert page.locator('[data-testid="stHeading"]').all_inner_texts() == ["cachemon"]
            for testid in ("stSidebar", "stMetric", "stDataFrame", "stPlotlyChart", "stException"):
                assert page.locator(f'[data-testid="{testid}"]').count() == 0, (name, testid)
            assert READY[name] not in body and EVIL not in page.content(), name
        browser.close()


def test_every_page_draws_nothing_before_page_start():
    """Static guard for the legacy-routing run: no page script draws at
    module level, and the function it runs starts with `common.page_start`."""
    import ast

    for script in sorted((ROOT / "pages").glob("*.py")):
        if script.name == "__init__.py":
            continue
        tree = ast.parse(script.read_text())
        exprs = [n.value for n in tree.body[1:] if isinstance(n, ast.Expr)]  # after the docstring
        calls = [c for c in exprs if isinstance(c, ast.Call)]
        assert len(calls) == len(exprs), script.name
        drawn = [ast.unparse(c.func) for c in calls]
        assert [d for d in drawn if d.startswith("st.")] == [], script.name
        (entry,) = [d for d in drawn if not d.startswith("st.")]
        fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == entry)
        first = ast.unparse(fn.body[0])
        assert "common.page_start(" in first, (script.name, first)


# Every heading the page ever shows, including one replaced a moment later by
# a rerun: the final page would not tell.
RECORD_HEADINGS = """
window.__headings = [];
new MutationObserver(() => {
  for (const h of document.querySelectorAll('[data-testid="stHeading"]')) {
    const text = h.innerText.trim();
    if (text && !window.__headings.includes(text)) window.__headings.push(text);
  }
}).observe(document, {childList: true, subtree: true, characterData: true});
"""


@pytest.mark.parametrize("name", ["alerts", "costs"])
def test_the_first_deep_link_with_a_login_configured_never_draws_the_page(
    live_store, tmp_path, name
):
    """The first visit after a start runs the bare page script (Streamlit's
    legacy pages/ routing) before app.py's login check: the page must ask for
    the config before drawing anything, so not even its heading flashes."""
    from playwright.sync_api import sync_playwright

    env = _login_env(live_store, tmp_path)
    with streamlit_server(env) as url, sync_playwright() as p:
        browser = chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.add_init_script(RECORD_HEADINGS)
        page.goto(f"{url}/{name}")
        page.get_by_text("This dashboard needs a login.").wait_for(timeout=60_000)
        page.wait_for_timeout(1000)
        assert page.evaluate("window.__headings") == ["cachemon"]
        browser.close()


def test_a_broken_config_file_shows_its_error_below_the_navigation(tmp_path):
    """The navigation comes first: a config file that does not load is an
    error in the page's place, and every page is still in the menu."""
    from playwright.sync_api import sync_playwright

    bad = tmp_path / "cachemon.toml"
    bad.write_text("[metrics\n")
    env = {"CACHEMON_DB": str(tmp_path / "none.duckdb"), "CACHEMON_CONFIG": str(bad)}
    with streamlit_server(env) as url, sync_playwright() as p:
        browser = chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        for path in ("costs", "", "jobs"):
            page.goto(f"{url}/{path}")
            error = page.locator('[data-testid="stAlertContentError"]')
            error.first.wait_for(timeout=60_000)
            page.wait_for_timeout(500)
            assert "is not valid TOML" in error.first.inner_text(), path
            assert _nav(page) == TITLES, path
            assert page.locator('[data-testid="stException"]').count() == 0, path
        browser.close()
