#!/usr/bin/env bash
# Set up a fresh machine for lfm-call: Debian packages the tests and simulations use, a virtual
# environment in .venv with the CPU build of torch, and the project with its dev extras.
# Idempotent: a second run only checks. Override the torch pin with LFMCALL_TORCH (e.g. a CUDA build).
#   bash scripts/setup.sh             everything: Debian peers + .venv (simulations, all tests)
#   bash scripts/setup.sh --minimal   .venv only (torch + the project): enough for the unit tests
set -euo pipefail
cd "$(dirname "$0")/.."

MINIMAL=0
for arg in "$@"; do
  case "$arg" in
    --minimal) MINIMAL=1 ;;
    *) echo "setup: unknown option $arg (use --minimal for Python packages only)" >&2; exit 2 ;;
  esac
done

DEB_PACKAGES=(espeak-ng sox libsox-fmt-all sip-tester baresip-core tshark kamailio chromium chromium-driver)
TORCH_SPEC="${LFMCALL_TORCH:-torch==2.13.0}"
PYTHON="${PYTHON:-python3}"

missing=()
if [ "$MINIMAL" -eq 0 ]; then
  for pkg in "${DEB_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: missing Debian packages: ${missing[*]}" >&2
    echo "setup: install them with: sudo apt-get install -y ${missing[*]}" >&2
    echo "setup: (or bash scripts/setup.sh --minimal: Python packages only, enough for the unit tests)" >&2
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi

stamp=.venv/.lfmcall-setup
want="$(sha256sum pyproject.toml | cut -c1-16) $TORCH_SPEC"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing $TORCH_SPEC and the project (pip install -e .[dev])"
  .venv/bin/pip install -q "$TORCH_SPEC"
  .venv/bin/pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
fi
echo "setup: ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
