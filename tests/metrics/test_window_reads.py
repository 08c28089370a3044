"""What `cachemon metrics` reads and computes for one window, against the
full report: the JSON report skips the lifetime counter (only the exposition
shows it) and says the same; one window's quantiles (plain Python) are the
series' (numpy) for the same window."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from cachemon import settings as cm_settings
from cachemon.cli import main as cli_main
from cachemon.clock import Period, Window, iso
from cachemon.metrics import series
from cachemon.metrics import window as metrics_window
from cachemon.store import db as store_db
from cachemon.usecases import metrics_report
from tests.helpers import T0

AT = T0 + timedelta(hours=2, minutes=47)


@pytest.mark.parametrize("period", [Period.M15, Period.H1, Period.H24])
def test_a_report_without_the_lifetime_counter_says_the_same_in_json(loaded_store, period):
    path, df = loaded_store
    cfg = cm_settings.Config()
    with store_db.reader(path) as con:
        full = metrics_report.build(con, cfg, period, AT, latest=False)
        lean = metrics_report.build(con, cfg, period, AT, latest=False, lifetime=False)
    assert lean.metrics.lifetime is None
    assert lean.to_json() == full.to_json()
    # The full report's counter: every request before AT, from the raw events.
    requests = df[(df.kind == "request") & (df.timestamp < AT)]
    assert full.metrics.lifetime.total == pytest.approx(requests.sample_interval.sum(), rel=1e-12)
    assert "cachemon_requests_total" in full.to_prometheus()
    assert "cachemon_requests_total" not in lean.to_prometheus()


def test_the_command_prints_the_full_reports_json_and_exposition(loaded_store, capsys):
    path, _ = loaded_store
    with store_db.reader(path) as con:
        full = metrics_report.build(con, cm_settings.Config(), Period.H1, AT, latest=False)
    argv = ["--db", str(path), "metrics", "--at", iso(AT)]
    for fmt, expected in (("json", full.to_json()), ("prometheus", full.to_prometheus())):
        assert cli_main.main([*argv, "--format", fmt]) == 0
        out = capsys.readouterr().out
        assert (json.loads(out) if fmt == "json" else out) == expected


@pytest.mark.parametrize(
    "window",
    [
        Window(T0 + timedelta(minutes=17), T0 + timedelta(hours=2, minutes=43)),
        Window(T0 + timedelta(minutes=50), T0 + timedelta(minutes=70)),
        Window(T0, T0 + timedelta(hours=3)),
    ],
    ids=str,
)
@pytest.mark.parametrize("endpoint", [None, "title"])
def test_one_windows_quantiles_are_the_series_quantiles(loaded_store, window, endpoint):
    """The window's histogram (hours and ragged minutes, read in plain
    Python) and the series' (minutes, numpy) give the same quantiles."""
    path, _ = loaded_store
    with store_db.reader(path) as con:
        m = metrics_window.compute(con, window, "custom", endpoint, top=0)
        (obs,) = series.observe(con, [window.start], window.length, endpoint)
    assert (m.latency.p50, m.latency.p95, m.latency.p99) == (obs.p50, obs.p95, obs.p99)
