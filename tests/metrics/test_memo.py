"""The per-snapshot memo (`metrics.memo`) and the store-span query it
shares (`store.queries.data_spans`): a report built through a memo is the
report built without one, for any instant, and a memo never outlives the
snapshot it was filled from."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachemon import settings as cm_settings
from cachemon.alerts import evaluate as alerts_evaluate
from cachemon.alerts import health as alerts_health
from cachemon.alerts import rules as alerts_rules
from cachemon.clock import Period
from cachemon.errors import InputError
from cachemon.metrics.memo import SnapshotMemo, through
from cachemon.store import db as store_db
from cachemon.store import queries
from cachemon.usecases import metrics_report
from tests.helpers import T0, load, simulate


def test_memo_keeps_values_by_key_and_drops_the_least_recent():
    memo = SnapshotMemo("v1", size=2)
    calls = []

    def value(k):
        calls.append(k)
        return k * 10

    assert memo.get("a", lambda: value(1)) == 10
    assert memo.get("a", lambda: value(99)) == 10  # kept: not computed again
    memo.get("b", lambda: value(2))
    memo.get("a", lambda: value(99))  # "a" is now the most recent
    memo.get("c", lambda: value(3))  # over size: "b" goes
    assert len(memo) == 2 and calls == [1, 2, 3]
    assert memo.get("b", lambda: value(4)) == 40 and calls[-1] == 4
    assert (memo.hits, memo.misses) == (2, 4)
    assert through(None, "a", lambda: 7) == 7  # no memo: always computed
    with pytest.raises(InputError, match="memo size must be 1 or more, got 0"):
        SnapshotMemo("v1", size=0)


def test_memo_is_safe_across_threads():
    memo = SnapshotMemo("v1", size=8)
    out = []

    def work(i):
        for j in range(200):
            out.append(memo.get(j % 16, lambda j=j: (j % 16) ** 2) == (j % 16) ** 2)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert all(out) and len(out) == 800 and len(memo) <= 8


# Instants before, inside, at the end of and after the loaded store's data
# (three hours from T0), to the second.
_OFFSETS = st.integers(min_value=-3600, max_value=6 * 3600)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(offset=_OFFSETS)
def test_data_spans_are_data_span_with_and_without_the_instant(loaded_store, offset):
    path, _ = loaded_store
    at = T0 + timedelta(seconds=offset)
    with store_db.reader(path) as con:
        spans = queries.data_spans(con, at)
        assert spans.all == queries.data_span(con)
        assert spans.before == queries.data_span(con, at)
        # Settled exactly when no row (nor gauge reading) is dated at or after `at`.
        later = con.execute(
            "SELECT count(*) FROM rollup_minute WHERE minute >= $at", {"at": at}
        ).fetchone()[0]
        later += con.execute(
            "SELECT count(*) FROM rollup_hour WHERE hour >= $at", {"at": at}
        ).fetchone()[0]
        later += con.execute(
            "SELECT count(*) FROM gauge_minute WHERE minute >= $at", {"at": at}
        ).fetchone()[0]
        assert spans.settled == (later == 0)


def _body(report) -> tuple:
    return report.to_json(), report.to_prometheus()


@pytest.mark.parametrize("period", [Period.M15, Period.H1, Period.H24])
def test_a_report_through_a_memo_is_the_report_without_one(loaded_store, period):
    """Every instant, settled or not (inside the data, the lifetime counter
    depends on the instant, not on its hour alone), gives the figures of a
    fresh build, though the memo serves the window's figures again."""
    path, _ = loaded_store
    cfg = cm_settings.Config()
    memo = SnapshotMemo("test")
    instants = [
        T0 + timedelta(hours=1, minutes=20),  # inside the data: not settled
        T0 + timedelta(hours=1, minutes=40),  # the same hour, later
        T0 + timedelta(hours=3),  # the data's end
        T0 + timedelta(hours=3, minutes=30),  # after it: the window slides back
        T0 + timedelta(hours=5, seconds=7),  # later still: the same slid window
    ]
    with store_db.reader(path) as con:
        for at in instants:
            for endpoint in (None, "title"):
                fresh = metrics_report.build(con, cfg, period, at, endpoint=endpoint)
                kept = metrics_report.build(con, cfg, period, at, endpoint=endpoint, memo=memo)
                again = metrics_report.build(con, cfg, period, at, endpoint=endpoint, memo=memo)
                assert kept == fresh and again == fresh
                assert _body(again) == _body(fresh)
    assert memo.hits > memo.misses  # the figures were served from it


def test_the_lifetime_counter_inside_the_data_is_the_instants(loaded_store):
    """Two instants in one hour of the data count different minutes: a memo
    keyed by the hour would serve the first one's counter for the second."""
    path, df = loaded_store
    cfg = cm_settings.Config()
    memo = SnapshotMemo("test")
    a, b = T0 + timedelta(hours=1, minutes=10), T0 + timedelta(hours=1, minutes=50)
    with store_db.reader(path) as con:
        first = metrics_report.build(con, cfg, Period.M15, a, latest=False, memo=memo)
        second = metrics_report.build(con, cfg, Period.M15, b, latest=False, memo=memo)
    requests = df[df.kind == "request"]
    for report, at in ((first, a), (second, b)):
        truth = requests[requests.timestamp < at].sample_interval.sum()
        assert report.metrics.lifetime.total == pytest.approx(truth, rel=1e-12)
    assert first.metrics.lifetime.total < second.metrics.lifetime.total


@pytest.fixture(scope="module")
def evaluated_store(tmp_path_factory):
    """Three hours of traffic with the alert rules evaluated over it (a
    record of evaluations and state changes)."""
    path = tmp_path_factory.mktemp("alerts") / "cachemon.duckdb"
    parts, _ = simulate(3)
    load(path, parts)
    cfg = cm_settings.Config()
    with store_db.writer(path, T0) as con:
        alerts_evaluate.backfill(con, cfg, T0, T0 + timedelta(hours=3))
    return path, cfg


def test_the_health_through_a_memo_is_the_health_without_one(evaluated_store):
    """Before the newest evaluation the health is as of its instant; after
    it, the whole record, kept: the same as a fresh read at every instant."""
    path, cfg = evaluated_store
    memo = SnapshotMemo("test")
    rules = alerts_rules.effective_rules(cfg.alerts)
    every = cfg.alerts.evaluate_every
    with store_db.reader(path) as con:
        changes = con.execute("SELECT count(*) FROM alert_history").fetchone()[0]
        assert changes > 0  # there is a record to get wrong
        instants = [T0 + timedelta(minutes=m) for m in (30, 61, 95, 150, 179, 180, 181, 240, 900)]
        for at in instants:
            fresh = alerts_health.health(con, at, every, rules)
            assert alerts_health.health(con, at, every, rules, memo) == fresh, at
            assert alerts_health.health(con, at, every, rules, memo) == fresh, at
    assert memo.hits > 0
