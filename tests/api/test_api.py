"""The metrics API: a real `cachemon serve` on 127.0.0.1, and a real
Prometheus server scraping it."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import ROOT
from tests.helpers.servers import free_port as _free_port
from tests.helpers.servers import serve_api as _serve


@pytest.fixture(scope="module")
def server(loaded_store):
    path, _ = loaded_store
    proc, base = _serve(path, "--allow", "127.0.0.1")  # many tests share it: no rate limit
    yield base, path
    proc.terminate()
    proc.wait(timeout=20)


def test_json_matches_the_cli(server):
    base, path = server
    r = httpx.get(base + "/metrics", params={"period": "1h"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    body = r.json()
    env = dict(os.environ, CACHEMON_DB=str(path), PYTHONPATH=str(ROOT))
    cli = json.loads(
        subprocess.run(
            [sys.executable, "-m", "cachemon", "metrics", "--period", "1h"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    for k in ("hitRates", "latency", "volume", "topKeys", "window"):
        assert body[k] == cli[k]
    assert body["stale"] is True and r.headers["X-Data-Until"] == "2026-11-19T11:00:00Z"


def test_cached_for_five_minutes(server):
    base, _ = server
    a = httpx.get(base + "/metrics", params={"period": "24h", "format": "prometheus"})
    time.sleep(1.1)
    b = httpx.get(base + "/metrics", params={"period": "24h", "format": "prometheus"})
    assert (
        a.text == b.text and a.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    )
    assert a.headers["cache-control"] == "public, max-age=300"
    assert int(b.headers["cache-control"].split("=")[1]) < 300
    p = subprocess.run(
        ["promtool", "check", "metrics"], input=a.text, capture_output=True, text=True
    )
    assert p.returncode == 0, p.stdout + p.stderr


def test_bad_parameters_are_400_with_a_message(server):
    base, _ = server
    r = httpx.get(base + "/metrics", params={"period": "1h; DROP TABLE x"})
    assert r.status_code == 400 and "unknown period" in r.json()["error"]
    r = httpx.get(base + "/metrics", params={"format": "xml"})
    assert r.status_code == 400 and "unknown format 'xml'" in r.json()["error"]


def test_healthz_and_openapi(server):
    base, _ = server
    h = httpx.get(base + "/healthz").json()
    assert h["store"] == "readable" and h["dataUntil"] == "2026-11-19T11:00:00Z"
    # No job runner ever ingested into this store (tests/runner/test_healthz.py has the runner's cases).
    assert h["status"] == "degraded" and h["runner"]["ingestStalled"] and len(h["problems"]) == 2
    spec = httpx.get(base + "/openapi.json").json()
    assert spec["openapi"].startswith("3.") and set(spec["paths"]) == {"/metrics", "/healthz"}


def test_rate_limit_and_auth(loaded_store):
    path, _ = loaded_store
    proc, base = _serve(path, token="api-secret-123")
    try:
        assert httpx.get(base + "/metrics").status_code == 401
        assert (
            httpx.get(base + "/metrics", headers={"Authorization": "Bearer wrong"}).status_code
            == 401
        )
        auth = {"Authorization": "Bearer api-secret-123"}
        replies = [httpx.get(base + "/metrics", headers=auth) for _ in range(11)]
        # The two refused requests count too (the limit slows token guessing).
        assert [r.status_code for r in replies] == [200] * 8 + [429] * 3
        assert 1 <= int(replies[-1].headers["Retry-After"]) <= 60
        assert httpx.get(base + "/healthz").status_code == 200  # health is never limited
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert "api-secret-123" not in out


def test_a_real_prometheus_scrapes_it(server, tmp_path):
    base, _ = server
    port = _free_port()
    target = base.split("//")[1]
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(f"""global:
  scrape_interval: 2s
scrape_configs:
  - job_name: cachemon
    metrics_path: /metrics
    params: {{format: [prometheus], period: [1h]}}
    static_configs: [{{targets: ["{target}"]}}]
