"""Issue #22 benchmarks: demo time and memory, start-up, determinism, scale curve.

    .venv/bin/python -m bench.bench_perf [--before DIR] [--parts demo,startup,determinism]
        [--scale] [--scale-days 1,7,30,90] [--scale-days-10x 1,7,30,90] [--repeat 7]

Measures this checkout ("after") and, with `--before DIR`, a second checkout
(the code before the issue) in the SAME run, alternating between them so both
see the same load, and prints markdown tables: before | after | ratio | target.
Everything of a checkout runs in child processes with its directory as
PYTHONPATH and working directory, so this script never imports `cachemon`
itself and either checkout's code may differ from this one's.

1. `python -m cachemon demo --days 7 --until <UNTIL> --quiet`: wall time and
   the peak RSS of that one child (`os.wait4`).
2. Start-up: median wall time of `--help`, `metrics` (on the 7-day store of 1.)
   and `python -m jobs --list`, with PYTHONDONTWRITEBYTECODE as the environment
   has it and with a warm bytecode cache (a private PYTHONPYCACHEPREFIX, so no
   checkout is written to); and the modules `import cachemon.cli.main` loads.
3. Determinism: a second demo with the same seed and --until; every table of
   both stores compared as row multisets (EXCEPT ALL both ways), leaving out
   only the wall-clock columns in WALL_CLOCK_COLUMNS (named in the output).
4. `--scale`: demo wall time, store size and `metrics --period 7d` latency at
   each number of days, at 1x and 10x traffic (a config file with ten times
   the default `[simulator] requests_per_hour`).

Results are recorded by hand in bench/README.md; the machine's load average
is printed beside every figure.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "perf"
# A fixed end of the simulated span, so every run simulates the same events.
UNTIL = "2026-11-20T12:00:00+00:00"
# `metrics --period 7d` as of a ragged minute, so minutes, hours and days all count.
METRICS_AT = "2026-11-20T11:37:00+00:00"
# The simulator's default volume (settings.SimulatorConfig.requests_per_hour).
DEFAULT_REQUESTS_PER_HOUR = 125_000
GIB = 2**30
MIB = 2**20

# Issue #22's targets.
DEMO_WALL_TARGET_S = 12.0
DEMO_RSS_TARGET = 1 * GIB
STARTUP_TARGET_S = 0.25

# Columns that would hold the real time of a run by design, so two identical
# demos differ there. None today: `demo --until` passes --until as the demo's
# `now` (run log, schema_version.applied_at, watermarks.updated_at,
# cost_reports.created_at all say --until), so every column must be equal.
WALL_CLOCK_COLUMNS: dict[str, tuple[str, ...]] = {}

STARTUP_COMMANDS: dict[str, tuple[str, ...]] = {
    "python -m cachemon --help": ("-m", "cachemon", "--help"),
    "python -m cachemon metrics": ("-m", "cachemon", "metrics"),
    "python -m jobs --list": ("-m", "jobs", "--list"),
}

# The modules `import cachemon.cli.main` adds to a bare interpreter's.
IMPORT_PROBE = (
    "import sys; base = set(sys.modules); import cachemon.cli.main; "
    "print('\\n'.join(sorted(set(sys.modules) - base)))"
)
HEAVY_MODULES = ("pandas", "scipy", "plotly", "streamlit", "pyarrow", "numpy", "duckdb")

# `metrics --period 7d` in-process: one reader, one warm-up call, then the median.
METRICS_PROBE = """
import statistics, sys, time
from datetime import datetime
from cachemon import config
from cachemon.clock import Period
from cachemon.store import db as store_db
from cachemon.usecases import metrics_report

cfg = config.load()
at = datetime.fromisoformat(sys.argv[1])
with store_db.reader(cfg.store.path) as con:
    def once():
        return metrics_report.build(con, cfg, Period.parse("7d"), at, latest=False)
    once()
    times = []
    for _ in range(int(sys.argv[2])):
        t = time.perf_counter()
        once()
        times.append(time.perf_counter() - t)
