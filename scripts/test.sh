#!/usr/bin/env bash
# Installs what the tests need (idempotent), then runs the whole default test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python-env.sh
PYTHON="$(dualattn_python)"  # the interpreter setup.sh installs into (.venv on a PEP 668 system Python)
export PYTHON
bash scripts/setup.sh
# Tiny tensors run faster on one thread, and the DDP tests start two processes on 2 cores.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$PYTHON" -m pytest "$@"
