"""Jobs: the runner's schedule, last runs and failures, data freshness."""

from datetime import datetime, timedelta

import duckdb
import pandas as pd
import plotly.express as px
import streamlit as st

from cachemon.clock import format_duration, iso
from cachemon.errors import CachemonError
from cachemon.ingest import write as ingest_write
from cachemon.runner import runs as runner_runs
from cachemon.runner.runs import Outcome
from cachemon.settings import Config
from cachemon.store.queries import data_span
from pages.shared import common

TIME = st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss", timezone="UTC")
OUTCOME_COLOURS = {
    Outcome.OK: "#16a34a",
    Outcome.ERROR: "#dc2626",
    Outcome.SKIPPED: "#f59e0b",
    Outcome.SCHEDULED: "#94a3b8",
}


def _load(con: duckdb.DuckDBPyConnection, cfg: Config, at: datetime):
    return (
        runner_runs.status(con, runner_runs.schedule(cfg), at),
        runner_runs.recent_runs(con, at - timedelta(days=1), 500),
        data_span(con),
        ingest_write.watermarks(con),
    )


@st.fragment(run_every=common.REFRESH)
def page():
    common.page_start("Jobs")
    at = common.now()
    try:
        statuses, runs, span, watermarks = common.cached(_load, at)
    except CachemonError as exc:
        common.show_error(exc)
        return
    _freshness(span, watermarks, at)
    failing = [s for s in statuses if s.last_outcome == Outcome.ERROR]
    if failing:
        st.error(
            "Failing: "
            + ", ".join(f"{s.spec.name} (last error {iso(s.last_error_at)})" for s in failing)
        )
    overdue = [s.spec.name for s in statuses if s.overdue]
    if overdue:
        st.warning(f"Overdue: {', '.join(overdue)} missed slots; is `python -m jobs` running?")
    st.subheader("Schedule (UTC)")
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "job": s.spec.name,
                    "when": s.spec.describe(),
                    "what": s.purpose,
                    "last run": s.last_run,
                    "outcome": s.last_outcome or "never ran",
                    "last success": s.last_ok,
                    "errors 24h": s.errors_24h,
                    "next run": s.next_run,
                }
                for s in statuses
            ]
        ),
        hide_index=True,
        width="stretch",
        column_config={c: TIME for c in ("last run", "last success", "next run")},
    )
    for s in failing:
        with st.expander(f"Last error of {s.spec.name}"):
            st.code(s.last_error or "", language=None)
    st.subheader("Runs, last 24 hours")
    if not runs:
        st.info("No job ran in the last 24 hours: start the runner with `python -m jobs`.")
        return
    df = pd.DataFrame(
        [
            {
                "job": r.job,
                "started": r.started_at,
                "finished": r.finished_at,
                "outcome": r.outcome,
                "seconds": (r.finished_at - r.started_at).total_seconds(),
                "rows": r.rows,
                "slots": r.slots,
                "error": _last_line(r.error),
            }
            for r in runs
        ]
    )
    fig = px.scatter(
        df,
        x="started",
        y="job",
        color="outcome",
        color_discrete_map=OUTCOME_COLOURS,
        hover_data=["seconds", "rows"],
        title="Runs by job",
    )
    st.plotly_chart(fig.update_layout(**common.UTC_AXIS, height=320), width="stretch")
    st.dataframe(
        df, hide_index=True, width="stretch", column_config={"started": TIME, "finished": TIME}
    )


def _last_line(text: str | None) -> str:
    """A traceback's last line (the exception), or the one-line error."""
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else ""


def _freshness(span, watermarks: dict, at) -> None:
    cols = st.columns(1 + len(watermarks))
    if span is None:
        cols[0].metric("Newest data", "none")
        return
    age = max(at - span[1], timedelta(0))
    cols[0].metric("Newest data", iso(span[1]), help=f"{format_duration(age)} before this refresh")
    for col, (source, until) in zip(cols[1:], watermarks.items()):
        col.metric(f"{source} watermark", iso(until))
    common.stale_banner(span[1], at)


page()
