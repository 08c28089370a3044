"""The Cloudflare Workers Analytics Engine source: SQL API client and pull.

`Client.query` POSTs raw SQL to
`{CF_API_BASE}/accounts/{CF_ACCOUNT_ID}/analytics_engine/sql` with a bearer
token and parses the `FORMAT JSON` answer once into a `QueryResult`.
Faults: timeouts, refused connections and 5xx are retried `retries` times
with exponential backoff and jitter; 429 waits for `Retry-After`; 401/403,
422 and malformed answers fail at once with a message that says what to do.
Each attempt has one total deadline (`[analytics_engine] timeout`: connect,
query and the whole answer) and reads at most `max_bytes` of answer
(`outbound`). The token is only ever in the Authorization header: never in a
message, a log line or a repr; an error body that echoes it (or any other
secret of the environment) is redacted and cut to 300 characters.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cachemon import keyhash, outbound, rollups
from cachemon.clock import Window
from cachemon.errors import ConfigError, SourceError
from cachemon.events import TIERS
from cachemon.redact import Redactor
from cachemon.rollups import Rollups
from cachemon.settings import CF_API_BASE, AnalyticsEngineConfig, ColumnMapping, cf_api_base
from cachemon.sources import ae_keys, ae_sql

log = logging.getLogger("cachemon.analytics_engine")
MAX_RETRY_AFTER = 120.0
MAX_ANSWER = 512 * 1024 * 1024  # bytes; an hour's rollups are a few MB


@dataclass(frozen=True)
class Credentials:
    account_id: str
    token: str = field(repr=False)
    base: str = CF_API_BASE

    @classmethod
    def from_env(cls, env=None) -> Credentials:
        env = os.environ if env is None else env
        missing = [v for v in ("CF_ACCOUNT_ID", "CF_API_TOKEN") if not env.get(v)]
        if missing:
            raise ConfigError(
                f"Analytics Engine needs {' and '.join(missing)} in the environment "
                "(an API token with the Account Analytics Read permission)"
            )
        return cls(env["CF_ACCOUNT_ID"], env["CF_API_TOKEN"], cf_api_base(env))

    @property
    def url(self) -> str:
        return f"{self.base.rstrip('/')}/accounts/{self.account_id}/analytics_engine/sql"


@dataclass(frozen=True)
class QueryResult:
    meta: tuple[tuple[str, str], ...]
    data: tuple[dict, ...]
    rows: int


class Client:
    """Analytics Engine SQL API client. `sleep` and `jitter` are injected so
    tests can run retries without waiting; `redactor` knows the secrets to
    keep out of messages (the token always)."""

    def __init__(
        self,
        creds: Credentials,
        cfg: AnalyticsEngineConfig = AnalyticsEngineConfig(),
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
        redactor: Redactor = Redactor(),
        max_bytes: int = MAX_ANSWER,
    ):
        self.creds, self.cfg = creds, cfg
        self.sleep, self.jitter = sleep, jitter
        self.redactor = redactor.plus(creds.token)
        self.max_bytes = max_bytes
        self.queries = 0  # requests sent, for reporting

    @classmethod
    def from_env(cls, cfg: AnalyticsEngineConfig, env=None) -> Client:
        """A client with the credentials of the environment (see README)."""
        env = os.environ if env is None else env
        return cls(Credentials.from_env(env), cfg, redactor=Redactor.from_env(env))

    def __repr__(self) -> str:
        return f"Client(account_id={self.creds.account_id!r}, base={self.creds.base!r})"

    def close(self) -> None:
        """Nothing to release: every call opens and closes its connection."""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def query(self, sql: str) -> QueryResult:
        attempt, throttled = 0, 0
        while True:
            self.queries += 1
            try:
                resp = outbound.call(
                    "POST",
                    self.creds.url,
                    content=sql.encode("utf-8"),
                    headers={"Authorization": f"Bearer {self.creds.token}"},
                    limit=self.cfg.timeout.total_seconds(),
                    max_bytes=self.max_bytes,
                )
            except outbound.DeadlineExceeded:
                problem = (
                    f"timed out (no complete answer within {self.cfg.timeout.total_seconds():g} s)"
                )
            except outbound.BadRequest as exc:
                raise SourceError(
                    f"Analytics Engine cannot be called: {exc} (check CF_API_BASE)"
                ) from None
            except outbound.Unreachable as exc:
                problem = f"could not connect ({exc})"
            else:
                if resp.status == 429 and throttled < max(3, self.cfg.retries):
                    throttled += 1
                    wait = _retry_after(resp)
                    log.warning("Analytics Engine rate limit (429): waiting %.1f s", wait)
                    self.sleep(wait)
                    continue
                if resp.status < 500:
                    return _answer(resp, sql, self.creds.account_id, self.redactor)
                problem = f"HTTP {resp.status}"
            if attempt >= self.cfg.retries:
                raise SourceError(
                    f"Analytics Engine {problem} after {attempt + 1} attempts; "
                    f"the store keeps its last good data"
                )
            wait = 0.5 * 2**attempt * (0.5 + self.jitter())
            log.warning(
                "Analytics Engine %s: retry %d of %d in %.2f s",
                problem,
                attempt + 1,
                self.cfg.retries,
                wait,
            )
            self.sleep(wait)
            attempt += 1


def _retry_after(resp: outbound.Answer) -> float:
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(resp.headers.get("retry-after", "1"))))
    except ValueError:
        return 1.0


def _answer(resp: outbound.Answer, sql: str, account: str, redactor: Redactor) -> QueryResult:
    if resp.status in (401, 403):
        raise SourceError(
            f"Analytics Engine refused the API token (HTTP {resp.status}): it needs the "
            f"'Account Analytics Read' permission on account {account}"
        )
    if resp.status == 422:
        raise SourceError(
            f"Analytics Engine rejected the query (HTTP 422): {_error_text(resp, redactor)}\nSQL: {sql}"
        )
    if resp.status >= 400:
        raise SourceError(
            f"Analytics Engine answered HTTP {resp.status}: {_error_text(resp, redactor)}"
        )
    if not resp.complete:
        raise SourceError(
            f"Analytics Engine sent more than {len(resp.body):,} bytes; "
            "nothing was written (pull a shorter [analytics_engine] window)"
        )
    try:
        body = json.loads(resp.body)
        meta = tuple((m["name"], m.get("type", "")) for m in body["meta"])
        data = tuple(body["data"])
        if not all(isinstance(r, dict) for r in data):
            raise TypeError("data rows are not objects")
        return QueryResult(meta, data, int(body.get("rows", len(data))))
    except (ValueError, KeyError, TypeError) as exc:
        raise SourceError(
            f"Analytics Engine sent a malformed answer ({type(exc).__name__}: "
            f"{redactor.clip(str(exc), 200)}); nothing was written"
        ) from None


def _error_text(resp: outbound.Answer, redactor: Redactor) -> str:
    """The API's own words, without any secret it echoed, on one line."""
    return redactor.clip(resp.body) or "(no body)"


