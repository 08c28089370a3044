"""Metrics API benchmark: requests/s and p99 latency of /metrics?period=24h,
cached and uncached, with the load from a second process on loopback.

    .venv/bin/python -m bench.bench_api [--store bench/out/bench.duckdb] [--seconds 10]
        [--format json|prometheus] [--before DIR]

Uses the 7-day store that bench_foundation.py leaves in bench/out (or any).
With `--before DIR`, the server of another checkout (the code before a
change) is measured too, in the same run against the same store, each case
before then after, so both see the same load; the load average is printed.
"Uncached" is the server with its response cache off (`--cache-seconds 0`):
every request computes its response (the figures of the snapshot's window
are kept per published snapshot since #22, see `cachemon.metrics.memo`).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent

LOAD = r"""
import json, sys, threading, time, httpx
url, seconds, threads = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
lat, stop = [], time.monotonic() + seconds
def worker():
    with httpx.Client() as c:
        while time.monotonic() < stop:
            t = time.perf_counter(); r = c.get(url); lat.append(time.perf_counter() - t)
            assert r.status_code == 200, r.status_code
ts = [threading.Thread(target=worker) for _ in range(threads)]
t0 = time.monotonic(); [t.start() for t in ts]; [t.join() for t in ts]
lat.sort(); print(json.dumps({"n": len(lat), "s": time.monotonic() - t0, "p50": lat[len(lat)//2], "p99": lat[int(len(lat)*0.99)]}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(
    store: Path, cache_seconds: int, seconds: float, threads: int, root: Path = ROOT, fmt="json"
) -> dict:
    port = free_port()
    env = dict(os.environ, CACHEMON_DB=str(store), PYTHONPATH=str(root))
    env.pop("CACHEMON_API_TOKEN", None)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cachemon",
            "serve",
            "--port",
            str(port),
            "--allow",
            "127.0.0.1",
            "--cache-seconds",
            str(cache_seconds),
        ],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/metrics?period=24h&format={fmt}"
    try:
        for _ in range(100):
            try:
                httpx.get(url, timeout=5)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        out = subprocess.run(
            [sys.executable, "-c", LOAD, url, str(seconds), str(threads)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return json.loads(out)
    finally:
        server.terminate()
        server.wait(timeout=20)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default=str(ROOT / "bench" / "out" / "bench.duckdb"))
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--format", choices=("json", "prometheus"), default="json")
    ap.add_argument("--before", help="another checkout to measure too (the code before)")
    ap.add_argument(
        "--before-store",
        help="the store the --before code reads (a copy of --store before a schema migration)",
    )
    ap.add_argument(
        "--repeat", type=int, default=2, help="runs of each case and code, in alternating order"
    )
    args = ap.parse_args()
    roots = [("after", ROOT, Path(args.store))]
    if args.before:
        roots.insert(
            0, ("before", Path(args.before).resolve(), Path(args.before_store or args.store))
        )
    print(f"store {args.store}, format {args.format}, {args.threads} client threads")
    print("case     | code   | requests/s | p50 ms | p99 ms | load (1 min)")
    print("---------|--------|------------|--------|--------|-------------")
    for name, cache in (("cached", 300), ("uncached", 0)):
        # The second of two servers started in a row measured ~30 % slower on
        # a loaded machine, the same code both times: alternate who goes first.
        rates: dict[str, list[float]] = {code: [] for code, _, _ in roots}
        for rep in range(args.repeat):
            for code, root, store in roots if rep % 2 == 0 else roots[::-1]:
                r = run(store, cache, args.seconds, args.threads, root, args.format)
                rates[code].append(r["n"] / r["s"])
                print(
                    f"{name:8} | {code:6} | {r['n'] / r['s']:10.0f} | {r['p50'] * 1000:6.1f} | "
                    f"{r['p99'] * 1000:6.1f} | {os.getloadavg()[0]:.2f}"
                )
        means = {code: sum(v) / len(v) for code, v in rates.items()}
        line = ", ".join(f"{code} {v:.0f}" for code, v in means.items())
        ratio = f" (after/before {means['after'] / means['before']:.1f}x)" if args.before else ""
        print(f"{name:8} | mean   | {line}{ratio}")


if __name__ == "__main__":
    main()
