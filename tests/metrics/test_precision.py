"""JSON figures keep their precision: rounded to significant digits, never to
a number of decimals (3 decimals made a 3.6 µs p50 0.004 ms, +11 %, and a
0.4 µs one 0)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from cachemon import jsontext
from cachemon.clock import Window
from cachemon.metrics import window as metrics_window

AT = datetime(2026, 11, 19, 12, 0, tzinfo=UTC)
# Log-uniform latencies from 0.1 µs to 1,000 s (in ms).
LATENCY = st.floats(min_value=-4, max_value=6).map(lambda e: 10.0**e)
RATE = st.floats(min_value=-9, max_value=2).map(lambda e: 10.0**e)


def _metrics(p50, p95, p99, avg, edge=1.0, api=0.0, errors=0.0) -> metrics_window.Metrics:
    return metrics_window.Metrics(
        at=AT,
        period="1h",
        window=Window(AT - timedelta(hours=1), AT),
        endpoint=None,
        volume=metrics_window.TierVolume(edge=edge, api=api),
        errors=errors,
        bytes=0.0,
        latency=metrics_window.Latency(p50, p95, p99, avg),
        top_keys=(),
        top_keys_window=None,
        data_until=AT,
    )


def _served(m) -> dict:
    """The document as a client reads it (through the strict JSON text)."""
    return json.loads(jsontext.dumps(metrics_window.to_json(m)))


@given(LATENCY, LATENCY, LATENCY, LATENCY)
def test_json_latencies_are_within_a_tenth_of_a_percent(p50, p95, p99, avg):
    got = _served(_metrics(p50, p95, p99, avg))["latency"]
    for name, exact in (("p50", p50), ("p95", p95), ("p99", p99), ("avg", avg)):
        assert math.isclose(got[name], exact, rel_tol=1e-3), (name, exact, got[name])


@given(RATE, st.floats(min_value=1.0, max_value=1e9))
def test_json_rates_and_fractional_counts_keep_their_relative_precision(share, total):
    """A tiny error rate (1e-7 %) is not rounded to 0 either, nor a weighted count's fraction."""
    errors = total * share / 100
    got = _served(_metrics(1.0, 1.0, 1.0, 1.0, edge=total, errors=errors))
    assert math.isclose(got["errorRate"], 100 * errors / total, rel_tol=1e-3)
    if not float(errors).is_integer():  # a weighted count keeps its fraction
        assert math.isclose(got["volume"]["errors"], errors, rel_tol=1e-14)


def test_significant_digits_helper():
    assert jsontext.significant(0.000369123456) == 0.000369123
    assert jsontext.significant(123456789.0) == 123457000.0
    assert jsontext.significant(0.0) == 0.0 and math.isnan(jsontext.significant(math.nan))
