"""The sidebar's "Metrics API" link, drawn only when the API answers.

`./run.sh` starts `cachemon serve` beside the dashboard, but a dashboard
started on its own (`streamlit run app.py`) has no API: a link to a port
where nothing listens is a dead end, so the link shows only while a real
GET of the API's /healthz gets a cachemon answer. The probe is cached for
a few seconds (every rerun draws the sidebar) and bounded by a short
deadline (a firewalled host must not hold up the page).
"""

from __future__ import annotations

import json

import streamlit as st

from cachemon import outbound
from cachemon.settings import Config

PROBE_TIMEOUT_S = 0.3
PROBE_CACHE_S = 5  # a serve started or stopped shows within this many seconds
PROBE_MAX_BYTES = 64 * 1024


def _healthz(url: str) -> str:
    return url.rstrip("/") + "/healthz"


@st.cache_data(ttl=PROBE_CACHE_S, show_spinner=False, max_entries=20)
def api_reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the cachemon metrics API at `url` answers GET /healthz within
    `timeout` seconds. Any cachemon answer counts, 503 included (the API is
    up, its store is not readable yet); another program on that port (its
    answer is not the API's JSON health body) or no answer does not."""
    try:
        answer = outbound.call("GET", _healthz(url), limit=timeout, max_bytes=PROBE_MAX_BYTES)
    except outbound.OutboundError:
        return False
    try:
        body = json.loads(answer.body)
    except ValueError:
        return False
    return answer.complete and isinstance(body, dict) and "status" in body


def api_link(cfg: Config) -> None:
    """The sidebar's link to the metrics API's /metrics, when it answers;
    nothing otherwise."""
    if api_reachable(cfg.metrics.api_url):
        st.link_button(
            "Metrics API", cfg.metrics.api_url.rstrip("/") + "/metrics", icon=":material/api:"
        )
