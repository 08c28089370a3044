"""Who a client is, and what a cached answer claims. `--allow` and
`--trust-proxy` take addresses and networks (parsed, matched by
membership, IPv6 in any spelling) and refuse anything else; a forwarded
value that is no address never makes a new client; a cached /metrics
answer never says "not stale" about data that is stale by then. Real
`cachemon serve` processes and a real uvicorn server on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import timedelta

import httpx
import pytest

from cachemon import config
from cachemon.api.access import ForwardedFor, networks
from cachemon.api.app import ApiSettings, create_app
from cachemon.api.server import ServeOptions, build_server
from cachemon.store import db as store_db
from cachemon.store import queries
from tests.helpers import ROOT
from tests.helpers.servers import free_port, serve_process

_serve = serve_process


def _codes(client, url, n, headers=None):
    return [client.get(url, headers=headers or {}).status_code for _ in range(n)]


def test_allow_takes_a_network(loaded_store, results):
    db, _ = loaded_store
    with _serve(db, "--allow", "127.0.0.0/8") as (base, _), httpx.Client(timeout=10) as client:
        codes = _codes(client, base + "/openapi.json", 15)
    assert codes == [200] * 15  # was 10 × 200, then 429: the network was compared as a string
    results(
        "--allow a network",
        "serve --allow 127.0.0.0/8, a client at 127.0.0.1",
        "15 requests in a minute",
        "15× 200 (exempt by membership; was 10× 200 then 429)",
    )


def test_allow_matches_ipv6_in_any_spelling(loaded_store):
    db, _ = loaded_store
    with (
        _serve(db, "--allow", "0:0:0:0:0:0:0:1", host="::1") as (base, _),
        httpx.Client(timeout=10) as client,
    ):
        codes = _codes(client, base + "/openapi.json", 12)
    assert codes == [200] * 12


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--allow", "nonsense"),
        ("--allow", "127.0.0.1/33"),
        ("--allow", "*"),
        ("--trust-proxy", "10.0.0.0/40"),
    ],
)
def test_garbage_addresses_are_refused(flag, value):
    p = subprocess.run(
        [sys.executable, "-m", "cachemon", "serve", "--port", str(free_port()), flag, value],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        f"cachemon: error: {flag} {value!r} is not an IP address or network (like 10.0.0.5, 10.0.0.0/24 or fd00::/8)"
    ]


def test_garbage_forwarded_values_are_the_proxy(loaded_store, results):
    db, _ = loaded_store
    with (
        _serve(db, "--trust-proxy", "127.0.0.0/8") as (base, _),
        httpx.Client(timeout=10) as client,
    ):
        junk = [
            client.get(
                base + "/openapi.json", headers={"X-Forwarded-For": f"garbage-{i}"}
            ).status_code
            for i in range(12)
        ]
        # A real forwarded address behind the (networked) trusted proxy is its own client.
        real = _codes(client, base + "/openapi.json", 3, {"X-Forwarded-For": "203.0.113.9"})
    assert junk == [200] * 10 + [429] * 2  # was 12× 200: each garbage value a new client
    assert real == [200] * 3
    results(
        "garbage X-Forwarded-For behind a trusted proxy",
        "--trust-proxy 127.0.0.0/8; 12 requests each with another non-address X-Forwarded-For",
        "12 requests",
        "one client (the proxy): 10× 200, 2× 429 (was 12× 200); a real forwarded address stays its own client",
    )


def test_forwarded_chain_is_read_from_the_right():
    fwd = ForwardedFor(None, networks(["10.0.0.0/8"], "--trust-proxy"))
    peer = ("10.0.0.2", 5000)

    def client(value: str):
        return fwd.client(peer, [(b"x-forwarded-for", value.encode())])[0]

    assert client("198.51.100.7, 10.0.0.9") == "198.51.100.7"  # the trusted hop is skipped
    assert client("198.51.100.7, junk") == "10.0.0.2"  # a non-address hop: the proxy answers for it
    assert (
        client("spoofed, 198.51.100.7") == "198.51.100.7"
    )  # what the client wrote left of it is not read
    assert client("[2001:DB8:0:0::1]:443") == "2001:db8::1"  # canonical IPv6
    assert fwd.client(("192.0.2.1", 1), [(b"x-forwarded-for", b"198.51.100.7")])[0] == "192.0.2.1"


def _sample(text: str, name: str) -> float:
    """The value of the unlabelled sample `name` in a Prometheus text."""
    (value,) = [ln.split()[1] for ln in text.splitlines() if ln.split(" ")[0] == name]
    return float(value)


class _Clock:
    def __init__(self, at):
        self.at = at

    def __call__(self):
        return self.at


@pytest.mark.parametrize("fmt", ["json", "prometheus"])
def test_a_cached_answer_never_says_fresh_about_stale_data(loaded_store, results, fmt):
    db, _ = loaded_store
    cfg = config.with_db(config.load(env={}), str(db))
    with store_db.reader(db) as con:
        until = queries.data_span(con)[1]
    turns_stale = until + cfg.metrics.stale_after
    clock = _Clock(
        turns_stale - timedelta(seconds=60)
    )  # fresh for one more minute; the cache keeps 5
    app = create_app(cfg, ApiSettings(allow=("127.0.0.1",)), clock)
    options = ServeOptions(port=free_port())
    url = f"http://127.0.0.1:{options.port}/metrics?period=15m&format={fmt}"
    with _in_process_app(app, options), httpx.Client(timeout=10) as client:
        answers = []
        for offset in (-60, -30, 1, 61):
            clock.at = turns_stale + timedelta(seconds=offset)
            answers.append(client.get(url))
    fresh, cached, gap, later = answers
    if fmt == "json":
        flags = [r.json()["stale"] for r in answers]
    else:
        flags = [_sample(r.text, "cachemon_data_stale") == 1.0 for r in answers]
    # stale is judged at the minute: 1 s past the limit is still fresh, 61 s past is stale
    # (was: the body cached 60 s before the limit, stale false, served until 240 s past it).
    assert flags == [False, False, False, True]
    assert (
        cached.content == fresh.content and cached.headers["age"] == "30"
    )  # from the cache, and says so
    assert (
        fresh.headers["cache-control"] == "public, max-age=60"
    )  # not 300: the data turns stale first
    assert (gap.headers["age"], gap.headers["cache-control"]) == (
        "0",
        "public, max-age=0",
    )  # recomputed, not kept
    assert later.headers["age"] == "0"
    if fmt == "json":
        results(
            "cached answer and staleness",
            "data turning stale 60 s into a 300 s cache entry",
            "4 requests",
            "fresh (max-age 60), cached (Age 30), recomputed from the limit on: stale true / "
            "cachemon_data_stale 1 once stale (was stale false for up to 5 min)",
        )


@contextmanager
def _in_process_app(app, options):
    """A real uvicorn server in a thread for an app built here (its clock is the test's)."""
    server, socks = build_server(app, options)
    t = threading.Thread(target=server.run, kwargs={"sockets": socks}, daemon=True)
    t.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield
    finally:
        server.should_exit = True
        t.join(timeout=20)
