#!/usr/bin/env bash
# Installs what the tests need (idempotent), then runs the whole default test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
exec python3 -m pytest "$@"
