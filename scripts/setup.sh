#!/usr/bin/env bash
# Create .venv and install the pinned requirements (idempotent, quick when
# nothing changed). Usage: scripts/setup.sh [requirements file]
set -euo pipefail
cd "$(dirname "$0")/.."
req="${1:-requirements.txt}"
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "cachemon needs Python 3.11 or newer ($PY is $("$PY" --version 2>&1))" >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv 2>/dev/null || {
    echo "python3 -m venv failed: install the venv module (Debian: apt-get install python3-venv)" >&2
    exit 2
  }
fi
stamp=".venv/.installed-$(cat requirements*.txt | sha256sum | cut -c1-16)-$(basename "$req")"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r "$req"
  touch "$stamp"
fi
# Compile cachemon's modules once: Python reads bytecode even where
# PYTHONDONTWRITEBYTECODE=1 stops it from writing any, so each command starts
# without compiling ~100 modules again (bench/README.md, start-up). Only
# changed files are compiled again.
.venv/bin/python -m compileall -q cachemon jobs >/dev/null
