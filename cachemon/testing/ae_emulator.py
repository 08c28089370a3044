"""A loopback emulator of the Analytics Engine SQL API.

A real HTTP server on 127.0.0.1 speaking `POST /client/v4/accounts/{id}/
analytics_engine/sql`: it checks the bearer token, holds events in DuckDB
under the Analytics Engine column names, translates the dialect the client
uses (toStartOfInterval, toDateTime, count(), log, FORMAT JSON) to DuckDB,
rejects what Analytics Engine rejects (CASE, JOIN, PERCENTILE_CONT: 422),
answers `{"meta", "data", "rows"}` with 64-bit integers as strings as
ClickHouse does, and injects faults on demand.

    python -m cachemon.testing.ae_emulator --port 8788 --days 1   # simulator data
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from cachemon import keyhash
from cachemon.clock import HOUR, Window, floor_to, utcnow
from cachemon.events import EventFrame
from cachemon.settings import SimulatorConfig
from cachemon.sources.simulator import Simulator
from cachemon.testing.loopback import LoopbackServer

AE_COLUMNS = """
    timestamp TIMESTAMP, index1 VARCHAR, blob1 VARCHAR, blob2 VARCHAR, blob3 VARCHAR, blob4 VARCHAR,
    blob5 VARCHAR, blob6 VARCHAR, double1 DOUBLE, double2 DOUBLE, double3 DOUBLE,
    _sample_interval DOUBLE
"""
# double3: the key hash the Worker writes for SHARDS sampling (docs/sources.md),
# 0 (an unwritten double) in gauge rows and when the Worker writes none.
LOAD = """
INSERT INTO {dataset}
SELECT timezone('UTC', timestamp), tier, b.key, endpoint, experiment, cohort, status, kind,
       latency_ms, bytes, if(kind = 'request', coalesce(h.key_hash, 0), 0), sample_interval
