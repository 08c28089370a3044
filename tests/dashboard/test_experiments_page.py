"""The Experiments page as GrowthBook's results page (issue #21): per-cohort
values and lifts against raw events, the confidence sequence with one point
per stored analysis, the sample-ratio check in words, the days still needed
in words, and the promotions with the estimates they were decided on."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as hst

from cachemon import config
from cachemon.clock import iso
from cachemon.ingest import load as ingest_load
from cachemon.store import db as store_db
from cachemon.timerange import stamp
from cachemon.tuning import analysis as tuning_analysis
from cachemon.tuning import power, promote, results
from cachemon.tuning.analysis import Comparison, MetricResult
from pages.shared.charts import BAD, GOOD
from tests.dashboard.test_dashboard import _app
from tests.helpers import EXPERIMENT_TOML, T0, load, simulate, weighted_quantile

NAME = "extended-title-ttl"
LOOKS = (2, 4, 6)  # hours after the start: one stored analysis each
PROMOTED = T0 + timedelta(hours=5)  # decided on the 4-hour analysis


@pytest.fixture(scope="module")
def history_store(tmp_path_factory):
    """Six hours of the small simulator from the experiment's start (no
    pre-period, so CUPED leaves the lift alone), analysed at three looks, and
    one promotion between the second and the third."""
    d = tmp_path_factory.mktemp("exp_page")
    parts, truth = simulate(6)
    db, cfg_file = d / "cachemon.duckdb", d / "cachemon.toml"
    load(db, parts)
    cfg_file.write_text(EXPERIMENT_TOML.format(start=iso(T0)))
    cfg = config.with_db(config.load(cfg_file, env={}), str(db))
    for hours in LOOKS:
        at = T0 + timedelta(hours=hours)
        with store_db.writer(db, at) as con:
            results.save(con, tuning_analysis.analyze(con, cfg.experiments[0], at, cfg.pricing))
            if at > PROMOTED and not promote.history(con):
                promote.record(
                    con,
                    promote.Action(
                        "promote",
                        NAME,
                        {"title": 86400, "isbn": 86400, "author": 86400},
                        {"title": 172800, "isbn": 86400, "author": 86400},
                        "title KV TTL 86400 s → 172800 s (treatment won)",
                    ),
                    PROMOTED,
                )
    return db, cfg_file, cfg, truth


def _truth(truth: pd.DataFrame, cfg, hours: float) -> dict[str, dict[str, float]]:
    """Each cohort's hit rate %, error rate %, list cost per 1M requests and
    p95 ms over the first `hours`, straight from the raw events."""
    t = truth[
        (truth.kind == "request")
        & (truth.experiment == NAME)
        & (truth.timestamp < pd.Timestamp(T0 + timedelta(hours=hours)))
    ]
    p = cfg.pricing
    out = {}
    for cohort, g in t.groupby("cohort"):
        w = g.sample_interval
        by = g.assign(
            **{tier: np.where(g.tier == tier, w, 0.0) for tier in ("edge", "kv", "r2", "api")},
            failed=np.where((g.status == "error") & g.tier.isin(["r2", "api"]), w, 0.0),
        )
        k = by.groupby("key")[["edge", "kv", "r2", "api", "failed"]].sum()
        requests = k.sum(axis=1) - k.failed
        # The seed's flow: KV read on every edge miss, a write per fill that did
        # not fail (never negative per key), an R2 get per R2 answer.
        cost = (
            p["workers_requests"].price / p["workers_requests"].per * requests.sum()
            + p["kv_reads"].price / p["kv_reads"].per * (k.kv + k.r2 + k.api).sum()
            + p["kv_writes"].price / p["kv_writes"].per * (k.r2 + k.api - k.failed).clip(0).sum()
            + p["r2_class_b"].price / p["r2_class_b"].per * k.r2.sum()
        )
        out[cohort] = {
            "hit_rate": 100 * w[g.tier.isin(["edge", "kv"])].sum() / w.sum(),
            "error_rate": 100 * w[g.status == "error"].sum() / w.sum(),
            "cost_per_request": 1e6 * cost / w.sum(),
            "p95_latency": weighted_quantile(g.latency_ms, w, 0.95),
        }
    return out


def _number(cell: str) -> float:
    """The leading number of a cell such as '+1.23 points' or '-0.0412 USD/1M'."""
    return float(re.match(r"[+-]?[\d,]*\.?\d+", cell).group().replace(",", ""))


def _page(monkeypatch, history_store):
    db, cfg_file, *_ = history_store
    return _app(monkeypatch, db, cfg_file, "experiments")


def _texts(at) -> str:
    """Every text the page shows: markdown, captions, alerts, metrics, tables."""
    parts = [
        e.value
        for kind in ("markdown", "caption", "info", "error", "warning", "success", "subheader")
        for e in getattr(at, kind)
    ]
    parts += [f"{m.label} {m.value} {m.help or ''}" for m in at.metric]
    parts += [df.value.to_csv(index=False) for df in at.dataframe]
    return "\n".join(parts)


def test_cohort_values_and_lifts_equal_raw_events(history_store, monkeypatch):
    _, _, cfg, truth = history_store
    at = _page(monkeypatch, history_store)
    table = at.dataframe[1].value  # cohorts first, then the treatment's results
    assert list(table.columns) == [
        "metric",
        "control",
        "treatment",
        "abs lift",
        "rel lift %",
        "interval (abs lift)",
        "result",
    ]
    rows = {r.metric: r for r in table.itertuples()}
    assert list(rows) == [
        "hit rate %",
        "cost USD per 1M requests",
        "error rate %",
        "p95 latency ms",
    ]
    want = _truth(truth, cfg, LOOKS[-1])
    for metric, label in (
        ("hit_rate", "hit rate %"),
        ("cost_per_request", "cost USD per 1M requests"),
        ("error_rate", "error rate %"),
        ("p95_latency", "p95 latency ms"),
    ):
        c, t = want["control"][metric], want["treatment"][metric]
        row = rows[label]
        # p95 from the log-bucket histogram: within its 1 % relative error.
        rel = 0.011 if metric == "p95_latency" else 0.0
        shown = (_number(row.control), _number(row.treatment))
        for got, truth_value in zip(shown, (c, t)):
            assert got == pytest.approx(truth_value, rel=max(rel, 1e-3), abs=0.006)
        lift = _number(row._4)  # "abs lift"
        assert lift == pytest.approx(t - c, abs=max(rel * (abs(c) + abs(t)), 0.006))
        assert "*" not in row._4  # no pre-period: no CUPED adjustment to flag
        if metric != "p95_latency":
            assert _number(row._5) == pytest.approx(100 * (t - c) / c, rel=1e-2, abs=0.006)
        lo, hi = (_number(x) for x in row._6.strip("[").split("]")[0].split(", "))
        assert lo <= lift <= hi
    assert rows["hit rate %"]._4.endswith("points")
    assert rows["hit rate %"].result.split(" (")[0] in {v.value for v in results.Verdict}


def test_the_confidence_sequence_has_one_point_per_stored_analysis(history_store, monkeypatch):
    db, cfg_file, cfg, truth = history_store
    at = _page(monkeypatch, history_store)
    charts = at.get("plotly_chart")
    assert len(charts) == 1  # one treatment
    fig = json.loads(charts[0].proto.spec)
    lift = next(t for t in fig["data"] if t.get("name") == "hit-rate lift")
    assert len(lift["x"]) == len(LOOKS)
    for hours, y in zip(LOOKS, lift["y"]):
        want = _truth(truth, cfg, hours)
        assert y == pytest.approx(
            want["treatment"]["hit_rate"] - want["control"]["hit_rate"], abs=1e-9
        )
    # The interval band and error bars bound every point.
    with store_db.reader(db) as con:
        stored = results.stored(con, NAME)
    band = [t for t in fig["data"] if t.get("hoverinfo") == "skip"]
    hits = [
        next(m for m in s.analysis.comparisons[0].metrics if m.metric == "hit_rate") for s in stored
    ]
    assert band[0]["y"] == pytest.approx([m.upper for m in hits])
    assert band[1]["y"] == pytest.approx([m.lower for m in hits]) and band[1]["fill"] == "tonexty"
    # The zero line and the labelled margin line.
    ys = {s["y0"] for s in fig["layout"]["shapes"] if s.get("y0") == s.get("y1")}
    assert {0, cfg.experiments[0].margin} <= ys
    notes = [a["text"] for a in fig["layout"]["annotations"]]
    assert any(n.startswith("margin 2 points") for n in notes), notes
    assert "no difference" in notes


def test_days_still_needed_in_words(history_store, monkeypatch):
    db, *_ = history_store
    at = _page(monkeypatch, history_store)
    with store_db.reader(db) as con:
        o = results.stored(con, NAME)[-1].analysis.comparisons[0].outlook
    words = [m.value for m in at.markdown if m.value.startswith("**Days still needed:**")]
    assert words == [f"**Days still needed:** {results.explain(o)}"]


@pytest.mark.parametrize(
    ("reach", "days", "want"),
    [
        (
            power.Reach.WITHIN_PLAN,
            4,
            "About 4 more days at the current traffic for the hit-rate gain's lower bound to "
            "clear the 2-point margin (the gain is 3.00 points now, its lower bound 0.50), "
            "within the planned duration (10.0 days left).",
        ),
        (
            power.Reach.PAST_END,
            20,
            "About 20 more days at the current traffic for the hit-rate gain's lower bound to "
            "clear the 2-point margin (the gain is 3.00 points now, its lower bound 0.50): past "
            "the planned end (10.0 days left), so the duration must grow to at least 24 days.",
        ),
        (power.Reach.CLEARED, 0, "No more days needed"),
        (power.Reach.TOO_SLOW, None, "Out of reach at the current traffic: more than 365"),
    ],
)
def test_explain_says_the_days_in_words(reach, days, want):
    o = power.Outlook("treatment", reach, days, 3.0, 0.5, 2.0, 4.0, 14.0, 1.0, 100, 100, 0.05)
    assert results.explain(o).startswith(want)


def test_colours_follow_each_metrics_direction():
    """A lower cost is better and a higher one worse; a higher hit rate is
    better: an improvement is never read as bad."""

    def verdict(metric, lo, hi):
        c = Comparison(
            "t",
            tuning_analysis.Decision.INCONCLUSIVE,
            "",
            (MetricResult(metric, 10.0, 11.0, 1.0, lo, hi, 0.01),),
        )
        return results.lifts(c)[0].verdict

    V = results.Verdict
    assert verdict("hit_rate", 0.5, 1.5) == V.BETTER
    assert verdict("hit_rate", -2.0, -0.5) == V.WORSE
    for guard in ("cost_per_request", "error_rate", "p95_latency"):
        assert verdict(guard, 0.5, 1.5) == V.WORSE
        assert verdict(guard, -2.0, -0.5) == V.BETTER
        assert verdict(guard, -0.5, 1.5) == V.UNCLEAR


def test_promotions_show_the_estimates_they_were_decided_on(history_store, monkeypatch):
    db, _, cfg, truth = history_store
    at = _page(monkeypatch, history_store)
    row = at.dataframe[-1].value.iloc[0]
    assert row["action"] == "promote" and row["at"] == stamp(PROMOTED)
    # The newest analysis at or before the promotion: the 4-hour look.
    assert row["decided on"] == stamp(T0 + timedelta(hours=4))
    want = _truth(truth, cfg, 4)
    lift = want["treatment"]["hit_rate"] - want["control"]["hit_rate"]
    with store_db.reader(db) as con:
        decided = results.stored(con, NAME)[1].analysis  # the 4-hour look
    then = row["hit-rate lift then (points)"]
    assert then.startswith("treatment ") and then.endswith(f" · {decided.decision}"), then
    assert _number(then.removeprefix("treatment ")) == pytest.approx(lift, abs=0.006)
    assert row["KV TTLs written"] == "title 1d → 2d"


def test_the_page_says_its_own_dates_and_shows_no_none_nan_or_iso(history_store, monkeypatch):
    at = _page(monkeypatch, history_store)
    assert any("do not follow the global time range" in c.value for c in at.caption)
    text = _texts(at)
    for bad in ("None", "nan", "inf", "NaT"):
        assert not re.search(rf"\b{bad}\b", text), bad
    assert not re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d", text)  # one format: stamp()
    assert stamp(T0 + timedelta(hours=6)) in text
    assert "The split matches" in text


def test_a_broken_split_says_the_results_cannot_be_trusted(tmp_path, monkeypatch):
    """Events whose cohorts do not follow the allocation (two thirds in the
    control): the page says the split is off, by how much, and what it means."""
    rows = [
        {
            "timestamp": iso(T0 + timedelta(minutes=i % 60, seconds=j)),
            "tier": "edge" if j else "api",
            "key": f"search:title:q=k{i}",
            "endpoint": "title",
            "latency_ms": 5.0,
            "experiment": NAME,
            "cohort": "control" if i < 400 else "treatment",
        }
        for i in range(600)
        for j in range(3)
    ]
    events = tmp_path / "skewed.ndjson"
    events.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg_file = tmp_path / "cachemon.toml"
    cfg_file.write_text(EXPERIMENT_TOML.format(start=iso(T0)))
    cfg = config.with_db(config.load(cfg_file, env={}), str(tmp_path / "s.duckdb"))
    end = T0 + timedelta(hours=2)
    ingest_load.import_files(cfg, [events], end)
    with store_db.writer(cfg.store.path, end) as con:
        results.save(con, tuning_analysis.analyze(con, cfg.experiments[0], end, cfg.pricing))
    at = _app(monkeypatch, cfg.store.path, cfg_file, "experiments")
    errors = [e.value for e in at.error]
    assert len(errors) == 1, errors
    assert errors[0].startswith(
        "Sample ratio mismatch: The split is off: observed 66.67 % / 33.33 %"
    )
    assert "(400 / 200, control / treatment) against the configured 50.39 % / 49.61 %" in errors[0]
    assert "cannot be trusted until the assignment is fixed" in errors[0]
    assert not at.get("plotly_chart")  # no estimate to draw


def test_lifts_are_green_when_better_and_red_when_worse(tmp_path, monkeypatch):
    """A stored analysis whose hit rate rose and cost rose (both significant):
    the hit-rate row in the good colour, the cost row in the bad one, the
    unclear error rate in neither."""
    cfg_file = tmp_path / "cachemon.toml"
    cfg_file.write_text(EXPERIMENT_TOML.format(start=iso(T0)))
    db = tmp_path / "cachemon.duckdb"
    at_ = T0 + timedelta(days=1)
    metrics = (
        MetricResult("hit_rate", 80.0, 84.0, 4.0, 3.0, 5.0, 0.001),
        MetricResult("cost_per_request", 0.5, 0.6, 0.1, 0.05, 0.15, 0.002),
        MetricResult("error_rate", 0.1, 0.1, 0.0, -0.05, 0.05, 0.9),
    )
    analysis = tuning_analysis.Analysis(
        NAME,
        at_,
        T0,
        at_,
        (("control", 500), ("treatment", 495)),
        0.9,
        tuning_analysis.Decision.LOSER,
        (Comparison("treatment", tuning_analysis.Decision.LOSER, "guardrail worse", metrics),),
    )
    with store_db.writer(db, at_) as con:
        results.save(con, analysis)
    at = _app(monkeypatch, db, cfg_file, "experiments")
    styles = at.dataframe[1].proto.arrow_data.styler.styles
    # Styler CSS: "#T_x_row0_col3, #T_x_row0_col4 { color: …; … }" (col 3: abs lift).
    rules = {
        row: css
        for cells, css in re.findall(r"([^{}]+)\{([^}]*)\}", styles)
        for row in re.findall(r"_row(\d+)_col3\b", cells)
    }
    assert GOOD in rules["0"] and BAD not in rules["0"]  # hit rate up: better
    assert BAD in rules["1"] and GOOD not in rules["1"]  # cost up: worse
    assert "2" not in rules or not {GOOD, BAD} & set(re.findall(r"#[0-9a-f]{6}", rules["2"]))


@given(
    metric=hst.sampled_from(sorted(results.HIGHER_IS_BETTER)),
    control=hst.floats(0.01, 1e3),
    lo=hst.floats(-50, 50),
    width=hst.floats(0, 50),
    at=hst.floats(0, 1),
)
def test_an_improvement_is_never_called_worse(metric, control, lo, width, at):
    """Whatever the interval: 'better' exactly when it lies on the improving
    side of zero, 'worse' on the other, and the relative lift is absolute /
    control."""
    hi = lo + width
    estimate = lo + at * width
    m = MetricResult(metric, control, control + estimate, estimate, lo, hi, 0.5)
    c = Comparison("t", tuning_analysis.Decision.INCONCLUSIVE, "", (m,))
    (lift,) = results.lifts(c)
    up = 1 if results.HIGHER_IS_BETTER[metric] else -1
    improving = min(up * lo, up * hi) > 0
    worsening = max(up * lo, up * hi) < 0
    want = (
        results.Verdict.BETTER
        if improving
        else results.Verdict.WORSE
        if worsening
        else results.Verdict.UNCLEAR
    )
    assert lift.verdict == want
    assert lift.relative == pytest.approx(estimate / control)
    assert not lift.adjusted
