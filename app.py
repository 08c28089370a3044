"""The cachemon dashboard: `streamlit run app.py`.

A thin shell: pages read the store's published snapshot through `cachemon`
and render; they never compute domain numbers, and write only through
`cachemon` functions (creating a silence).

Every run calls `st.navigation` first, with the pages the visitor may see:
with an [auth] section in .streamlit/secrets.toml (Streamlit's OIDC) and
nobody logged in, only a login page, so no other page's URL renders
anything. A config error is shown in the page's place, below the navigation.
"""

import os
from datetime import datetime

import duckdb
import streamlit as st

from cachemon import config
from cachemon.clock import ahead
from cachemon.errors import CachemonError
from cachemon.runner import selfcheck
from cachemon.settings import Config
from cachemon.store.queries import data_span
from cachemon.timerange import stamp
from pages.shared import apilink, common, timerange

st.set_page_config(page_title="cachemon", page_icon=":bar_chart:", layout="wide")

PAGES = (
    ("pages/overview.py", "Overview", ":material/monitoring:", None),
    ("pages/trends.py", "Trends", ":material/show_chart:", "trends"),
    ("pages/keys.py", "Top keys", ":material/key:", "keys"),
    ("pages/experiments.py", "Experiments", ":material/science:", "experiments"),
    ("pages/ttl.py", "TTL what-if", ":material/tune:", "ttl"),
    ("pages/alerts.py", "Alerts", ":material/notifications:", "alerts"),
    ("pages/costs.py", "Costs", ":material/payments:", "costs"),
    ("pages/jobs.py", "Jobs", ":material/schedule:", "jobs"),
)


def _auth() -> tuple[bool, str]:
    """Whether a login is configured, and why the secrets could not be read
    ('' when they could). A secrets file that exists but does not parse
    counts as configured: a typo must not open the dashboard to everyone."""
    try:
        return "auth" in st.secrets, ""
    except FileNotFoundError as exc:  # Streamlit's "no secrets" and "unreadable secrets"
        if any(os.path.exists(p) for p in st.get_option("secrets.files")):
            return True, str(exc)
        return False, ""


def _login_page() -> None:
    """The only page before a login: a button to log in, or why the login
    configuration is not usable."""
    _, problem = _auth()
    st.title("cachemon")
    if problem:
        st.error(f"The login is not usable: {problem}")
        return
    st.write("This dashboard needs a login.")
    if st.button("Log in"):
        st.login()


def _span(con: duckdb.DuckDBPyConnection, cfg: Config) -> tuple[datetime, datetime] | None:
    return data_span(con)


def _runner(con: duckdb.DuckDBPyConnection, cfg: Config, at: datetime) -> selfcheck.RunnerCheck:
    return selfcheck.check(con, cfg, at)


def _endpoints(cfg: Config) -> list[str]:
    return [e for e, _ in cfg.costs.kv_ttl]


def _sidebar(cfg: Config) -> None:
    with st.sidebar:
        st.title("cachemon")
        st.caption("BooksTrack tiered cache")
        common.setting_warnings()
        timerange.sidebar(_endpoints(cfg), common.now())
        try:
            span = common.cached(_span)
        except CachemonError:
            span = None
        if span:
            age = common.now() - span[1]
            # Written by a clock ahead of real time: not "up to date".
            if ahead(span[1], common.now(), cfg.ingest.clock_skew):
                st.warning(
                    f"Data {stamp(span[0])} – {stamp(span[1])} · ends in the future (now {stamp(common.now())}): "
                    "written by a clock ahead of real time"
                )
            else:
                st.caption(
                    f"Data {stamp(span[0])} – {stamp(span[1])} · "
                    f"{'up to date' if age.total_seconds() < 60 else selfcheck.rough_age(age) + ' old'}"
                )
        else:
            st.caption("No data yet")
        try:
            common.runner_status(common.cached(_runner, common.now()))
        except CachemonError:
            pass  # no store yet: the page says how to fill it
        apilink.api_link(cfg)
        if st.user.get("is_logged_in"):
            st.caption(f"Signed in as {st.user.get('email') or st.user.get('name')}")
            st.button("Log out", on_click=st.logout)


def _dashboard() -> None:
    """The pages (navigation first), then the shared sidebar and the page;
    a config file that does not load is shown in the page's place."""
    page = st.navigation(
        [
            st.Page(path, title=title, icon=icon, url_path=url, default=url is None)
            for path, title, icon, url in PAGES
        ]
    )
    # Read on every run (a small TOML file and the environment), so a changed
    # CACHEMON_DB or config shows without a restart.
    try:
        cfg = config.load()
    except CachemonError as exc:
        st.session_state.pop("config", None)  # no page may run on an older config
        st.error(str(exc))
        return
    st.session_state["config"] = cfg
    timerange.sync(_endpoints(cfg), common.now())
    _sidebar(cfg)
    page.run()


configured, problem = _auth()
if configured and (problem or not st.user.get("is_logged_in", False)):
    st.navigation([st.Page(_login_page, title="Log in", icon=":material/login:")]).run()
else:
    _dashboard()