print(statistics.median(times))
"""

# Runs argv[2:], then writes its wall seconds, peak RSS (KiB) and CPU seconds to argv[1];
# exits with its exit code. Its only child is the measured one.
MEASURE = """
import resource, subprocess, sys, time
t = time.perf_counter()
code = subprocess.run(sys.argv[2:]).returncode
wall = time.perf_counter() - t
with open(sys.argv[1], "w") as f:
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    f.write(f"{wall} {u.ru_maxrss} {u.ru_utime + u.ru_stime}")
sys.exit(code)
"""

EVENTS_LINE = re.compile(r"simulated ([\d,]+) events")

ATTACH = "ATTACH '{path}' AS {alias} (READ_ONLY)"
TABLES = """
SELECT table_name FROM duckdb_tables()
WHERE database_name = $db AND schema_name = 'main' ORDER BY table_name
"""
COLUMNS = """
SELECT column_name FROM duckdb_columns()
WHERE database_name = $db AND schema_name = 'main' AND table_name = $t ORDER BY column_index
"""
ONLY_IN = "SELECT count(*) FROM ({left} EXCEPT ALL {right})"
PLAIN_ROWS = "SELECT {cols} FROM {x}.main.{t}"
# A per-key table's rows with the store's own key_id replaced by the key's text:
# ids are numbers each store assigns itself, the key is what the row is about.
KEYED_ROWS = (
    "SELECT {cols}, k.key AS key_id FROM {x}.main.{t} AS r"
    " LEFT JOIN {x}.main.cache_keys AS k ON r.key_id = k.key_id"
)
KEYS_TABLE = "cache_keys"
KEY_ID = "key_id"
ROW_COUNT = "SELECT count(*) FROM {x}.main.{t}"


@dataclass(frozen=True)
class Checkout:
    """A source tree to measure: its label in the tables and its root directory."""

    label: str
    root: Path


@dataclass(frozen=True)
class DemoRun:
    """One demo: wall seconds, peak RSS of its process (bytes), events, store file,
    the load average, CPU seconds (user + system)."""

    wall: float
    rss: int
    events: int | None
    db: Path
    load: float
    cpu: float = 0.0

    @property
    def size(self) -> int:
        """The store file's size in bytes (the .duckdb file, not its snapshots)."""
        return self.db.stat().st_size


@dataclass(frozen=True)
class TableDiff:
    """One table of two stores: row counts and the rows only in one of them."""

    table: str
    rows_a: int | None
    rows_b: int | None
    only_a: int | None
    only_b: int | None
    excluded: tuple[str, ...] = ()
    how: str = ""

    @property
    def differing(self) -> int | None:
        """Rows in one store and not the other (None: the table is missing in one)."""
        return None if self.only_a is None else self.only_a + self.only_b


