"""The metrics API against a hostile client: forged forwarded addresses,
floods of distinct addresses, half-open connections (slowloris) at the
common 1,024 file-descriptor limit, redirects built from the Host header,
and a public bind without a token. Real `cachemon serve` processes (or a
real uvicorn server in a thread) on 127.0.0.1."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import timedelta

import httpx
import pytest

from cachemon import config
from cachemon.api.access import RateLimiter, exposure_warning
from cachemon.api.app import ApiSettings, create_app
from cachemon.api.server import ServeOptions, build_server
from cachemon.clock import utcnow
from tests.helpers import ROOT, T0
from tests.helpers.servers import free_port, serve_process

_serve = serve_process


def test_forged_forwarded_addresses_are_one_peer(loaded_store, results):
    """Without --trust-proxy, X-Forwarded-For changes nothing: 1,000
    requests with 1,000 forged addresses are one client, limited to 10 a
    minute, and the access log names the real peer."""
    db, _ = loaded_store
    with _serve(db) as (base, out), httpx.Client(timeout=10) as client:
        codes = [
            client.get(
                base + "/openapi.json",
                headers={"X-Forwarded-For": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"},
            ).status_code
            for i in range(1000)
        ]
    assert codes == [200] * 10 + [429] * 990
    log = "".join(out)
    assert log.count("127.0.0.1:") >= 1000 and "10.0.0.5" not in log and "10.0.3.231" not in log
    results(
        "forged X-Forwarded-For",
        "1,000 requests from loopback, each with another forged client address",
        "1,000 requests",
        "one client: 10 answered, 990× 429; the access log names 127.0.0.1, never a forged address",
    )


def test_token_guessing_with_forged_addresses_is_limited(loaded_store):
    db, _ = loaded_store
    with _serve(db, token="hostile-test-token") as (base, out), httpx.Client(timeout=10) as client:
        codes = [
            client.get(
                base + "/metrics",
                headers={"X-Forwarded-For": f"10.9.0.{i}", "Authorization": f"Bearer guess-{i}"},
            ).status_code
            for i in range(15)
        ]
    assert codes == [401] * 10 + [429] * 5
    assert "hostile-test-token" not in "".join(out)


def test_a_trusted_proxy_names_the_client_and_only_it(loaded_store):
    db, _ = loaded_store
    with _serve(db, "--trust-proxy", "127.0.0.1") as (base, _), httpx.Client(timeout=10) as client:
        a = [
            client.get(
                base + "/openapi.json", headers={"X-Forwarded-For": "203.0.113.7"}
            ).status_code
            for _ in range(11)
        ]
        b = client.get(
            base + "/openapi.json", headers={"X-Forwarded-For": "203.0.113.8"}
        ).status_code
        # 127.0.0.2 is no trusted proxy: its header is ignored, it is its own client.
        other = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=10)
        c = [
            other.get(
                base + "/openapi.json", headers={"X-Forwarded-For": "203.0.113.7"}
            ).status_code
            for _ in range(3)
        ]
    assert a == [200] * 10 + [429] and b == 200 and c == [200] * 3


def test_bad_trust_proxy_is_refused():
    p = subprocess.run(
        [sys.executable, "-m", "cachemon", "serve", "--trust-proxy", "*"],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and p.stderr.startswith(
        "cachemon: error: --trust-proxy '*' is not an IP address"
    )


def test_the_limiter_remembers_a_bounded_number_of_clients(results):
    """100,000 distinct addresses: the limiter holds at most its cap; the
    clients beyond it share one budget (limited, not let through); a minute
    later idle clients make room again. IPv6 counts per /64."""
    lim = RateLimiter(10, max_peers=1000)
    passed = sum(
        lim.retry_after(f"198.{i // 65536}.{i // 256 % 256}.{i % 256}", T0) == 0
        for i in range(100_000)
    )
    assert len(lim) == 1000 and passed == 1000 + 10
    later = T0 + timedelta(minutes=1)
    assert lim.retry_after("192.0.2.1", later) == 0 and len(lim) == 1
    v6 = [lim.retry_after(f"2001:db8:1:2::{i:x}", later) for i in range(12)]
    assert v6.count(0) == 10 and len(lim) == 2
    results(
        "distinct client addresses",
        "100,000 addresses, one request each, within a minute",
        "100,000 requests",
        "the limiter holds ≤ 1,000 clients (its cap); the 99,000 beyond share one budget "
        "(10 pass); IPv6 counted per /64",
    )


@contextmanager
def _in_process(db, settings: ApiSettings, options: ServeOptions):
    """A real uvicorn server in a thread, so the test can look at its limiter."""
    cfg = config.with_db(config.load(env={}), str(db))
    app = create_app(cfg, settings, utcnow)
    server, socks = build_server(app, options)
    t = threading.Thread(target=server.run, kwargs={"sockets": socks}, daemon=True)
    t.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield app, f"http://127.0.0.1:{options.port}"
    finally:
        server.should_exit = True
        t.join(timeout=20)


def test_many_clients_behind_a_trusted_proxy_stay_within_the_cap(loaded_store, results):
    db, _ = loaded_store
    options = ServeOptions(port=free_port(), trust_proxy=("127.0.0.1",))
    with (
        _in_process(db, ApiSettings(max_peers=50), options) as (app, base),
        httpx.Client(timeout=10) as client,
    ):
        codes = [
            client.get(
                base + "/openapi.json", headers={"X-Forwarded-For": f"198.51.{i // 256}.{i % 256}"}
            ).status_code
            for i in range(300)
        ]
        size = len(app.state.limiter)
    assert size == 50 and codes == [200] * 60 + [429] * 240
    results(
        "clients behind a trusted proxy",
        "300 distinct forwarded addresses, limiter cap set to 50",
        "300 requests",
        "limiter size 50 (= cap); 50 clients answered, the 250 beyond shared one budget: 10 answered, 240× 429",
    )


def _half_open(port: int, n: int, threads: int = 10) -> list[socket.socket]:
    """`n` connections that send part of a request head and then nothing;
    opened from several threads, so a connect whose SYN the full listen
    queue dropped (retried after 1 s) does not hold up the others."""
    socks: list[socket.socket] = []

    def open_some(k: int) -> None:
        for _ in range(k):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            socks.append(s)

    workers = [threading.Thread(target=open_some, args=(n // threads,)) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(socks) == n
    return socks


def _closed_by_server(socks: list[socket.socket], seconds: float) -> int:
    """How many of `socks` the server closed within `seconds` (poll: more
    than 1,024 descriptors are beyond select)."""
    poller, by_fd = select.poll(), {s.fileno(): s for s in socks}
    for fd in by_fd:
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    deadline, closed = time.time() + seconds, 0
    while by_fd and time.time() < deadline:
        for fd, _ in poller.poll(200):
            try:
                data = by_fd[fd].recv(1024)
            except OSError:
                data = b""
            if not data:
                closed += 1
                poller.unregister(fd)
                del by_fd[fd]
    return closed


def test_half_open_connections_do_not_lock_out_healthz(loaded_store, results):
    """1,100 slowloris connections against a server limited to 1,024 file
    descriptors: /healthz still answers within 2 s, and every half-open
    connection is closed once its header timeout passes."""
    db, _ = loaded_store
    with _serve(db, "--header-timeout", "3", nofile=1024) as (base, _):
        port = int(base.rsplit(":", 1)[1])
        socks = _half_open(port, 1100)
        try:
            started = time.monotonic()
            r = httpx.get(base + "/healthz", timeout=2)
            took = time.monotonic() - started
            assert r.status_code == 200 and took < 2
            closed = _closed_by_server(socks, 10)
        finally:
            for s in socks:
                s.close()
        assert closed == len(socks)
        assert httpx.get(base + "/healthz", timeout=2).status_code == 200
    results(
        "half-open connections (slowloris)",
        "1,100 connections sending a partial request head, server at `ulimit -n` 1,024",
        "1,100 connections",
        f"/healthz answered in {took:.2f} s; all {closed:,} closed by the "
        "server (oldest first past the connection cap, the rest at the 3 s header timeout)",
    )


def test_no_redirect_is_built_from_the_host_header(loaded_store, results):
    db, _ = loaded_store
    with _serve(db, "--allow", "127.0.0.1") as (base, _):
        replies = [
            httpx.get(base + path, headers={"Host": "evil.example"}, follow_redirects=False)
            for path in ("/metrics/", "/healthz/", "/openapi.json/", "//evil.example/metrics")
        ]
    assert [r.status_code for r in replies] == [404] * 4
    assert not any("location" in r.headers for r in replies)
    assert "no such path '/metrics/'" in replies[0].json()["error"]
    results(
        "redirect from the Host header",
        "`/metrics/` and other trailing-slash paths with `Host: evil.example`",
        f"{len(replies)} requests",
        "404 with a JSON error, no Location header",
    )


def test_a_public_bind_without_token_warns(results):
    """TEST-NET-1 (192.0.2.1) is not on this machine: the bind fails, after
    the warning, as one clear error; nothing ever listens off loopback."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("CACHEMON_API_TOKEN", None)
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "cachemon",
            "serve",
            "--host",
            "192.0.2.1",
            "--port",
            str(free_port()),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = p.stderr.splitlines()
    assert p.returncode == 2 and len(lines) == 2, p.stderr
    assert lines[0].startswith(
        "cachemon: warning: listening on 192.0.2.1, which is not a loopback address, "
        "without CACHEMON_API_TOKEN"
    )
    assert lines[1].startswith("cachemon: error: cannot listen on 192.0.2.1:")
    assert exposure_warning("0.0.0.0", None) and exposure_warning("::", None)
    assert exposure_warning("example.org", None)
    assert not exposure_warning("0.0.0.0", "a-token")
    assert not any(
        exposure_warning(h, None) for h in ("127.0.0.1", "127.0.0.2", "::1", "localhost")
    )
    results(
        "public bind without a token",
        "`serve --host 192.0.2.1` without CACHEMON_API_TOKEN",
        "1 start",
        "a warning line, then the bind failure as one `cachemon: error:` line (exit 2)",
    )