# -- pulling rollups -------------------------------------------------------------

_TYPES = {
    "minute": (
        ("minute", "time"),
        ("tier", "text"),
        ("endpoint", "text"),
        ("experiment", "text"),
        ("cohort", "text"),
        ("requests", "num"),
        ("errors", "num"),
        ("bytes", "num"),
        ("latency_sum", "num"),
        ("latency_min", "num"),
        ("latency_max", "num"),
        ("events", "int"),
    ),
    "latency": (
        ("minute", "time"),
        ("tier", "text"),
        ("endpoint", "text"),
        ("experiment", "text"),
        ("cohort", "text"),
        ("bucket", "int32"),
        ("weight", "num"),
    ),
    "gauges": (("timestamp", "time"), ("name", "text"), ("value", "num")),
    "keys": (
        ("key", "text"),
        ("endpoint", "text"),
        ("experiment", "text"),
        ("cohort", "text"),
        ("t", "time"),
        ("edge", "num"),
        ("kv", "num"),
        ("r2", "num"),
        ("api", "num"),
        ("errors", "num"),
        ("fill_errors", "num"),
        ("first_seen", "time"),
        ("last_seen", "time"),
    ),
    "key_sizes": (
        ("heavy", "int"),
        ("part", "num"),
        ("rows", "int"),
        ("n", "num"),
        ("keys", "int"),
    ),
    "sample_sizes": (("key_hash", "num"), ("n", "int")),
    "samples": (
        ("timestamp", "time"),
        ("endpoint", "text"),
        ("key", "text"),
        ("key_hash", "num"),
        ("tier", "text"),
        ("status", "text"),
        ("weight", "num"),
    ),
}