FROM batch b LEFT JOIN key_hashes h ON h.key = b.key
"""
_PATH = re.compile(r"^/client/v4/accounts/([^/]+)/analytics_engine/sql$")
_UNSUPPORTED = re.compile(r"\b(CASE|JOIN|PERCENTILE_CONT|UNION)\b", re.IGNORECASE)
_REWRITES = (
    (
        re.compile(r"toStartOfInterval\(timestamp, INTERVAL '(\d+)' (MINUTE|HOUR|DAY)\)"),
        r"time_bucket(INTERVAL '\1 \2', timestamp)",
    ),
    (re.compile(r"toDateTime\('([^']*)'\)"), r"TIMESTAMP '\1'"),
    (re.compile(r"\bcount\(\)"), "count(*)"),
    (re.compile(r"\blog\("), "ln("),
)


@dataclass
class Fault:
    """One injected answer: a status (with body and Retry-After), a delay
    before answering, or a truncated body."""

    status: int = 200
    body: str | None = None
    retry_after: float | None = None
    delay: float = 0.0
    truncate: bool = False


class Emulator:
    def __init__(
        self,
        token: str,
        account: str = "test-account",
        dataset: str = "CACHE_ANALYTICS",
        host: str = "127.0.0.1",
        port: int = 0,
        key_hash: bool = True,
    ):
        self.token, self.account, self.dataset = token, account, dataset
        self.key_hash = key_hash  # whether the emulated Worker writes the key hash
        self.db = duckdb.connect()
        self.db.execute("SET TimeZone = 'UTC'")
        self.db.execute(f"CREATE TABLE {dataset} ({AE_COLUMNS})")
        self.lock = threading.Lock()
        self.faults: collections.deque[Fault] = collections.deque()
        self.requests: list[str] = []  # SQL received, in order
        self.rows_sent = self.bytes_sent = 0
        self.answered: list[
            tuple[str, int, int]
        ] = []  # (SQL, rows, bytes) of each successful answer
        self.server = LoopbackServer((host, port), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/client/v4"

    def start(self) -> Emulator:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def add(self, frame: EventFrame) -> None:
        """Store events (as the Worker's writeDataPoint would)."""
        keys = pa.array(pc.unique(frame.table["key"].cast(pa.string())).to_pylist(), pa.string())
        hashes = keyhash.key_hashes(keys.to_pylist()) if self.key_hash else []
        table = pa.table(
            {"key": keys if self.key_hash else keys[:0], "key_hash": pa.array(hashes, pa.float64())}
        )
        with self.lock:
            self.db.register("batch", frame.table)
            self.db.register("key_hashes", table)
            self.db.execute(LOAD.format(dataset=self.dataset))
            self.db.unregister("key_hashes")
            self.db.unregister("batch")

    def run(self, sql: str) -> tuple[str, int]:
        """Execute one query as Analytics Engine would: the JSON body and its
        row count. Raises ValueError with the API's error text for what it
        would reject."""
        text = sql.strip()
        if not re.search(r"FORMAT JSON\s*$", text):
            raise ValueError("only FORMAT JSON is emulated")
        if not re.match(r"SELECT\b", text, re.IGNORECASE) or ";" in text:
            raise ValueError("only one SELECT statement is accepted")
        if _UNSUPPORTED.search(text):
            raise ValueError(f"unsupported SQL: {_UNSUPPORTED.search(text).group(0)}")
        text = re.sub(r"FORMAT JSON\s*$", "", text)
        for pattern, repl in _REWRITES:
            text = pattern.sub(repl, text)
        tables = set(re.findall(r"\bFROM\s+([A-Za-z_][A-Za-z0-9_]*)", text))
        if tables != {self.dataset}:
            raise ValueError(f"unknown table {sorted(tables - {self.dataset})}")
        with self.lock:
            rel = self.db.sql(text)
            names, types = rel.columns, [str(t) for t in rel.types]
            # Serialised by DuckDB, not cell by cell in Python: a day's pull
            # is millions of cells.
            fields = ", ".join(
                f"{_quote(n)} := {_json_expr(_quote(n), t)}" for n, t in zip(names, types)
            )
            rows = [r[0] for r in rel.project(f"to_json(struct_pack({fields}))").fetchall()]
        meta = json.dumps([{"name": n, "type": _ae_type(t)} for n, t in zip(names, types)])
        return f'{{"meta": {meta}, "data": [{", ".join(rows)}], "rows": {len(rows)}}}', len(rows)

    def _handler(self):
        emu = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                sql = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode(
                    "utf-8", "replace"
                )
                emu.requests.append(sql)
                fault = emu.faults.popleft() if emu.faults else None
                if fault and fault.delay:
                    time.sleep(fault.delay)
                m = _PATH.match(self.path)
                if not m or m.group(1) != emu.account:
                    return self._send(404, {"errors": [{"message": "no such route"}]})
                if self.headers.get("Authorization") != f"Bearer {emu.token}":
                    return self._send(
                        401, {"errors": [{"code": 10000, "message": "Authentication error"}]}
                    )
                if fault and fault.status != 200:
                    return self._send(
                        fault.status,
                        fault.body or {"errors": [{"message": "injected"}]},
                        fault.retry_after,
                    )
                try:
                    body, rows = emu.run(sql)
                except (ValueError, duckdb.Error) as exc:
                    return self._send(422, f"Invalid query: {str(exc).splitlines()[0]}")
                emu.rows_sent += rows
                emu.bytes_sent += len(body)
                emu.answered.append((sql, rows, len(body)))
                if fault and fault.truncate:
                    body = body[: len(body) // 2]
                self._send(200, body)

            def _send(self, status, body, retry_after=None):
                raw = (body if isinstance(body, str) else json.dumps(body)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                if retry_after is not None:
                    self.send_header("Retry-After", str(retry_after))
                self.end_headers()
                self.wfile.write(raw)

        return Handler


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _json_expr(col: str, typ: str) -> str:
    """How ClickHouse's JSON writes a value of this type."""
    if typ.startswith("TIMESTAMP"):
        return f"strftime({col}, '%Y-%m-%d %H:%M:%S')"
    if typ in ("BIGINT", "HUGEINT", "UBIGINT"):
        return f"CAST({col} AS VARCHAR)"  # ClickHouse quotes 64-bit integers in JSON
    return col


def _ae_type(t: str) -> str:
    return {
        "TIMESTAMP": "DateTime",
        "VARCHAR": "String",
        "DOUBLE": "Float64",
        "BIGINT": "UInt64",
        "HUGEINT": "UInt64",
        "INTEGER": "Int32",
    }.get(t, t)


def main(argv=None) -> int:
    from datetime import timedelta

    ap = argparse.ArgumentParser(prog="python -m cachemon.testing.ae_emulator")
    ap.add_argument("--port", type=int, default=8788)
    ap.add_argument("--token", default="local-test-token")
    ap.add_argument("--account", default="test-account")
    ap.add_argument("--days", type=float, default=1.0, help="simulated days to hold, ending now")
    args = ap.parse_args(argv)
    emu = Emulator(args.token, args.account, port=args.port)
    sim, end = Simulator(SimulatorConfig()), floor_to(utcnow(), HOUR)
    for w in Window(end - timedelta(days=args.days), end).split(timedelta(hours=24)):
        emu.add(sim.generate(w))
    print(f"Analytics Engine emulator on {emu.base} (account {args.account})", flush=True)
    emu.server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