# ---------------------------------------------------------------- formatting


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; every cell printed with str()."""
    if any(len(r) != len(headers) for r in rows):
        raise ValueError(f"every row needs {len(headers)} cells")
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def ratio(before: float | None, after: float | None) -> str:
    """before / after as '2.50×' (above 1: after is faster or smaller); '' if unknown."""
    if before is None or after is None:
        return ""
    if after == 0:
        return "same" if before == 0 else "∞"
    return f"{before / after:.2f}×"


def seconds(s: float | None) -> str:
    """Seconds for a table: ms below one second."""
    if s is None:
        return ""
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.1f} s"


def parse_days(text: str) -> list[float]:
    """'1,7,30' -> [1.0, 7.0, 30.0]; each a positive number of days."""
    try:
        days = [float(d) for d in text.split(",") if d.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"days must be numbers like 1,7,30, got {text!r}"
        ) from None
    if not days or any(not d > 0 for d in days):
        raise argparse.ArgumentTypeError(f"days must be positive numbers like 1,7,30, got {text!r}")
    return days


def events_of(stdout: str) -> int | None:
    """The event count the demo printed, or None if it printed none."""
    m = EVENTS_LINE.search(stdout)
    return int(m.group(1).replace(",", "")) if m else None


# ---------------------------------------------------------------- the store comparison


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_path(path: Path) -> str:
    return str(path).replace("'", "''")


def _only_in(
    con: duckdb.DuckDBPyConnection, table: str, select: str, cols: list[str]
) -> tuple[int, int]:
    """Rows of `table` in store a and not b, and in b and not a (as multisets)."""
    prefix = "r." if select is KEYED_ROWS else ""
    text = ", ".join(prefix + _quote_ident(c) for c in cols)
    a, b = (select.format(cols=text, x=x, t=_quote_ident(table)) for x in ("a", "b"))
    only_a = con.execute(ONLY_IN.format(left=a, right=b)).fetchone()[0]
    only_b = con.execute(ONLY_IN.format(left=b, right=a)).fetchone()[0]
    return only_a, only_b


def compare_stores(
    a: Path, b: Path, exclude: dict[str, tuple[str, ...]] | None = None, resolve_keys: bool = True
) -> list[TableDiff]:
    """Every table of stores `a` and `b` (opened read-only) compared as row
    multisets, leaving out the `exclude` columns of each table. A table in
    only one store has None counts for the other.

    With `resolve_keys` (and a `cache_keys` table in both), a table's
    `key_id` is compared as the key it names, and `cache_keys` twice: by its
    keys, and as stored (which shows whether the ids were assigned alike)."""
    exclude = exclude or {}
    con = duckdb.connect()
    try:
        con.execute("SET enable_progress_bar = false")
        con.execute(ATTACH.format(path=_quote_path(a), alias="a"))
        con.execute(ATTACH.format(path=_quote_path(b), alias="b"))
        tables_a = [r[0] for r in con.execute(TABLES, {"db": "a"}).fetchall()]
        tables_b = [r[0] for r in con.execute(TABLES, {"db": "b"}).fetchall()]
        out = []
        for t in sorted(set(tables_a) | set(tables_b)):
            q = _quote_ident(t)
            rows_a = (
                con.execute(ROW_COUNT.format(x="a", t=q)).fetchone()[0] if t in tables_a else None
            )
            rows_b = (
                con.execute(ROW_COUNT.format(x="b", t=q)).fetchone()[0] if t in tables_b else None
            )
            if rows_a is None or rows_b is None:
                out.append(TableDiff(t, rows_a, rows_b, None, None))
                continue
            dropped = exclude.get(t, ())
            cols_a = [r[0] for r in con.execute(COLUMNS, {"db": "a", "t": t}).fetchall()]
            cols_b = [r[0] for r in con.execute(COLUMNS, {"db": "b", "t": t}).fetchall()]
            if cols_a != cols_b:
                raise ValueError(f"table {t}: columns differ: {cols_a} vs {cols_b}")
            kept = [c for c in cols_a if c not in dropped]
            present = tuple(c for c in dropped if c in cols_a)
            keyed = (
                resolve_keys
                and KEY_ID in kept
                and KEYS_TABLE in tables_a
                and KEYS_TABLE in tables_b
            )

            if not keyed:
                out.append(
                    TableDiff(t, rows_a, rows_b, *_only_in(con, t, PLAIN_ROWS, kept), present)
                )
                continue
            others = [c for c in kept if c != KEY_ID]
            if t == KEYS_TABLE:
                raw = _only_in(con, t, PLAIN_ROWS, kept)
                out.append(TableDiff(t, rows_a, rows_b, *raw, present, "key_id as stored"))
                out.append(
                    TableDiff(
                        t,
                        rows_a,
                        rows_b,
                        *_only_in(con, t, PLAIN_ROWS, others),
                        present,
                        "keys only",
                    )
                )
            else:
                diff = TableDiff(
                    t,
                    rows_a,
                    rows_b,
                    *_only_in(con, t, KEYED_ROWS, others),
                    present,
                    "key_id → key",
                )
                out.append(diff)
        return out
    finally:
        con.close()


DIFF_HEADERS = [
    "table",
    "rows, run 1",
    "rows, run 2",
    "differing rows",
    "columns left out",
    "compared",
]


def diff_rows(diffs: Sequence[TableDiff]) -> list[list[object]]:
    """Table rows for a store comparison: every table, differing ones first."""

    def cell(n: int | None) -> str:
        return "missing" if n is None else f"{n:,}"

    ordered = sorted(diffs, key=lambda d: (d.differing == 0, d.table, d.how))
    return [
        [
            d.table,
            cell(d.rows_a),
            cell(d.rows_b),
            "table missing" if d.differing is None else f"{d.differing:,}",
            ", ".join(d.excluded),
            d.how,
        ]
        for d in ordered
    ]


# ---------------------------------------------------------------- child processes


def child_env(
    co: Checkout, db: Path | None = None, config: Path | None = None, pycache: Path | None = None
) -> dict[str, str]:
    """The environment of a child running `co`'s code: its root on PYTHONPATH,
    the store and config given (never one inherited from ours). With
    `pycache`, bytecode is written and read there (a warm cache that leaves the
    checkout untouched); without, PYTHONDONTWRITEBYTECODE stays as it is."""
    env = dict(os.environ, PYTHONPATH=str(co.root))
    for name in ("CACHEMON_DB", "CACHEMON_CONFIG", "PYTHONPYCACHEPREFIX"):
        env.pop(name, None)
    if db is not None:
        env["CACHEMON_DB"] = str(db)
    if config is not None:
        env["CACHEMON_CONFIG"] = str(config)
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


@dataclass(frozen=True)
class Measured:
    """A finished child: wall and CPU (user + system) seconds, peak RSS bytes, output."""

    wall: float
    rss: int
    cpu: float
    stdout: str
    stderr: str


def run_measured(args: Sequence[str], cwd: Path, env: dict[str, str]) -> Measured:
    """Run `python args...` and measure that one process.
    A failing child stops the benchmark with its stderr.

    The child is started by a small wrapper interpreter (MEASURE) that times it
    and reads its peak RSS: Linux counts the RSS of the process a child was
    forked from into the child's ru_maxrss, so forked from this process (or
    from pytest) a small child would report our size, not its own."""
    fd, name = tempfile.mkstemp(prefix="bench-perf-", suffix=".txt")
    os.close(fd)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", MEASURE, name, sys.executable, *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} in {cwd} exited {proc.returncode}:\n{proc.stderr}"
            )
        wall, maxrss, cpu = Path(name).read_text().split()
    finally:
        os.unlink(name)
    # ru_maxrss is in KiB on Linux.
    return Measured(float(wall), int(maxrss) * 1024, float(cpu), proc.stdout, proc.stderr)


def load1() -> float:
    """The 1-minute load average now."""
    return os.getloadavg()[0]


def demo(co: Checkout, db: Path, days: float, config: Path | None = None) -> DemoRun:
    """A demo of `days` ending at UNTIL into a fresh store `db`."""
    db.parent.mkdir(parents=True, exist_ok=True)
    for p in db.parent.glob(db.stem + ".*"):
        p.unlink()
    args = ["-m", "cachemon", "demo", "--days", f"{days:g}", "--until", UNTIL, "--quiet"]
    before = load1()
    # The demo prints its summary line on stderr.
    m = run_measured(args, co.root, child_env(co, db, config))
    return DemoRun(m.wall, m.rss, events_of(m.stderr), db, max(before, load1()), m.cpu)


def median_times(
    args: Sequence[str], co: Checkout, env: dict[str, str], repeat: int
) -> tuple[float, float]:
    """Median wall and median CPU seconds of `python args...` over `repeat` runs
    after one warm-up."""
    run_measured(args, co.root, env)
    runs = [run_measured(args, co.root, env) for _ in range(repeat)]
    return statistics.median(r.wall for r in runs), statistics.median(r.cpu for r in runs)


def imported_modules(co: Checkout) -> list[str]:
    """The modules `import cachemon.cli.main` loads in `co`'s code."""
    out = run_measured(["-c", IMPORT_PROBE], co.root, child_env(co)).stdout
    return out.split()


