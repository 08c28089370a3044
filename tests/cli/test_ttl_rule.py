"""`ttl whatif` says what the TTL page and Costs say (issue #21): one TTL
rule's recommendation for every endpoint, the recommended TTL among the
default candidates (up to the staleness limit) and marked, the what-if's
verdict on it, and a draft of that TTL; checked against the rule, the
what-if and the stored Costs report run directly."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import timedelta

import pytest

from cachemon import config, settings
from cachemon.cli.main import main as cli_main
from cachemon.clock import Window, floor_to, format_duration, parse_duration, utcnow
from cachemon.costs import optimize, report
from cachemon.store import db as store_db
from cachemon.store.queries import data_end
from cachemon.tuning import whatif as tuning_whatif
from cachemon.usecases import demo
from tests.helpers import SMALL

VERDICT_WORDS = {
    tuning_whatif.AGREES: "agrees",
    tuning_whatif.DISAGREES: "disagrees",
    tuning_whatif.UNCHECKED: "cannot check",
}


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    """Two days of the small demo ending two hours ago, its daily Costs report stored."""
    db = tmp_path_factory.mktemp("ttlrule") / "cachemon.duckdb"
    end = floor_to(utcnow(), timedelta(minutes=1)) - timedelta(hours=2)
    cfg = replace(config.with_db(settings.Config(), str(db)), simulator=SMALL)
    demo.demo(cfg, 2, end)
    with store_db.writer(db, end) as con:
        report.save(con, report.build(con, cfg, end.date(), end))
    return db, cfg


@pytest.fixture
def cli(demo_store, monkeypatch, capsys):
    db, _ = demo_store
    monkeypatch.setenv("CACHEMON_DB", str(db))
    monkeypatch.delenv("CACHEMON_CONFIG", raising=False)

    def run(*args: str) -> tuple[str, str]:
        assert cli_main(["ttl", "whatif", *args]) == 0
        out = capsys.readouterr()
        return out.out, out.err

    return run


def _costs_ttls(db, cfg) -> dict[str, timedelta]:
    """Each endpoint's TTL by the stored Costs report: its ttl_tuning action's
    new TTL, else the current one."""
    with store_db.reader(db) as con:
        stored = report.recent(con, 1)[0].report
    found = {
        e: parse_duration(new)
        for r in stored.recommendations
        if r.type == optimize.Kind.TTL_TUNING
        for e, _, new in re.findall(r"(\w+) KV TTL (\w+) → (\w+)", r.action)
    }
    return {e: found.get(e, t) for e, t in cfg.costs.kv_ttl}


def _truth(db, cfg, endpoint: str):
    """The page's rule choice and the what-if at the page's default candidates."""
    with store_db.reader(db) as con:
        end = data_end(con, utcnow())
        choices = optimize.recommended_ttls(
            con, cfg, Window(end - cfg.costs.class_window, end), end
        )
        current = dict(cfg.costs.kv_ttl)[endpoint]
        asked = sorted(
            {
                *tuning_whatif.default_candidates(current, cfg.costs.max_kv_ttl),
                choices[endpoint].recommended,
            }
        )
        (w,) = tuning_whatif.whatif(
            con, cfg, [endpoint], asked, Window(end - timedelta(days=7), end), end
        )
    return choices[endpoint], w


def test_cli_recommends_what_the_page_and_costs_recommend_for_every_endpoint(demo_store, cli):
    db, cfg = demo_store
    costs = _costs_ttls(db, cfg)
    # The case: Costs recommends past the old CLI's 7d candidates.
    assert any(t > timedelta(days=7) for t in costs.values()), costs
    assert any(costs[e] != t for e, t in cfg.costs.kv_ttl), "the demo must change a TTL"
    for endpoint, current in cfg.costs.kv_ttl:
        choice, w = _truth(db, cfg, endpoint)
        rec = choice.recommended
        assert rec == costs[endpoint], endpoint
        js = json.loads(cli("--endpoint", endpoint, "--json")[0])
        assert parse_duration(js["rule"]["ttl"]) == rec and js["rule"]["changes"] == (
            rec != current
        )
        assert js["rule"]["savingPerDay"] == pytest.approx(choice.saving, abs=1e-6)
        assert js["rule"]["warmKeys"] == choice.keys
        # Default candidates: up to the staleness limit, the recommended TTL among them.
        rows = [parse_duration(c["ttl"]) for c in js["candidates"]]
        assert rows == [p.ttl for p in w.candidates] and rec in rows
        assert rows[-1] == cfg.costs.max_kv_ttl
        assert [c["kvHitRate"] for c in js["candidates"]] == pytest.approx(
            [p.kv_hit_rate for p in w.candidates], abs=1e-4
        )
        ck = tuning_whatif.check(w, rec)
        assert js["check"]["verdict"] == ck.verdict
        assert js["check"]["costChangePerDay"] == pytest.approx(ck.cost_change, abs=1e-6)
        assert js["recommended"]["ttl"] == format_duration(rec)
        assert js["recommended"]["costPerDay"] == pytest.approx(ck.prediction.cost, abs=1e-6)

        out, err = cli("--endpoint", endpoint, "--draft-experiment")
        marked = [ln.split()[0] for ln in out.splitlines() if ln.endswith(" *")]
        assert marked == [format_duration(rec)], endpoint
        if rec == current:
            assert f"recommended: keep {format_duration(rec)} (the Costs rule" in out
            assert "[[experiments]]" not in out and "no experiment drafted" in err
            continue
        said = re.search(r"recommended \(\*\): (\w+) \(the Costs rule: saves ([\d.]+) USD/day", out)
        assert said and parse_duration(said.group(1)) == rec, out
        assert float(said.group(2)) == pytest.approx(choice.saving, abs=5e-5)
        assert f"{VERDICT_WORDS[ck.verdict]}" in out.split("recommended (*)")[1]
        assert f'ttl = "{format_duration(rec)}"' in out.split("[[experiments]]")[1]


def test_explicit_candidates_still_get_the_recommended_ttl(demo_store, cli):
    db, cfg = demo_store
    choice, _ = _truth(db, cfg, "title")
    assert choice.recommended not in (timedelta(hours=6), timedelta(days=1))
    js = json.loads(cli("--endpoint", "title", "--ttl", "6h,1d", "--json")[0])
    assert [parse_duration(c["ttl"]) for c in js["candidates"]] == sorted(
        {timedelta(hours=6), timedelta(days=1), choice.recommended}
    )


def test_a_current_ttl_past_the_staleness_limit_is_kept_and_said(demo_store, cli, capsys):
    """The rule weighs TTLs up to the limit; none saves, so it keeps the
    current TTL, and the output says that TTL is past the limit."""
    out, _ = cli("--endpoint", "isbn", "--max-staleness", "1d", "--ttl", "6h")
    assert "the current TTL 30d is past the staleness limit 1d" in out
    assert "recommended: keep 30d (the Costs rule" in out
    js = json.loads(cli("--endpoint", "isbn", "--max-staleness", "1d", "--ttl", "6h", "--json")[0])
    assert js["rule"]["ttl"] == "30d" and js["check"]["verdict"] == tuning_whatif.KEEP
    assert js["recommended"] == js["current"]
    # The endpoint is checked before the rule is looked up: named, not a KeyError.
    assert cli_main(["ttl", "whatif", "--endpoint", "nope"]) == 2
    assert "unknown endpoint 'nope': [costs] kv_ttl has author" in capsys.readouterr().err
