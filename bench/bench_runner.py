"""Runner benchmark: steady-state CPU and RSS of `python -m jobs` in demo
mode (the live simulator at the default volume) over a span of wall time.

    .venv/bin/python -m bench.bench_runner [--minutes 10] [--days 7]

Fills a store with `demo --days N` first, then samples /proc every 5 s.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

OUT = ROOT / "bench" / "out"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--days", type=float, default=7)
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    db = OUT / "runner.duckdb"
    for p in (db, db.with_name("runner.snapshot.duckdb")):
        p.unlink(missing_ok=True)
    env = dict(os.environ, CACHEMON_DB=str(db), PYTHONPATH=str(ROOT))
    env.pop("CACHEMON_CONFIG", None)
    subprocess.run(
        [sys.executable, "-m", "cachemon", "demo", "--days", str(args.days), "--quiet"],
        env=env,
        check=True,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(30)  # start-up and the first catch-up are not steady state
    samples, t0, c0 = [], time.monotonic(), cpu_seconds(proc.pid)
    end = t0 + args.minutes * 60
    while time.monotonic() < end:
        time.sleep(5)
        samples.append(rss_mib(proc.pid))
    cpu = (cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    n = len(samples)
    rows = [
        ("wall time measured", f"{args.minutes:g} min"),
        ("CPU, share of one core", f"{cpu * 100:.2f} %  (target < 5 %)"),
        (
            "RSS first / last / max",
            f"{samples[0]:.0f} / {samples[-1]:.0f} / {max(samples):.0f} MiB  (target < 300 MiB)",
        ),
        (
            "RSS mean, first vs last third",
            f"{sum(samples[: n // 3]) / max(1, n // 3):.0f} / "
            f"{sum(samples[-(n // 3) :]) / max(1, n // 3):.0f} MiB",
        ),
        ("exit code after SIGTERM", str(proc.returncode)),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name.ljust(width)} | {value}")


if __name__ == "__main__":
    main()
