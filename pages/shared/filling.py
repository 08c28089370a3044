"""A store being filled by the first demo: its progress in place of "the
store is empty".

`cachemon demo` keeps a progress file beside the store until the new store
is published (`cachemon.store.filling`); while it does, a page that finds
no data shows the demo's progress and follows it every few seconds, then
reruns the whole page as soon as the demo is done. Usage, where a page
meets an EmptyStoreError::

    f = filling.filling(cfg)
    if f:
        filling.show_filling(f, cfg)
"""

from __future__ import annotations

from datetime import timedelta

import streamlit as st

from cachemon.clock import utcnow
from cachemon.errors import CachemonError
from cachemon.runner.selfcheck import rough_age
from cachemon.settings import Config
from cachemon.store import filling as store_filling
from cachemon.store.filling import Filling

# The progress bar follows the demo this often (a day of traffic takes a few seconds).
FOLLOW_EVERY = timedelta(seconds=3)


def filling(cfg: Config) -> Filling | None:
    """The demo filling the configured store now, or None. A progress file
    that is not one is named in a caption (the page goes on to say the
    store is empty, which is true)."""
    try:
        return store_filling.read(cfg.store.path)
    except CachemonError as exc:
        st.caption(f"Not showing the demo's progress: {exc}")
        return None


def days_text(days: float) -> str:
    """'7 days', '1 day', '0.25 days'."""
    n = f"{round(days, 2):g}"
    return f"{n} day" if n == "1" else f"{n} days"


def filling_text(f: Filling) -> str:
    """The progress line: 'Filling the store with 7 days of simulated traffic: 43%'."""
    text = (
        f"Filling the store with {days_text(f.total_days)} of simulated traffic: {f.fraction:.0%}"
    )
    if f.traffic_done:
        text += "; computing the alert, experiment and report history"
    return text


def show_filling(f: Filling, cfg: Config) -> None:
    """The demo's progress (a bar and its text), followed until it ends;
    then the page reruns and shows the data."""
    _follow(cfg.store.path, f.pid)


@st.fragment(run_every=FOLLOW_EVERY)
def _follow(db: str, pid: int) -> None:
    try:
        f = store_filling.read(db)
    except CachemonError:
        f = None
    if f is None or f.pid != pid:
        st.rerun()  # done (or gone): the whole page, with the data or what is wrong
    st.progress(f.fraction, text=filling_text(f))
    st.caption(
        f"Started {rough_age(utcnow() - f.started)} ago by process {f.pid} (`cachemon demo`). "
        "The pages show the data as soon as the demo publishes the store."
    )
