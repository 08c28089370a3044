"""Access: the metrics API lets in only the bearer token and limits each
client IP; every server cachemon starts listens on loopback unless told
otherwise."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import httpx

from tests.helpers import ROOT
from tests.helpers.servers import free_port


@contextmanager
def _serving(args: list[str], env: dict, port: int):
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 90
        while time.time() < deadline and _listening(port) is None:
            assert proc.poll() is None, args
            time.sleep(0.2)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def _listening(port: int) -> str | None:
    """The address a TCP socket listens on at `port` (from /proc/net/tcp*), if any."""
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in open(table).read().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if int(p, 16) == port and state == "0A":
                if width == 8:
                    return ".".join(str(int(addr[i : i + 2], 16)) for i in (6, 4, 2, 0))
                return "::" if set(addr) == {"0"} else addr
    return None


def test_servers_listen_on_loopback_by_default(tmp_path, loaded_store, results):
    db, _ = loaded_store
    env = {"CACHEMON_DB": str(db)}
    api, dash, ae = free_port(), free_port(), free_port()
    seen = {}
    with _serving(["-m", "cachemon", "serve", "--port", str(api)], env, api):
        seen["metrics API"] = _listening(api)
    with _serving(["-m", "streamlit", "run", "app.py", "--server.port", str(dash)], env, dash):
        seen["dashboard"] = _listening(dash)
    with _serving(
        ["-m", "cachemon.testing.ae_emulator", "--port", str(ae), "--days", "0.01"], env, ae
    ):
        seen["Analytics Engine emulator"] = _listening(ae)
    assert seen == dict.fromkeys(seen, "127.0.0.1")
    results(
        "default bind address",
        "metrics API, dashboard, Analytics Engine emulator started without a host",
        f"{len(seen)} servers",
        "all listen on 127.0.0.1 only",
    )


def test_the_api_lets_in_only_its_token_and_limits_each_ip(loaded_store, results):
    db, _ = loaded_store
    port, token = free_port(), "access-test-token"
    url = f"http://127.0.0.1:{port}/metrics"
    with _serving(
        ["-m", "cachemon", "serve", "--port", str(port), "--cache-seconds", "0"],
        {"CACHEMON_DB": str(db), "CACHEMON_API_TOKEN": token},
        port,
    ):
        denied = [
            httpx.get(url, headers=h, timeout=30).status_code
            for h in (
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": token},
                {"Authorization": f"Basic {token}"},
                {"Authorization": f"Bearer {token}x"},
            )
        ]
        ok = {"Authorization": f"Bearer {token}"}
        first = [httpx.get(url, headers=ok, timeout=30) for _ in range(12)]
        # Another client address (127.0.0.2 is loopback too) has its own budget.
        other = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"))
        elsewhere = other.get(url, headers=ok, timeout=30).status_code
    codes = [r.status_code for r in first]
    limited = [r for r in first if r.status_code == 429]
    assert set(denied) == {401}
    # Every request counts, the refused ones too: 5 refused + 5 allowed fill the 10 a minute.
    assert codes[:5] == [200] * 5 and set(codes[5:]) == {429}
    assert all(int(r.headers["Retry-After"]) > 0 for r in limited) and elsewhere == 200
    results(
        "metrics API access",
        "no token, wrong tokens, wrong schemes; 12 quick requests from one IP",
        f"{len(denied)} bad tokens, {len(first)} requests",
        f"all {len(denied)} refused with 401; the IP limited to 10 a minute ({len(limited)}× 429 with "
        "Retry-After), another IP unaffected",
    )


def test_no_network_facing_input_names_a_file():
    """Paths (--db, --config, export --to) come only from the local operator's
    command line: neither the API nor the dashboard accepts one."""
    from cachemon.api.openapi import OPENAPI

    params = {
        p["name"]
        for op in OPENAPI["paths"].values()
        for m in op.values()
        for p in m.get("parameters", [])
    }
    assert params and not params & {"db", "path", "file", "dir", "to", "config"}
    widgets = "".join(f.read_text() for f in (ROOT / "pages").rglob("*.py"))
    assert "file_uploader" not in widgets and "CACHEMON_DB" not in widgets