_TYPES["sampled_keys"] = (("key_hash", "num"), *_TYPES["keys"])


def pull_rollups(
    client: Client,
    dataset: str,
    mapping: ColumnMapping,
    window: Window,
    sampling: rollups.Sampling,
    budget: ae_keys.KeyBudget | None = None,
) -> Rollups:
    """The rollups of one window, aggregated by Analytics Engine, and the
    SHARDS samples when the dataset has the Worker's key hash
    (`[columns] key_hash`); without it, `samples` is None. With the hash
    and a `budget`, the per-key rows are budgeted (`cachemon.sources.ae_keys`:
    heavy keys exact, the rest from a key sample, `key_estimate` says how);
    otherwise every per-key row is pulled exactly."""
    minute = _table(client.query(ae_sql.minute_rollups(dataset, mapping, window)), "minute")
    latency = _table(client.query(ae_sql.latency_histogram(dataset, mapping, window)), "latency")
    points = _table(client.query(ae_sql.gauge_points(dataset, mapping, window)), "gauges")
    for kind, table in (("minute", minute), ("latency", latency), ("gauges", points)):
        _check_answer(kind, table, window)
    samples = rate = plan = None
    if mapping.key_hash and budget is not None:
        total = float(pc.sum(minute["requests"]).as_py() or 0.0)
        plan = _plan_keys(client, dataset, mapping, window, budget, total)
        if plan.rate is not None:
            # The TTL samples' keys must have per-key rows in the same write:
            # their rate never exceeds the key sample's (one SHARDS sample).
            sampling = dataclasses.replace(sampling, rate=min(sampling.rate, plan.rate))
    if mapping.key_hash:
        samples, rate = _pull_samples(client, dataset, mapping, window, sampling)
    if plan is not None and plan.rate is not None and samples is not None:
        keys, estimate = _pull_sampled_keys(client, dataset, mapping, window, plan)
    else:
        keys, estimate = _pull_exact_keys(client, dataset, mapping, window), None
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        # Named as events, the points go through the same gauge SQL as events do.
        con.register("batch", points.rename_columns(["timestamp", "kind", "latency_ms"]))
        gauges = con.sql(rollups.GAUGE_SQL).to_arrow_table()
    events = int(sum(minute["events"].to_pylist())) + points.num_rows
    return Rollups(
        minute=minute,
        latency=latency,
        gauges=gauges,
        keys=keys,
        events=events,
        samples=samples,
        sample_rate=rate,
        key_estimate=estimate,
    )


def _pull_exact_keys(client: Client, dataset: str, m: ColumnMapping, window: Window) -> pa.Table:
    """Every key's rows of the window, exactly (the size follows traffic)."""
    keys = _table(client.query(ae_sql.key_counts(dataset, m, window)), "keys")
    _check_answer("keys", keys, window)
    return keys


def _plan_keys(
    client: Client,
    dataset: str,
    m: ColumnMapping,
    window: Window,
    budget: ae_keys.KeyBudget,
    total: float,
) -> ae_keys.Plan:
    """How the window's per-key rows fit `budget`, from their sizes (heavy
    keys and hash buckets); rate None: every key exactly (under the budget,
    or some rows have no key hash). Refuses a column that is no key hash."""
    threshold = budget.threshold(total)
    sizes = _table(client.query(ae_sql.key_sizes(dataset, m, window, threshold)), "key_sizes")
    _check_answer("key_sizes", sizes, window)
    plan = ae_keys.plan(sizes, budget.allowed(window), threshold)
    if plan.problem:
        raise SourceError(
            f"[columns] key_hash = {m.key_hash!r} {plan.problem}; nothing was written"
        )
    if plan.unhashed:
        log.warning(
            "Analytics Engine %s: request rows without a key hash in %s; per-key rows "
            "pulled exactly there",
            window,
            m.key_hash,
        )
    return plan


def _pull_sampled_keys(
    client: Client, dataset: str, m: ColumnMapping, window: Window, plan: ae_keys.Plan
) -> tuple[pa.Table, rollups.KeyEstimate]:
    """The heavy keys' rows and those of the keys under the plan's rate,
    each key once, the sampled ones weighted by 1/rate."""
    sql = ae_sql.sampled_key_counts(dataset, m, window, plan.rate, plan.heavy)
    rows = _table(client.query(sql), "sampled_keys")
    _check_answer("sampled_keys", rows, window)
    _check_key_hashes(rows["key"], rows["key_hash"], m)
    return ae_keys.weighted(rows, plan)


