"""Stored analyses of the TTL experiments: `experiment_results`, written by
the daily job (`save`), by the demo (`backfill`), and read back raw
(`history`, what an analyst's query sees) or typed (`stored`).

The decision itself is `cachemon.tuning.analysis`; this module only keeps it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, time, timedelta

import duckdb

from cachemon import jsontext
from cachemon.clock import DAY, floor_to
from cachemon.pricing import Pricing, R2Lookup
from cachemon.tuning.analysis import Analysis, Decision, analyze
from cachemon.tuning.experiments import Experiment

SAVE = "INSERT INTO experiment_results VALUES (?, ?, ?, ?)"
HISTORY = "SELECT analyzed_at, decision, payload FROM experiment_results WHERE experiment = ? ORDER BY analyzed_at"


def backfill(
    con: duckdb.DuckDBPyConnection,
    experiments: tuple[Experiment, ...],
    since: datetime,
    until: datetime,
    pricing: Pricing,
    daily_at: time,
    r2_lookup: R2Lookup = R2Lookup.REHYDRATION,
) -> int:
    """Store the analyses the daily job (at `daily_at` UTC) would have made
    in (since, until] (the demo's history of decisions); returns how many."""
    n = 0
    slot = floor_to(since, DAY) + timedelta(hours=daily_at.hour, minutes=daily_at.minute)
    while slot <= until:
        for e in experiments:
            if since < slot and e.start <= slot:
                save(con, analyze(con, e, slot, pricing, r2_lookup))
                n += 1
        slot += DAY
    return n


def reset(con: duckdb.DuckDBPyConnection) -> None:
    """Forget every stored analysis (the demo replaces the data they described)."""
    con.execute("DELETE FROM experiment_results")


def save(con: duckdb.DuckDBPyConnection, a: Analysis) -> None:
    """Keep analysis `a` (the daily job's, the CLI's `analyze` or a backfill's)."""
    con.execute(SAVE, [a.experiment, a.at, a.decision, jsontext.dumps(a.to_json())])


def history(con: duckdb.DuckDBPyConnection, experiment: str) -> list[dict]:
    """Every stored analysis of `experiment`, oldest first, as raw JSON
    (what an analyst's query sees). Code reads `stored` instead."""
    return [
        {"analyzed_at": t, "decision": d, "result": json.loads(p)}
        for t, d, p in con.execute(HISTORY, [experiment]).fetchall()
    ]


@dataclass(frozen=True)
class Stored:
    """One stored analysis, typed."""

    analyzed_at: datetime
    decision: Decision
    analysis: Analysis


def stored(con: duckdb.DuckDBPyConnection, experiment: str) -> list[Stored]:
    """Every stored analysis of `experiment`, oldest first, read back into
    dataclasses (the dashboard reads `stored(...)[-1].analysis.srm_p`, never
    a JSON key)."""
    return [
        Stored(t, Decision(d), Analysis.from_json(json.loads(p)))
        for t, d, p in con.execute(HISTORY, [experiment]).fetchall()
    ]
