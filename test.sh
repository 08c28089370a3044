#!/usr/bin/env bash
# Set up and run the whole test suite. Installs Debian's Chromium (browser
# tests) and Prometheus (promtool) when missing (needs root or sudo).
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x /usr/bin/chromium ] || ! command -v promtool >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium prometheus >/dev/null
fi
scripts/setup.sh requirements-dev.txt
exec .venv/bin/python -m pytest -q "$@" tests
