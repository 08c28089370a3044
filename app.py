"""The cachemon dashboard: `streamlit run app.py`.

A thin shell: it reads the store's published snapshot through `cachemon`
and renders; it never computes domain numbers, and writes only through
`cachemon` functions (creating a silence).
"""

import streamlit as st

from cachemon import config as config_mod
from cachemon.clock import Period
from cachemon.errors import CachemonError

st.set_page_config(page_title="cachemon", page_icon=":bar_chart:", layout="wide")

# Read on every run (a small TOML file and the environment), so a changed
# CACHEMON_DB or config shows without a restart.
try:
    st.session_state["config"] = config_mod.load()
except CachemonError as exc:
    st.error(str(exc))
    st.stop()
with st.sidebar:
    st.title("cachemon")
    st.caption("BooksTrack tiered cache")
    st.selectbox("Period", [p.value for p in Period], index=1, key="period")
    st.selectbox("Endpoint", ["all", "title", "isbn", "author"], key="endpoint")

page = st.navigation([
    st.Page("pages/overview.py", title="Overview", icon=":material/monitoring:", default=True),
    st.Page("pages/alerts.py", title="Alerts", icon=":material/notifications:", url_path="alerts"),
])
page.run()
