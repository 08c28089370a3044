"""docs/analysts.md cannot rot: every example query runs against a demo store,
and every view and column of schema v1 is documented."""

from __future__ import annotations

import re
from datetime import UTC, timedelta

import duckdb
import pytest

from cachemon.costs import report
from cachemon.store import db as store_db
from cachemon.store import snapshots
from cachemon.store import views as store_views
from cachemon.tuning import results as tuning_results
from tests.helpers import ROOT

DOC = ROOT / "docs" / "analysts.md"
# Queries whose docs say they may come back empty on healthy data.
MAY_BE_EMPTY = ("Keys that fell out of the edge", "Notifications that were not delivered")


def _examples() -> list[tuple[str, str]]:
    text = DOC.read_text(encoding="utf-8").split("## Example questions", 1)[1].split("\n## ", 1)[0]
    out = []
    for section in text.split("\n### ")[1:]:
        title = section.splitlines()[0]
        out += [(title, sql) for sql in re.findall(r"```sql\n(.*?)```", section, re.S)]
    return out


@pytest.fixture(scope="module")
def demo_store(docs_store):
    """Three days of small demo traffic ending now, with the daily jobs' products (conftest)."""
    return docs_store


def test_the_docs_have_at_least_ten_examples():
    assert len(_examples()) >= 10


@pytest.mark.parametrize("title,sql", _examples(), ids=[t for t, _ in _examples()])
def test_every_documented_query_runs_on_a_demo_store(demo_store, title, sql):
    con = duckdb.connect(
        str(snapshots.snapshot_path(demo_store)), read_only=True
    )  # the documented read path
    con.execute("SET TimeZone = 'UTC'")
    rows = con.execute(sql).fetchall()
    if not any(m in title for m in MAY_BE_EMPTY):
        assert rows, title


def test_every_view_and_column_is_documented(demo_store):
    doc = DOC.read_text(encoding="utf-8")
    with store_db.reader(demo_store) as con:
        views = [
            v
            for (v,) in con.execute(
                "SELECT view_name FROM duckdb_views() WHERE schema_name = $s",
                {"s": store_views.SCHEMA},
            ).fetchall()
        ]
        macros = {
            m
            for (m,) in con.execute(
                "SELECT DISTINCT function_name FROM duckdb_functions() WHERE schema_name = $s",
                {"s": store_views.SCHEMA},
            ).fetchall()
        }
        assert (
            len(views) >= 15 and {"latency_daily", "top_keys", "key_classes", "bucket_ms"} <= macros
        )
        for name in views + sorted(macros):
            assert re.search(rf"`(v1\.)?{name}\b", doc), name
        for view in views:
            for (column,) in con.execute(
                f"SELECT column_name FROM (DESCRIBE {store_views.SCHEMA}.{view})"
            ).fetchall():
                assert f"`{column}`" in doc, (view, column)


def test_the_purge_query_finds_the_keys_the_simulated_purge_knocked_out_of_the_edge(tmp_path):
    from datetime import datetime

    from tests.helpers import load, simulate

    purge = datetime(2026, 11, 24, 14, 0, tzinfo=UTC)  # the simulator's weekly edge purge (Tuesday)
    parts, truth = simulate(12, purge - timedelta(hours=6))
    load(tmp_path / "p.duckdb", parts, now=purge + timedelta(hours=6))
    ((title, sql),) = [(t, q) for t, q in _examples() if "fell out of the edge" in t]
    placeholder = "date_trunc('hour', now()) - INTERVAL 12 HOUR"
    assert placeholder in sql
    with store_db.reader(tmp_path / "p.duckdb") as con:
        got = con.execute(
            sql.replace(placeholder, "TIMESTAMPTZ '2026-11-24 14:00:00+00'")
        ).fetchall()
    r = truth[truth.kind == "request"].assign(after=lambda d: d.timestamp >= purge)
    r = r.assign(edge=r.sample_interval.where(r.tier == "edge", 0.0))
    g = r.groupby(["key", "after"])[["sample_interval", "edge"]].sum().unstack("after")
    g = g[(g[("sample_interval", False)] >= 20) & (g[("sample_interval", True)] >= 20)]
    before = 100 * g[("edge", False)] / g[("sample_interval", False)]
    after = 100 * g[("edge", True)] / g[("sample_interval", True)]
    knocked = set(g.index[after < before - 20])
    assert knocked and {row[0] for row in got} == knocked


def test_cost_and_experiment_views_equal_what_cachemon_stored(demo_store):
    with store_db.reader(demo_store) as con:
        costs = con.execute(
            "SELECT day, sum(list_usd), sum(billed_usd), count(*) FROM v1.cost_day "
            "GROUP BY day ORDER BY day DESC"
        ).fetchall()
        reports = report.recent(con)
        results = con.execute(
            "SELECT analyzed_at, treatment, metric, estimate, ci_lower, ci_upper "
            "FROM v1.experiment_results ORDER BY ALL"
        ).fetchall()
        history = tuning_results.history(con, "extended-title-ttl")
    assert [(c[0], c[3]) for c in costs] == [(r.day, len(r.report.lines)) for r in reports] and len(
        costs
    ) >= 2
    for (_day, list_usd, billed_usd, _), r in zip(costs, reports):
        assert list_usd == pytest.approx(r.report.list_total, rel=1e-12)
        assert billed_usd == pytest.approx(r.report.billed_total, rel=1e-12)
    want = sorted(
        (h["analyzed_at"], c["treatment"], m["metric"], m["estimate"], m["lower"], m["upper"])
        for h in history
        for c in h["result"]["comparisons"]
        for m in c["metrics"]
    )
    assert results == want and len(want) >= 4
