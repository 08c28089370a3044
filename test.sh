#!/usr/bin/env bash
# Set up and run the whole test suite: lint (ruff check, ruff format --check),
# the import contracts (lint-imports, when pyproject.toml declares them), then
# pytest over tests/ (the reliability CI profile included) in parallel with
# pytest-xdist. Installs Debian's Chromium (browser tests) and Prometheus
# (promtool) when missing (needs root or sudo).
# CACHEMON_TEST_WORKERS sets the number of pytest workers (default 2, one per
# core: measured, 4 workers were barely faster than 2 on 2 cores, the servers and
# subprocesses the tests start need the CPU too); extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x /usr/bin/chromium ] || ! command -v promtool >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium prometheus >/dev/null
fi
scripts/setup.sh requirements-dev.txt
.venv/bin/ruff check .
.venv/bin/ruff format --check .
if grep -q '^\[tool\.importlinter\]' pyproject.toml; then
  .venv/bin/lint-imports
fi
# --dist worksteal: the tests' durations differ by 1000x; idle workers take
# queued tests from busy ones. --rootdir: the repository root, whatever the cwd.
exec .venv/bin/python -m pytest -q -n "${CACHEMON_TEST_WORKERS:-2}" --dist worksteal \
  --rootdir=. --durations=20 "$@" tests