""")
    prom = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={cfg}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline, result = time.time() + 60, []
        while time.time() < deadline and not result:
            time.sleep(1)
            try:
                r = httpx.get(
                    f"http://127.0.0.1:{port}/api/v1/query",
                    params={"query": 'cachemon_hit_ratio{tier="combined"}'},
                    timeout=2,
                )
                result = r.json()["data"]["result"]
            except (httpx.HTTPError, KeyError, ValueError):
                pass
        assert result, "Prometheus never found cachemon_hit_ratio"
        assert 0.5 < float(result[0]["value"][1]) <= 1.0
        assert result[0]["metric"]["period"] == "1h"
    finally:
        prom.terminate()
        prom.wait(timeout=20)


def test_grafana_dashboard_queries_only_exposed_families():
    import re

    dash = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    golden = Path(ROOT / "tests" / "golden" / "metrics_1h.prom").read_text()
    families = set(re.findall(r"^# TYPE (\S+)", golden, re.M))
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 6
    for e in exprs:
        names = set(re.findall(r"cachemon_[a-z_]+", e))
        assert names and all(
            any(n == f or n.startswith(f + "_") for f in families) for n in names
        ), e


@pytest.mark.parametrize(
    "method,path,params,status,message",
    [
        ("GET", "/metrics", [("period", "1h"), ("period", "7d")], 400, "given more than once"),
        ("GET", "/metrics", [("period", "x" * 600)], 400, "query string too long"),
        ("GET", "/metrics", [("period", "1h' OR 1=1 --")], 400, "unknown period"),
        ("GET", "/metrics", [("format", "<script>alert(1)</script>")], 400, "unknown format"),
        ("GET", "/metrics", [("limit", "5")], 400, "unknown parameter 'limit'"),
        ("POST", "/metrics", [], 405, "method POST not allowed"),
        ("DELETE", "/healthz", [], 405, "method DELETE not allowed"),
        ("GET", "/../../etc/passwd", [], 404, "no such path"),
        ("GET", "/admin", [], 404, "no such path '/admin'"),
    ],
)
def test_bad_requests_get_a_json_4xx(server, method, path, params, status, message):
    base, _ = server
    r = httpx.request(method, base + path, params=params)
    assert r.status_code == status and message in r.json()["error"], r.text


def test_second_call_is_served_from_cache_without_the_store(loaded_store, tmp_path):
    import shutil

    from cachemon.store import snapshots

    path, _ = loaded_store
    copy = tmp_path / "c.duckdb"
    shutil.copy(snapshots.snapshot_path(path), snapshots.snapshot_path(copy))
    proc, base = _serve(copy)
    try:
        first = httpx.get(base + "/metrics", params={"period": "7d"})
        snapshots.snapshot_path(copy).unlink()  # any store query now fails
        second = httpx.get(base + "/metrics", params={"period": "7d"})
        assert first.status_code == second.status_code == 200 and first.content == second.content
        assert httpx.get(base + "/metrics", params={"period": "24h"}).status_code == 503
        assert httpx.get(base + "/healthz").status_code == 503
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_fuzzed_requests_never_get_a_5xx(loaded_store):
    """Hypothesis over methods, paths and query strings, from the OpenAPI
    parameters outward: every answer is 2xx/4xx JSON or metrics."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    path, _ = loaded_store
    proc, base = _serve(path, "--allow", "127.0.0.1")
    # Paths, parameter names and their enum values come from the served OpenAPI description.
    spec = httpx.get(base + "/openapi.json").json()
    ops = [op for item in spec["paths"].values() for op in item.values()]
    declared = [p for op in ops for p in op.get("parameters", [])]
    names = sorted({p["name"] for p in declared})
    enums = sorted({v for p in declared for v in p["schema"].get("enum", [])})
    assert names == ["format", "period"] and "24h" in enums
    text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
    value = st.one_of(st.sampled_from(enums + [""]), text)
    params = st.lists(
        st.tuples(st.sampled_from(names + ["x", names[0].upper()]), value), max_size=4
    )
    routes = sorted(spec["paths"]) + ["/", "/metrics/x", "/%00"]

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        st.sampled_from(["GET", "POST", "PUT", "HEAD", "OPTIONS"]), st.sampled_from(routes), params
    )
    def check(method, route, query):
        r = httpx.request(method, base + route, params=query)
        assert r.status_code < 500, (method, route, query, r.status_code, r.text[:200])

    try:
        check()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