def metrics_latency(co: Checkout, db: Path, config: Path | None, repeat: int) -> float:
    """`metrics --period 7d` (metrics, health, costs) in-process: median seconds."""
    args = ["-c", METRICS_PROBE, METRICS_AT, str(repeat)]
    out = run_measured(args, co.root, child_env(co, db, config)).stdout
    return float(out.strip().splitlines()[-1])


# ---------------------------------------------------------------- the parts


class Bench:
    """The checkouts measured and the demos already run (shared between parts)."""

    def __init__(self, checkouts: list[Checkout], out: Path, repeat: int):
        self.checkouts = checkouts
        self.out = out
        self.repeat = repeat
        self.demos: dict[tuple[str, float, int], DemoRun] = {}

    def config(self, traffic: int) -> Path | None:
        """The config file for `traffic` times the default volume (None at 1x)."""
        if traffic == 1:
            return None
        path = self.out / f"traffic-{traffic}x.toml"
        path.write_text(f"[simulator]\nrequests_per_hour = {DEFAULT_REQUESTS_PER_HOUR * traffic}\n")
        return path

    def demo(self, co: Checkout, days: float, traffic: int = 1, copy: str = "") -> DemoRun:
        """The demo of `co` at `days` and `traffic`, run once (a `copy` runs again)."""
        key = (co.label + copy, days, traffic)
        if key not in self.demos:
            db = self.out / co.label / f"demo-{days:g}d-{traffic}x{copy}.duckdb"
            self.demos[key] = demo(co, db, days, self.config(traffic))
        return self.demos[key]

    def each(self, fn: Callable[[Checkout], object]) -> list:
        """`fn` of every checkout, before first (so a comparison shares the load)."""
        return [fn(co) for co in self.checkouts]

    def headers(self, first: str, target: bool = True) -> list[str]:
        labels = [co.label for co in self.checkouts]
        extra = ["ratio (before/after)"] if len(labels) == 2 else []
        return [first, *labels, *extra, *(["target"] if target else []), "load (1 min)"]

    def row(self, name: str, values: list, fmt: Callable, target: str | None = "") -> list:
        cells = [fmt(v) for v in values]
        extra = [ratio(*values)] if len(values) == 2 else []
        return [name, *cells, *extra, *([target] if target is not None else [])]


