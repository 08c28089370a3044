"""The dead man's switch: pings reach a loopback receiver; a slow, failing
or absent receiver never blocks the caller beyond nothing, each failure is
one log line, and the URL (a secret) is never logged."""

from __future__ import annotations

import logging
import time

import pytest

from cachemon.errors import ConfigError
from cachemon.runner import heartbeat
from tests.helpers.pingsink import PingSink

SECRET = "/ping/5f0c7a2e-secret-check-key"


@pytest.fixture
def sink():
    s = PingSink()
    yield s
    s.close()


def _pinger(url, deadline=1.0):
    return heartbeat.Pinger(heartbeat.Target(url, deadline_s=deadline))


def test_pings_reach_the_receiver(sink):
    p = _pinger(sink.url(SECRET))
    for _ in range(3):
        assert p.ping()
        p.wait(5)
    assert sink.pings[SECRET] == 3 and p.sent == 3 and p.failed == 0


@pytest.mark.parametrize("fault", ["slow", "500", "refused"])
def test_a_failing_receiver_never_blocks_and_is_logged_without_the_url(
    sink, fault, caplog, results
):
    caplog.set_level(logging.DEBUG)
    url = sink.url(SECRET)
    if fault == "slow":
        sink.delay = 5.0
    elif fault == "500":
        sink.status = 500
    else:
        sink.close()
    p = _pinger(url, deadline=1.0)
    t0 = time.monotonic()
    assert p.ping()
    started = time.monotonic() - t0
    assert not p.ping()  # one at a time: the next is skipped while this one is out
    p.wait(10)
    took = time.monotonic() - t0
    assert started < 0.2 and took < 3.0, (
        started,
        took,
    )  # the caller never waits; the ping ends by its deadline
    assert p.failed == 1 and p.sent == 0
    text = caplog.text
    assert f"heartbeat ping to http://127.0.0.1:{sink.port} failed" in text
    assert {
        "slow": "no complete answer within 1 s",
        "500": "HTTP 500",
        "refused": "could not connect",
    }[fault] in text
    assert "secret" not in text and "5f0c7a2e" not in text
    results(
        f"heartbeat receiver {fault}",
        f"ping to a receiver that is {fault}",
        1,
        f"caller waited {started * 1000:.0f} ms, ping ended in {took:.1f} s, logged without the URL",
    )


def test_a_bad_url_is_refused_without_showing_it():
    with pytest.raises(ConfigError) as err:
        heartbeat.Target.from_env({"CACHEMON_HEARTBEAT_URL": "ftp://example/secret-key"})
    assert "secret-key" not in str(err.value) and "http(s) URL" in str(err.value)
    assert heartbeat.Target.from_env({}) is None
