#!/usr/bin/env bash
# Run the test suite (unit, parity and integration) after making sure the machine is set up.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