def part_demo(b: Bench) -> str:
    runs = b.each(lambda co: b.demo(co, 7))
    loads = " / ".join(f"{r.load:.1f}" for r in runs)
    rows = [
        b.row(
            "`demo --days 7` wall", [r.wall for r in runs], seconds, f"≤ {DEMO_WALL_TARGET_S:g} s"
        )
        + [loads],
        b.row("CPU (user + system)", [r.cpu for r in runs], seconds, "") + [loads],
        b.row("peak RSS", [r.rss / MIB for r in runs], lambda v: f"{v:,.0f} MiB", "≤ 1,024 MiB")
        + [loads],
        b.row("events", [r.events for r in runs], lambda v: f"{v:,}" if v else "not printed", "")
        + [loads],
        b.row("store size", [r.size / MIB for r in runs], lambda v: f"{v:,.0f} MiB", "") + [loads],
    ]
    return "## 1. Demo, 7 days\n\n" + markdown_table(b.headers("measure"), rows)


def part_startup(b: Bench) -> str:
    rows = []
    for mode in ("as is", "warm bytecode"):
        for name, args in STARTUP_COMMANDS.items():
            values, cpus, loads = [], [], []
            for co in b.checkouts:
                pycache = None
                if mode == "warm bytecode":
                    pycache = b.out / co.label / "pycache"
                    shutil.rmtree(pycache, ignore_errors=True)
                env = child_env(co, b.demo(co, 7).db, pycache=pycache)
                loads.append(load1())
                wall, cpu = median_times(args, co, env, b.repeat)
                values.append(wall)
                cpus.append(cpu)
            label = f"`{name}` ({mode}, median of {b.repeat})"
            load_cell = " / ".join(f"{x:.1f}" for x in loads)
            row = b.row(label, values, seconds, f"≤ {STARTUP_TARGET_S * 1000:.0f} ms")
            rows.append(row + [load_cell])
            rows.append(b.row("… its CPU (user + system)", cpus, seconds) + [load_cell])
    modules = b.each(imported_modules)
    loaded = b.row("modules loaded by `import cachemon.cli.main`", [len(m) for m in modules], str)
    rows.append(loaded + [""])
    for heavy in HEAVY_MODULES:
        has = [heavy in m for m in modules]
        rows.append(
            [f"… imports {heavy}", *("yes" if h else "no" for h in has)]
            + [""] * (len(rows[0]) - 1 - len(has))
        )
    env_bytecode = os.environ.get("PYTHONDONTWRITEBYTECODE", "unset")
    text = (
        "## 2. Start-up\n\n"
        f"'as is': PYTHONDONTWRITEBYTECODE={env_bytecode} as in this environment; 'warm bytecode':"
        " unset, a private PYTHONPYCACHEPREFIX warmed by one run.\n\n"
    )
    text += markdown_table(b.headers("command"), rows)
    for co, mods in zip(b.checkouts, modules):
        tops = sorted(
            {m.split(".")[0] for m in mods}
            - set(sys.stdlib_module_names)
            - {"cachemon", "cython_runtime", "__mp_main__"}
        )
        tops = [t for t in tops if not t.startswith("_")]  # extension internals
        text += f"\n\nThird-party packages loaded ({co.label}): {', '.join(tops) or 'none'}"
    return text


