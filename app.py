"""The cachemon dashboard: `streamlit run app.py`.

A thin shell: pages read the store's published snapshot through `cachemon`
and render; they never compute domain numbers, and write only through
`cachemon` functions (creating a silence).
"""

import streamlit as st

from cachemon import config as config_mod
from cachemon.clock import CLOCK_SKEW, Period, format_duration, iso
from cachemon.errors import CachemonError
from cachemon.metrics import window as metrics
from cachemon.runner import selfcheck
from views import common

st.set_page_config(page_title="cachemon", page_icon=":bar_chart:", layout="wide")


def _login_required() -> bool:
    """With an [auth] section in .streamlit/secrets.toml (Streamlit's OIDC),
    only a logged-in user sees the dashboard."""
    try:
        configured = "auth" in st.secrets
    except FileNotFoundError:
        configured = False
    if not configured or st.user.get("is_logged_in", False):
        return False
    st.title("cachemon")
    st.write("This dashboard needs a login.")
    if st.button("Log in"):
        st.login()
    return True


def _span(con, cfg):
    return metrics.data_span(con)


def _runner(con, cfg, at):
    return selfcheck.check(con, cfg, at)


def _sidebar(cfg) -> None:
    with st.sidebar:
        st.title("cachemon")
        st.caption("BooksTrack tiered cache")
        common.setting_warnings()
        st.selectbox(
            "Period",
            [p.value for p in Period],
            index=1,
            key="period",
            help="The window of the Overview, Top keys and Costs pages, ending now",
        )
        st.selectbox("Endpoint", ["all", *(e for e, _ in cfg.costs.kv_ttl)], key="endpoint")
        try:
            span = common.cached(_span)
        except CachemonError:
            span = None
        if span:
            age = common.now() - span[1]
            if -age > CLOCK_SKEW:  # written by a clock ahead of real time: not "up to date"
                st.warning(
                    f"Data {iso(span[0])} – {iso(span[1])} · ends in the future (now {iso(common.now())}): "
                    "written by a clock ahead of real time"
                )
            else:
                st.caption(
                    f"Data {iso(span[0])} – {iso(span[1])} · "
                    f"{'up to date' if age.total_seconds() < 60 else format_duration(age) + ' old'}"
                )
        else:
            st.caption("No data yet")
        try:
            common.runner_status(common.cached(_runner, common.now()))
        except CachemonError:
            pass  # no store yet: the page says how to fill it
        st.link_button("Metrics API", cfg.metrics.api_url + "/metrics", icon=":material/api:")
        if st.user.get("is_logged_in"):
            st.caption(f"Signed in as {st.user.get('email') or st.user.get('name')}")
            st.button("Log out", on_click=st.logout)


if _login_required():
    st.stop()
# Read on every run (a small TOML file and the environment), so a changed
# CACHEMON_DB or config shows without a restart.
try:
    st.session_state["config"] = config_mod.load()
except CachemonError as exc:
    st.error(str(exc))
    st.stop()
_sidebar(st.session_state["config"])
page = st.navigation(
    [
        st.Page("views/overview.py", title="Overview", icon=":material/monitoring:", default=True),
        st.Page("views/trends.py", title="Trends", icon=":material/show_chart:", url_path="trends"),
        st.Page("views/topkeys.py", title="Top keys", icon=":material/key:", url_path="keys"),
        st.Page(
            "views/experiments.py",
            title="Experiments",
            icon=":material/science:",
            url_path="experiments",
        ),
        st.Page("views/ttl.py", title="TTL what-if", icon=":material/tune:", url_path="ttl"),
        st.Page(
            "views/alerts.py", title="Alerts", icon=":material/notifications:", url_path="alerts"
        ),
        st.Page("views/costs.py", title="Costs", icon=":material/payments:", url_path="costs"),
        st.Page("views/jobs.py", title="Jobs", icon=":material/schedule:", url_path="jobs"),
    ]
)
page.run()
