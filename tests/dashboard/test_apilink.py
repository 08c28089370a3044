"""The sidebar's "Metrics API" link shows only while a cachemon API answers
at `[metrics] api_url`: a real `cachemon serve` on a free loopback port,
nothing listening, another program on the port, a server that stalls."""

from __future__ import annotations

import time

import pytest
from streamlit.testing.v1 import AppTest

from pages.shared import apilink
from tests.helpers.servers import DripServer, EchoServer, free_port, serve_process


def _script():
    from cachemon import config
    from pages.shared import apilink

    apilink.api_link(config.load())


def _links(monkeypatch, tmp_path, url: str) -> list[str]:
    """The link buttons the helper draws with `[metrics] api_url = url`."""
    cfg_file = tmp_path / "api.toml"
    cfg_file.write_text(f'[metrics]\napi_url = "{url}"\n')
    monkeypatch.setenv("CACHEMON_CONFIG", str(cfg_file))
    monkeypatch.setenv("CACHEMON_DB", str(tmp_path / "none.duckdb"))
    apilink.api_reachable.clear()
    at = AppTest.from_function(_script, default_timeout=30)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return [b.proto.url for b in at.get("link_button")]


def test_the_link_shows_while_cachemon_serve_answers(tmp_path, monkeypatch):
    # A store that does not exist yet (run.sh starts serve before the demo):
    # /healthz answers 503, and the API is up all the same.
    with serve_process(tmp_path / "none.duckdb") as (base, _):
        apilink.api_reachable.clear()
        assert apilink.api_reachable(base)
        assert apilink.api_reachable(base + "/")
        assert _links(monkeypatch, tmp_path, base) == [base + "/metrics"]
    # Stopped: gone from the sidebar once the probe's cache expires.
    apilink.api_reachable.clear()
    assert not apilink.api_reachable(base)
    assert _links(monkeypatch, tmp_path, base) == []


def test_no_link_when_nothing_listens(tmp_path, monkeypatch):
    url = f"http://127.0.0.1:{free_port()}"
    apilink.api_reachable.clear()
    assert not apilink.api_reachable(url)
    assert _links(monkeypatch, tmp_path, url) == []


def test_no_link_to_another_program_on_the_port(tmp_path, monkeypatch):
    other = EchoServer(status=200)
    try:
        apilink.api_reachable.clear()
        assert not apilink.api_reachable(other.url().rstrip("/"))
        assert other.requests == ["/healthz"]  # it was asked, and its answer is not the API's
        assert _links(monkeypatch, tmp_path, other.url().rstrip("/")) == []
    finally:
        other.close()


@pytest.mark.parametrize("timeout", [0.3, 1.0])
def test_a_stalling_server_costs_the_page_the_timeout_only(timeout):
    drip = DripServer(b'HTTP/1.1 200 OK\r\n\r\n{"status": "ok"}', interval=5.0)
    try:
        apilink.api_reachable.clear()
        start = time.monotonic()
        assert not apilink.api_reachable(drip.url().rstrip("/"), timeout=timeout)
        assert time.monotonic() - start < timeout + 1.0
    finally:
        drip.close()
