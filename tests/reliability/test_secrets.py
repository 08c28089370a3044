"""Canary secrets: an Analytics Engine token, an SMTP password, a Slack
webhook URL and a metrics API token are set, and the whole system runs
with them, failures included (faults from the source, SMTP down, webhook
500). Then everything it produced is searched for them: every process's
output, every text and blob column of the store and the raw store files,
the exported Parquet, the metrics API's answers, and the DOM of every
dashboard page in a real browser. None may appear anywhere."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pyarrow.parquet as pq
import pytest
import trustme

from cachemon.clock import HOUR, Window, iso
from cachemon.store import db as store_db
from cachemon.testing.ae_emulator import Emulator, Fault
from tests.helpers import ALWAYS_RULE, ROOT, T0, small_sim
from tests.helpers.servers import SmtpSink, WebhookSink, chromium, free_port, streamlit_server

CANARIES = {
    "CF_API_TOKEN": "canary-cf-7f3a9e21",
    "SMTP_PASSWORD": "canary-smtp-51c2b7",
    "SLACK_WEBHOOK_URL": "canary-slack-9d1e44",  # the secret part of the URL
    "CACHEMON_API_TOKEN": "canary-api-22b7c0",
}
PAGES = ("", "trends", "keys", "experiments", "ttl", "alerts", "costs", "jobs")


def _run(env, *args, clock=None):
    cmd = [sys.executable, "-m", *args]
    if clock is not None:
        cmd += ["--clock-start", iso(clock)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)


def _store_texts(db) -> list[str]:
    """Every text and blob value of every table, and the raw bytes of the files."""
    out = []
    with store_db.reader(db) as con:
        cols = con.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'main' AND data_type IN ('VARCHAR', 'BLOB')"
        ).fetchall()
        for table, column in cols:  # catalog names, not user text
            out.append(
                " ".join(
                    str(v) for (v,) in con.execute(f'SELECT "{column}" FROM "{table}"').fetchall()
                )
            )
    for f in db.parent.glob(db.name + "*"):
        out.append(f.read_bytes().decode("latin-1"))
    for f in db.parent.glob(db.stem + ".snapshot*"):
        out.append(f.read_bytes().decode("latin-1"))
    return out


@pytest.mark.filterwarnings(
    "ignore:Requiring AUTH while not requiring TLS"
)  # implicit TLS: it is TLS
def test_canary_secrets_never_appear_anywhere(tmp_path, results):
    db, cfg_file = tmp_path / "s.duckdb", tmp_path / "s.toml"
    cfg_file.write_text(ALWAYS_RULE)
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    smtp, hooks = (
        SmtpSink(tls="ssl", ca=ca, user="cachemon", password=CANARIES["SMTP_PASSWORD"]),
        WebhookSink(),
    )
    texts: dict[str, str] = {}
    with Emulator(CANARIES["CF_API_TOKEN"]) as emu:
        sim = small_sim()
        for w in Window(T0, T0 + 2 * HOUR).split(HOUR):
            emu.add(sim.generate(w))
        env = dict(
            os.environ,
            CACHEMON_DB=str(db),
            CACHEMON_CONFIG=str(cfg_file),
            PYTHONPATH=str(ROOT),
            CF_ACCOUNT_ID=emu.account,
            CF_API_BASE=emu.base,
            CF_API_TOKEN=CANARIES["CF_API_TOKEN"],
            **smtp.env(),
            SMTP_CA_FILE=str(tmp_path / "ca.pem"),
            ALERT_EMAIL="oncall@example.org",
            SLACK_WEBHOOK_URL=hooks.url(f"/services/T0/B0/{CANARIES['SLACK_WEBHOOK_URL']}"),
            CACHEMON_API_TOKEN=CANARIES["CACHEMON_API_TOKEN"],
        )
        span = ["--since", iso(T0), "--until", iso(T0 + 2 * HOUR), "--quiet"]
        # Source faults: a pull that gives up (5xx), one refused (401), one cut short; then a good one.
        emu.faults.extend([Fault(status=500)] * 4)
        texts["pull, 5xx"] = _run(env, "cachemon", "pull", *span).stderr
        emu.faults.append(Fault(status=401))
        texts["pull, 401"] = _run(env, "cachemon", "pull", *span).stderr
        emu.faults.append(Fault(truncate=True))
        texts["pull, truncated"] = _run(env, "cachemon", "pull", *span).stderr
        good = _run(env, "cachemon", "pull", *span)
        assert good.returncode == 0, good.stderr
        texts["pull"] = good.stderr
    # Notifications while SMTP is down and the webhook answers 500, then delivered.
    hooks.status = 500
    failing = _run(env, "jobs", "--once", "alerts", clock=T0 + 2 * HOUR)
    texts["runner, channels failing"] = failing.stdout + failing.stderr
    smtp.start()
    hooks.status = 200
    later = _run(env, "jobs", "--once", "deliver", clock=T0 + 3 * HOUR)
    texts["runner, delivering"] = later.stdout + later.stderr
    smtp.stop()
    hooks.close()
    assert len(smtp.messages) == 1 and len(hooks.accepted(hooks.requests[0]["path"])) == 1
    texts["email sent"] = smtp.messages[0].as_string()
    texts["cli metrics"] = _run(env, "cachemon", "metrics", "--at", iso(T0 + 2 * HOUR)).stdout
    texts["cli alerts history"] = _run(
        env, "cachemon", "alerts", "history", "--since", iso(T0)
    ).stdout
    export = _run(env, "cachemon", "export", "--to", str(tmp_path / "export"))
    assert export.returncode == 0, export.stderr
    texts["export log"] = export.stderr
    for f in (tmp_path / "export").rglob("*.parquet"):  # compressed: read the values, not the bytes
        texts[f"export {f.parent.parent.name}/{f.parent.name}"] = (
            pq.read_table(f).to_pandas().to_csv()
        )
    texts |= _api_texts(env)
    for i, text in enumerate(_store_texts(db)):
        texts[f"store {i}"] = text
    texts |= _dashboard_dom(env)

    # The failures really happened, and were reported (without the secrets).
    assert (
        "HTTP 500 after 4 attempts" in texts["pull, 5xx"]
        and "Account Analytics Read" in texts["pull, 401"]
    )
    assert "malformed" in texts["pull, truncated"]
    assert (
        "via email failed" in texts["runner, channels failing"]
        and "via slack failed" in texts["runner, channels failing"]
    )
    leaks = [
        (where, name)
        for where, text in texts.items()
        for name, value in CANARIES.items()
        if value in text
    ]
    assert not leaks
    assert len(texts) > 60
    results(
        "canary secrets",
        "CF_API_TOKEN, SMTP password, Slack webhook URL, metrics API token; with source "
        "faults, SMTP down and webhook 500s",
        f"{len(texts)} outputs searched",
        "0 occurrences in logs, errors, store, email, metrics API, export or dashboard DOM",
    )


def _api_texts(env) -> dict[str, str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "cachemon", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url, out = f"http://127.0.0.1:{port}", {}
    try:
        for _ in range(100):
            try:
                httpx.get(url + "/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        token = {"Authorization": f"Bearer {CANARIES['CACHEMON_API_TOKEN']}"}
        for name, headers, params in (
            ("no token", {}, {}),
            ("wrong token", {"Authorization": "Bearer nope"}, {}),
            ("json", token, {}),
            ("prometheus", token, {"format": "prometheus"}),
        ):
            r = httpx.get(url + "/metrics", headers=headers, params=params, timeout=30)
            assert r.status_code == (200 if headers is token else 401), (name, r.text)
            out[f"api {name}"] = r.text + str(r.headers)
    finally:
        server.send_signal(signal.SIGTERM)
        out["api server log"] = server.communicate(timeout=30)[0]
    return out


def _dashboard_dom(env) -> dict[str, str]:
    from playwright.sync_api import sync_playwright

    out = {}
    with streamlit_server(
        {k: env[k] for k in env if k.startswith(("CACHEMON_", "CF_", "SMTP_", "SLACK_"))}
    ) as url:
        with sync_playwright() as p:
            browser = chromium(p)
            page = browser.new_page()
            for name in PAGES:
                page.goto(f"{url}/{name}")
                page.wait_for_selector('[data-testid="stMain"]', timeout=60_000)
                page.wait_for_timeout(2500)
                out[f"dashboard /{name}"] = page.content()
            browser.close()
    return out
