"""An imported file aggregated as its validated batches stream in: rollups
bounded by distinct minutes and keys, never all the events at once.

`cachemon.ingest.write.append_imports` stores the result (`ImportFile`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime

import duckdb
import pyarrow as pa

from cachemon import rollups
from cachemon.events import EventFrame
from cachemon.rollups import Rollups


@dataclass(frozen=True)
class ImportFile:
    """One file's events, aggregated: what `append_imports` stores."""

    sha256: str
    name: str
    rollups: Rollups
    events: int
    span: tuple[datetime, datetime] | None


# Merging partial rollups of batches: sums add, minimums and maximums
# combine, and a gauge's last value is the one read last (hence last_at).
GAUGE_PARTIAL_SQL = """
SELECT date_trunc('minute', timestamp) AS minute, kind AS name,
       sum(latency_ms) AS value_sum, count(*) AS samples, min(latency_ms) AS value_min,
       max(latency_ms) AS value_max, arg_max(latency_ms, timestamp) AS value_last, max(timestamp) AS last_at
FROM batch WHERE kind <> 'request'
GROUP BY ALL
"""
MERGE_SQL = {
    "minute": """SELECT minute, tier, endpoint, experiment, cohort, sum(requests) AS requests, sum(errors) AS errors,
        sum(bytes) AS bytes, sum(latency_sum) AS latency_sum, min(latency_min) AS latency_min,
        max(latency_max) AS latency_max, sum(events)::BIGINT AS events
        FROM part GROUP BY ALL ORDER BY 1""",
    "latency": """SELECT minute, tier, endpoint, experiment, cohort, bucket, sum(weight) AS weight
        FROM part GROUP BY ALL ORDER BY 1""",
    "gauges": """SELECT minute, name, sum(value_sum) AS value_sum, sum(samples)::BIGINT AS samples,
        min(value_min) AS value_min, max(value_max) AS value_max, arg_max(value_last, last_at) AS value_last,
        max(last_at) AS last_at FROM part GROUP BY ALL""",
    "keys": """SELECT key, any_value(endpoint) AS endpoint, experiment, cohort, t, sum(edge) AS edge,
        sum(kv) AS kv, sum(r2) AS r2, sum(api) AS api, sum(errors) AS errors,
        sum(fill_errors) AS fill_errors, min(first_seen) AS first_seen, max(last_seen) AS last_seen
        FROM part GROUP BY key, experiment, cohort, t""",
}
# Partial rollup rows held before they are merged (bounds memory between
# merges; ~100 MB of per-key rows). Merging waits until the pending rows
# also exceed the merged ones, so many distinct keys cost no quadratic time.
MERGE_ROWS = 300_000


class ImportAccumulator:
    """Aggregates a file's validated batches as they stream in, so an import
    holds rollups (bounded by distinct minutes and keys), never all events."""

    def __init__(self, sampling: rollups.Sampling | None = None):
        self.con = duckdb.connect()
        # UTC minutes, and timestamps typed as the coded rollups' (tz "UTC").
        self.con.execute("SET TimeZone = 'UTC'")
        self.parts: dict[str, list[pa.Table]] = {name: [] for name in MERGE_SQL}
        # SHARDS sample rows are kept as they are (R of the requests), and
        # the budget applied to the whole file's span at the end.
        self.sampling = sampling
        self.samples: list[pa.Table] = []
        self.events, self.lo, self.hi = 0, None, None
        self.merged = 0  # rows after the last merge

    def add(self, frame: EventFrame) -> None:
        if len(frame) == 0:
            return
        batch = rollups.CodedBatch.of(frame)
        with batch.registered(self.con):
            self.parts["minute"].append(batch.sql(self.con, rollups.MINUTE_SQL))
            self.parts["latency"].append(batch.sql(self.con, rollups.LATENCY_SQL))
            self.parts["gauges"].append(self.con.sql(GAUGE_PARTIAL_SQL).to_arrow_table())
            keys = batch.sql(self.con, rollups.KEYS_SQL)
            # Plain text, so parts of different batches merge as one column.
            i = keys.column_names.index("key")
            self.parts["keys"].append(keys.set_column(i, "key", keys["key"].cast(pa.string())))
            if self.sampling is not None:
                self.samples.append(rollups.sample_rows(self.con, batch, self.sampling.rate))
        span = frame.time_range()
        self.lo = span[0] if self.lo is None else min(self.lo, span[0])
        self.hi = span[1] if self.hi is None else max(self.hi, span[1])
        self.events += len(frame)
        if sum(t.num_rows for parts in self.parts.values() for t in parts) > max(
            MERGE_ROWS, 2 * self.merged
        ):
            self._merge()

    def _merge(self) -> None:
        for name, sql in MERGE_SQL.items():
            parts = self.parts[name]
            if len(parts) > 1:
                self.con.register("part", pa.concat_tables(parts, promote_options="permissive"))
                try:
                    self.parts[name] = [self.con.sql(sql).to_arrow_table()]
                finally:
                    self.con.unregister("part")
        self.merged = sum(t.num_rows for parts in self.parts.values() for t in parts)

    def finish(self, sha256: str, name: str) -> ImportFile:
        if self.events == 0:
            empty = rollups.from_events(self.con, EventFrame.empty(), None, self.sampling)
            self.con.close()
            return ImportFile(sha256, name, empty, 0, None)
        self._merge()
        r = Rollups(
            *(self.parts[n][0] for n in ("minute", "latency", "gauges", "keys")), events=self.events
        )
        if self.sampling is not None:
            rows = pa.concat_tables([rollups.empty_samples(), *self.samples])
            allowed = self.sampling.budget * rollups.covered_minutes((self.lo, self.hi))
            rows, rate = rollups.within_budget(
                rows, self.sampling.rate, allowed / rollups.DAY_MINUTES
            )
            r = dataclasses.replace(r, samples=rows, sample_rate=rate)
        self.con.close()
        return ImportFile(sha256, name, r, self.events, (self.lo, self.hi))