def _pull_samples(
    client: Client, dataset: str, m: ColumnMapping, window: Window, sampling: rollups.Sampling
) -> tuple[pa.Table | None, float | None]:
    """The window's sampled rows: first the rows per key hash, to choose the
    rate within the budget (fixed-size SHARDS), then only the rows under it.
    (None, None) when some request rows have no key hash (0)."""
    sizes = _table(
        client.query(ae_sql.sample_sizes(dataset, m, window, sampling.rate)), "sample_sizes"
    )
    _check_answer("sample_sizes", sizes, window)
    hashes, rows = sizes["key_hash"].to_numpy(), sizes["n"].to_numpy()
    if (hashes == ae_sql.NOT_A_HASH).any():
        raise SourceError(
            f"[columns] key_hash = {m.key_hash!r} holds values outside [0, 1) in request rows: "
            "not the Worker's key hash (see docs/sources.md); nothing was written"
        )
    if (hashes == 0.0).any():
        # An unwritten double reads 0 (no key's SHA-256 hash is 0): rows from
        # before the Worker wrote the hash. The window has no whole sample,
        # and the store records that it has no key hash.
        log.warning(
            "Analytics Engine %s: request rows without a key hash in %s; no samples there",
            window,
            m.key_hash,
        )
        return None, None
    under = hashes < 1
    allowed = sampling.budget * rollups.window_minutes(window) / rollups.DAY_MINUTES
    rate = rollups.budget_rate(hashes[under], rows[under], sampling.rate, allowed)
    rows = _table(client.query(ae_sql.sample_rows(dataset, m, window, rate)), "samples")
    _check_answer("samples", rows, window)
    _check_samples(rows, m)
    return (
        pa.table(
            {
                "timestamp": rows["timestamp"],
                "endpoint": rows["endpoint"],
                "key": rows["key"],
                "key_hash": rows["key_hash"],
                "tier": rows["tier"],
                "error": pc.equal(rows["status"], "error"),
                "weight": rows["weight"],
            }
        ).cast(rollups.SAMPLE_SCHEMA),
        rate,
    )


def _check_samples(rows: pa.Table, m: ColumnMapping) -> None:
    """Refuse sample rows the what-if could not trust: a tier that is not
    one of TIERS, or a key hash that is not cachemon's hash of the key (the
    Worker writes no hash, or another one, into that column)."""
    bad_tier = pc.invert(pc.is_in(rows["tier"], pa.array(TIERS)))
    if pc.any(bad_tier).as_py():
        first = rows["tier"].filter(bad_tier)[0].as_py()
        raise SourceError(
            f"Analytics Engine sample rows have tier {first[:40]!r}, not one of "
            f"{', '.join(TIERS)}; nothing was written"
        )
    _check_key_hashes(rows["key"], rows["key_hash"], m)


def _check_key_hashes(key: pa.ChunkedArray, key_hash: pa.ChunkedArray, m: ColumnMapping) -> None:
    """Refuse rows whose key hash is not cachemon's hash of their key (a
    sample of keys chosen by another hash is no sample cachemon can weigh)."""
    pairs = pa.table({"key": key, "key_hash": key_hash}).group_by(["key", "key_hash"]).aggregate([])
    keys = pairs["key"].to_pylist()
    want = keyhash.key_hashes(keys)
    got = pairs["key_hash"].to_numpy()
    wrong = np.flatnonzero(np.abs(want - got) > HASH_TOLERANCE)
    if len(wrong):
        i = int(wrong[0])
        raise SourceError(
            f"[columns] key_hash = {m.key_hash!r} does not hold cachemon's key hash: key "
            f"{keys[i][:60]!r} has {got[i]!r} there, not {want[i]!r} (the Worker must write "
            "keyhash's SHA-256 value, see docs/sources.md); nothing was written"
        )


# The Worker's hash is a 48-bit integer over 2**48: exact in a double and in
# JSON; the tolerance only absorbs a decimal rendering that rounds.
HASH_TOLERANCE = 2.0**-46


# Numeric columns that may be negative: a latency bucket below 1 ms is.
_SIGNED = {"bucket", "part"}