def test_a_port_in_use_is_one_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = subprocess.run(
            [sys.executable, "-m", "cachemon", "serve", "--port", str(port)],
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert (
        p.returncode == 2
        and p.stderr
        == f"cachemon: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    )


def test_upgrade_requests_do_not_use_up_connection_slots(loaded_store):
    """WebSocket upgrades (the API has no WebSocket route) are answered as
    plain HTTP: they never leave the connection cap's count."""
    db, _ = loaded_store
    upgrade = (
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    with _serve(db, "--max-connections", "3") as (base, _):
        port = int(base.rsplit(":", 1)[1])
        for _ in range(10):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(upgrade)
                s.recv(4096)
        assert [httpx.get(base + "/healthz", timeout=5).status_code for _ in range(5)] == [200] * 5


@pytest.mark.parametrize(
    "args,message",
    [
        (["--max-connections", "0"], "--max-connections must be 1 or more, got 0"),
        (["--header-timeout", "0"], "--header-timeout must be more than 0 seconds, got 0.0"),
        (
            ["--trust-proxy", "proxy.internal"],
            "--trust-proxy 'proxy.internal' is not an IP address or network",
        ),
        (["--port", "70000"], "--port must be 1 to 65535, got 70000"),
    ],
)
def test_bad_serve_options_are_one_line(args, message):
    p = subprocess.run(
        [sys.executable, "-m", "cachemon", "serve", *args],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        p.returncode == 2
        and p.stderr.startswith(f"cachemon: error: {message}")
        and p.stderr.count("\n") == 1
    ), p.stderr