def part_determinism(b: Bench) -> str:
    text = "## 3. Determinism: two demos, same seed and --until\n\n"
    excluded = "; ".join(f"{t}.{', '.join(c)}" for t, c in WALL_CLOCK_COLUMNS.items()) or (
        "none (the demo stamps its run log and reports with --until, not the clock)"
    )
    text += f"Left out as wall-clock by design: {excluded}.\n"
    for co in b.checkouts:
        first, second = b.demo(co, 7), b.demo(co, 7, copy="-again")
        diffs = compare_stores(first.db, second.db, WALL_CLOCK_COLUMNS)
        bad = [d for d in diffs if d.differing != 0]
        text += f"\n### {co.label}: {len(bad)} of {len(diffs)} comparisons differ (target: 0)\n\n"
        text += markdown_table(DIFF_HEADERS, diff_rows(diffs))
    return text


SCALE_HEADERS = [
    "traffic",
    "days",
    "code",
    "demo wall",
    "demo CPU",
    "per day",
    "events",
    "per M events",
    "peak RSS",
    "store",
    "metrics 7d (median of 5)",
    "load (1 min)",
]


def scale_points(days_1x: list[float], days_10x: list[float]) -> list[tuple[float, int]]:
    """(days, traffic) in the order measured: cheapest first, so a run cut
    short still has the small points."""
    points = {(d, 1) for d in days_1x} | {(d, 10) for d in days_10x}
    return sorted(points, key=lambda p: (p[0] * p[1] ** 0.5, p[1]))


