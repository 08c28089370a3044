#!/usr/bin/env bash
# Set up and run cachemon on the embedded simulator: the job runner, the
# dashboard (http://127.0.0.1:8501) and the metrics API (`cachemon serve` on
# 127.0.0.1, the port `[metrics] api_url` names). No credentials needed.
# Ctrl-C stops them all.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh requirements.txt
PY=.venv/bin/python
export CACHEMON_DB="${CACHEMON_DB:-data/cachemon.duckdb}"
if [ -z "${CACHEMON_CONFIG:-}" ]; then
  # The simulator runs the seed's experiment; tell cachemon when it started.
  export CACHEMON_CONFIG=data/demo.toml
  if [ ! -f "$CACHEMON_CONFIG" ] || [ ! -f "$CACHEMON_DB" ]; then
    mkdir -p data
    secs=$(awk "BEGIN { printf \"%d\", ${DEMO_DAYS:-7} * 86400 }")
    start=$(date -u -d "@$(( $(date -u +%s) - secs ))" +%Y-%m-%dT%H:00:00Z)
    # The one experiment example of the code (tuning.experiments.example_toml).
    "$PY" -c 'import sys; from cachemon.tuning.experiments import example_toml
sys.stdout.write(example_toml(start=sys.argv[1]))' "$start" > "$CACHEMON_CONFIG"
  fi
fi

pids=()
stop() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop EXIT INT TERM

# The dashboard starts at once; while the first demo fills the store its pages
# show the demo's progress, then the data as soon as the demo publishes.
$PY -m streamlit run app.py &
pids+=($!)
# The metrics API on loopback, at the port the dashboard's link names (an
# api_url on another host is someone else's server: nothing to start here).
api_port=$("$PY" -c 'import urllib.parse; from cachemon import config
u = urllib.parse.urlsplit(config.load().metrics.api_url)
if u.scheme == "http" and u.hostname in ("127.0.0.1", "localhost"):
    print(u.port or 80)' || true)
if [ -n "$api_port" ]; then
  mkdir -p data
  # Its access log would drown the terminal: it goes to a file.
  $PY -m cachemon serve --host 127.0.0.1 --port "$api_port" > data/serve.log 2>&1 &
  pids+=($!)
  echo "cachemon: metrics API on http://127.0.0.1:$api_port (log: data/serve.log)" >&2
fi
if [ ! -f "$CACHEMON_DB" ]; then
  $PY -m cachemon demo --days "${DEMO_DAYS:-7}"
fi
$PY -m jobs &
pids+=($!)
echo "cachemon: dashboard on http://127.0.0.1:8501 (Ctrl-C to stop)" >&2
wait
