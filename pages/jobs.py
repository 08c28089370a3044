"""Jobs: the runner's schedule, last runs and failures, data freshness."""

from datetime import datetime, timedelta

import duckdb
import pandas as pd
import plotly.express as px
import streamlit as st

from cachemon import timerange
from cachemon.clock import Window
from cachemon.errors import CachemonError
from cachemon.ingest import write as ingest_write
from cachemon.runner import runs as runner_runs
from cachemon.runner.runs import JobStatus, Outcome, RunRecord
from cachemon.runner.selfcheck import rough_age
from cachemon.settings import Config
from cachemon.store.queries import data_span
from pages.shared import charts, common

NONE = "—"
ERROR_CHARS = 80  # an error cell's length; the full text is in an expander below the table
OUTCOME_COLOURS = {
    Outcome.OK: charts.GOOD,
    Outcome.ERROR: charts.BAD,
    Outcome.SKIPPED: charts.WARN,
    Outcome.SCHEDULED: charts.NEUTRAL,
}
SCHEDULE_COLUMNS = {
    "job": st.column_config.TextColumn(width=100, pinned=True),
    "when": st.column_config.TextColumn(width="small"),
    "last run": st.column_config.TextColumn("last run (UTC)", width="small"),
    "outcome": st.column_config.TextColumn(width="small"),
    "last success": st.column_config.TextColumn("last success (UTC)", width="small"),
    "errors 24h": st.column_config.NumberColumn(width="small", format="%d"),
    "next run": st.column_config.TextColumn("next run (UTC)", width="small"),
}
RUN_COLUMNS = {
    "job": st.column_config.TextColumn(width=100, pinned=True),
    "started": st.column_config.TextColumn("started (UTC)", width="small"),
    "outcome": st.column_config.TextColumn(width="small"),
    "duration": st.column_config.TextColumn(
        width="small", help="— when not measured: a run recorded by `cachemon demo`"
    ),
    "rows": st.column_config.TextColumn(width="small"),
    "error": st.column_config.TextColumn(
        width="large", help="The last line; the full text is in the expanders below"
    ),
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
            + ", ".join(f"{s.spec.name} (last error {_when(s.last_error_at)})" for s in failing)
        )
    overdue = [s.spec.name for s in statuses if s.overdue]
    if overdue:
        st.warning(f"Overdue: {', '.join(overdue)} missed slots; is `python -m jobs` running?")
    st.subheader("Schedule (UTC)")
    st.dataframe(
        schedule_frame(statuses, at),
        hide_index=True,
        width="stretch",
        column_config=SCHEDULE_COLUMNS,
    )
    with st.expander("What each job does"):
        st.markdown("\n".join(f"- **{s.spec.name}**: {s.purpose}" for s in statuses))
    for s in failing:
        with st.expander(f"Last error of {s.spec.name}"):
            st.code(s.last_error or "(no error text recorded)", language=None)
    st.subheader("Runs, last 24 hours")
    if not runs:
        st.info("No job ran in the last 24 hours: start the runner with `python -m jobs`.")
        return
    df = runs_frame(runs)
    fig = px.scatter(
        pd.DataFrame(
            {
                "started": [r.started_at for r in runs],
                "job": [r.job for r in runs],
                "outcome": [str(r.outcome) for r in runs],
                "duration": df["duration"],
            }
        ),
        x="started",
        y="job",
        color="outcome",
        color_discrete_map=OUTCOME_COLOURS,
        hover_data=["duration"],
        title="Runs by job",
    )
    charts.time_axes(fig, Window(at - timedelta(days=1), at), at, "job")
    st.plotly_chart(fig.update_layout(hovermode="closest", height=320), width="stretch")
    st.dataframe(df, hide_index=True, width="stretch", column_config=RUN_COLUMNS)
    for r in runs:
        if r.outcome == Outcome.ERROR and r.error:
            with st.expander(f"Error of {r.job} at {timerange.stamp(r.started_at)}"):
                st.code(r.error, language=None)


def _when(t: datetime | None, never: str = "never") -> str:
    return timerange.stamp(t) if t is not None else never


def schedule_frame(statuses: list[JobStatus], at: datetime) -> pd.DataFrame:
    """The schedule as shown: one time format, words where a value is missing."""
    return pd.DataFrame(
        [
            {
                "job": s.spec.name,
                "when": s.spec.describe(),
                "last run": _when(s.last_run),
                "outcome": str(s.last_outcome) if s.last_outcome else "never ran",
                "last success": _when(s.last_ok),
                "errors 24h": s.errors_24h,
                "next run": "due now" if s.next_run <= at else timerange.stamp(s.next_run),
            }
            for s in statuses
        ],
        columns=list(SCHEDULE_COLUMNS),
    )


def duration(r: RunRecord) -> str:
    """A run's length for people: 0.42 s, 12 s, 3 min; "—" when not measured
    (the runner times every run; the demo records its runs at one instant)."""
    seconds = (r.finished_at - r.started_at).total_seconds()
    if seconds <= 0:
        return NONE
    if seconds < 10:
        return f"{seconds:.2f} s"
    return rough_age(timedelta(seconds=seconds))


def runs_frame(runs: list[RunRecord]) -> pd.DataFrame:
    """Recent runs as shown: the error's last line, cut to ERROR_CHARS."""
    return pd.DataFrame(
        [
            {
                "job": r.job,
                "started": timerange.stamp(r.started_at),
                "outcome": str(r.outcome),
                "duration": duration(r),
                "rows": common.fmt(r.rows, "count") if r.rows is not None else NONE,
                "error": _short(_last_line(r.error)) or NONE,
            }
            for r in runs
        ],
        columns=list(RUN_COLUMNS),
    )


def _short(text: str) -> str:
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 1] + "…"


def _last_line(text: str | None) -> str:
    """A traceback's last line (the exception), or the one-line error."""
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else ""


def _freshness(span, watermarks: dict, at) -> None:
    cols = st.columns(1 + len(watermarks))
    if span is None:
        cols[0].metric("Newest data", "none yet")
        return
    age = max(at - span[1], timedelta(0))
    cols[0].metric(
        "Newest data", timerange.stamp(span[1]), help=f"{rough_age(age)} before this refresh"
    )
    for col, (source, until) in zip(cols[1:], watermarks.items()):
        col.metric(f"{source} watermark", timerange.stamp(until))
    common.stale_banner(span[1], at)


page()
