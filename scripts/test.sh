#!/usr/bin/env bash
# Run the test suite (unit, parity and integration) after making sure the machine is set up.
#   bash scripts/test.sh            everything (needs the Debian peers: scripts/setup.sh installs them)
#   bash scripts/test.sh -m unit    the unit tests: Python packages alone (scripts/setup.sh --minimal)
set -euo pipefail
cd "$(dirname "$0")/.."
setup_args=()
prev=""
for arg in "$@"; do
  if { [ "$prev" = "-m" ] && [ "$arg" = "unit" ]; } || [ "$arg" = "-munit" ]; then
    setup_args=(--minimal)
  fi
  prev="$arg"
done
bash scripts/setup.sh "${setup_args[@]}"
exec .venv/bin/python -m pytest "$@"