def _check_answer(kind: str, table: pa.Table, window: Window) -> None:
    """Refuse an answer that would poison the store: a number that is not
    finite (or a negative count), or a time outside the pulled window (a
    row from the future would make old data look fresh). Nothing is
    written; the pull fails and is retried like any other bad answer."""
    lo, hi = (pa.scalar(t, pa.timestamp("us", tz="UTC")) for t in (window.start, window.end))
    for name, typ in _TYPES[kind]:
        col = table[name]
        if typ == "time":
            bad = (
                pc.or_(pc.less(col, lo), pc.greater_equal(col, hi))
                if name != "last_seen"
                else pc.greater(col, hi)
            )
            why = f"a time outside the pulled window [{window.start:%Y-%m-%dT%H:%MZ}, {window.end:%Y-%m-%dT%H:%MZ})"
        elif typ != "text":
            values = col.cast(pa.float64())
            bad = pc.invert(pc.is_finite(values))
            if name not in _SIGNED:
                bad = pc.or_(bad, pc.less(values, 0))
            why = "a value that is not a finite, non-negative number"
        else:
            continue
        hits = pc.sum(pc.cast(bad, pa.int64())).as_py() or 0
        if hits:
            first = col.filter(bad)[0].as_py()
            raise SourceError(
                f"Analytics Engine answer ({kind}) has {hits} row(s) with {why} in column {name!r} "
                f"(first: {str(first)[:40]}); nothing was written"
            )


def _table(result: QueryResult, kind: str) -> pa.Table:
    """JSON rows -> a typed table; numbers may arrive as strings (64-bit
    integers do, in ClickHouse's JSON)."""
    cols = {}
    for name, typ in _TYPES[kind]:
        try:
            values = [row[name] for row in result.data]
            cols[name] = _column(values, typ)
        except (KeyError, ValueError, TypeError, pa.ArrowException) as exc:
            raise SourceError(
                f"Analytics Engine answer lacks or garbles column {name!r} ({exc}); nothing was written"
            ) from None
    return pa.table(cols)


def _column(values: list, typ: str) -> pa.Array:
    if typ == "text":
        return _text(values)
    if typ == "time":
        return _times(values)
    nums = _numbers(values)
    if typ == "int":
        return nums.cast(pa.int64())
    if typ == "int32":
        return nums.cast(pa.int32())
    return nums


def _text(values: list) -> pa.Array:
    try:
        arr = pa.array(values, pa.string())
    except (pa.ArrowException, TypeError):  # not all strings: say them as text
        arr = pa.array([None if v is None else str(v) for v in values], pa.string())
    return arr.fill_null("")


# ClickHouse's JSON writes DateTime as 'YYYY-MM-DD hh:mm:ss' (UTC here); Arrow
# parses that in C++. Anything else goes through pandas' ISO 8601 parser.
_CH_TIME = "%Y-%m-%d %H:%M:%S"


def _times(values: list) -> pa.Array:
    try:
        parsed = pc.strptime(pa.array(values, pa.string()), format=_CH_TIME, unit="us")
    except (pa.ArrowException, TypeError):
        parsed = pa.array([_iso_time(v) for v in values], pa.timestamp("us"))
    if parsed.null_count:
        raise ValueError("missing timestamp")
    return parsed.cast(pa.timestamp("us", tz="UTC"))


def _iso_time(value) -> datetime | None:
    """An ISO 8601 time as naive UTC; ValueError naming the value otherwise."""
    import pandas as pd  # here, not at the top: the CLI and the runner start without pandas

    if value is None:
        return None
    try:
        if not isinstance(value, str):
            raise TypeError
        t = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise ValueError(f"{str(value)[:40]!r} is not a time") from None
    return (t.tz_convert("UTC").tz_localize(None) if t.tzinfo else t).to_pydatetime()


def _numbers(values: list) -> pa.Array:
    """Numbers, or numbers quoted as strings (64-bit integers are)."""
    try:
        arr = pa.array(values)
    except pa.ArrowException:  # a mix of numbers and strings
        arr = pa.array([None if v is None else str(v) for v in values], pa.string())
    if pa.types.is_null(arr.type):
        arr = arr.cast(pa.string())
    if not (
        pa.types.is_string(arr.type)
        or pa.types.is_integer(arr.type)
        or pa.types.is_floating(arr.type)
    ):
        raise TypeError(f"not numbers ({arr.type})")
    return arr.cast(pa.float64())