def scale_row(co: Checkout, days: float, traffic: int, r: DemoRun, latency: float) -> list[str]:
    """One scale-curve row (SCALE_HEADERS)."""
    per_m = f"{r.wall / (r.events / 1e6):.2f} s" if r.events else "no event count"
    return [
        f"{traffic}×",
        f"{days:g}",
        co.label,
        f"{r.wall:.1f} s",
        f"{r.cpu:.1f} s",
        f"{r.wall / days:.2f} s",
        f"{r.events:,}" if r.events else "not printed",
        per_m,
        f"{r.rss / MIB:,.0f} MiB",
        f"{r.size / MIB:,.0f} MiB",
        f"{latency * 1000:.1f} ms",
        f"{r.load:.1f}",
    ]


def part_scale(
    b: Bench, days_1x: list[float], days_10x: list[float], emit: Callable[[str], None]
) -> None:
    """The scale curve, each row emitted as soon as it is measured (a point
    can take many minutes)."""
    emit(
        "## 4. Scale curve\n\nmetrics 7d: `metrics_report.build` for `--period 7d --at "
        f"{METRICS_AT}` in-process (metrics, health, costs), one reader, after a warm-up call."
        " per day / per M events: demo wall divided by days / by millions of events.\n"
    )
    emit(markdown_table(SCALE_HEADERS, []))
    for days, traffic in scale_points(days_1x, days_10x):
        for co in b.checkouts:
            r = b.demo(co, days, traffic)
            latency = metrics_latency(co, r.db, b.config(traffic), 5)
            emit(
                markdown_table(SCALE_HEADERS, [scale_row(co, days, traffic, r, latency)]).split(
                    "\n"
                )[2]
            )


def main(argv: list[str] | None = None) -> int:
    """Run the parts asked for and print their tables."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--after", type=Path, default=ROOT, help="checkout measured (default: this)")
    ap.add_argument("--before", type=Path, help="a second checkout, measured in the same run")
    ap.add_argument(
        "--parts", default="demo,startup,determinism", help="parts 1-3 to run ('' none)"
    )
    ap.add_argument("--scale", action="store_true", help="also the scale curve (slow)")
    ap.add_argument("--scale-days", type=parse_days, default=[1, 7, 30, 90])
    ap.add_argument("--scale-days-10x", type=parse_days, help="days at 10x (default: --scale-days)")
    ap.add_argument("--repeat", type=int, default=7, help="start-up runs per median (default 7)")
    ap.add_argument("--out", type=Path, default=OUT, help="where the stores go")
    ap.add_argument(
        "--compare", nargs=2, type=Path, metavar=("A", "B"), help="only compare two store files"
    )
    args = ap.parse_args(argv)
    if args.compare:
        diffs = compare_stores(*args.compare, WALL_CLOCK_COLUMNS)
        print(markdown_table(DIFF_HEADERS, diff_rows(diffs)))
        return 0
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = parts - {"demo", "startup", "determinism"}
    if unknown:
        ap.error(f"unknown --parts {', '.join(sorted(unknown))}: use demo, startup, determinism")
    checkouts = [Checkout("after", args.after.resolve())]
    if args.before:
        checkouts.insert(0, Checkout("before", args.before.resolve()))
    for co in checkouts:
        if not (co.root / "cachemon" / "__main__.py").is_file():
            ap.error(f"{co.root} is not a cachemon checkout")
    args.out.mkdir(parents=True, exist_ok=True)
    b = Bench(checkouts, args.out.resolve(), args.repeat)
    print(
        f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        f"{os.cpu_count()} CPUs; " + "; ".join(f"{c.label} = {c.root}" for c in checkouts)
    )
    for name, fn in (
        ("demo", part_demo),
        ("startup", part_startup),
        ("determinism", part_determinism),
    ):
        if name in parts:
            print("\n" + fn(b), flush=True)
    if args.scale:
        print()
        days_10x = args.scale_days if args.scale_days_10x is None else args.scale_days_10x
        part_scale(b, args.scale_days, days_10x, lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
