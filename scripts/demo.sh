#!/usr/bin/env bash
# Installs what the demo needs (idempotent), then runs the main job on the embedded default data.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python-env.sh
PYTHON="$(dualattn_python)"  # the interpreter setup.sh installs into (.venv on a PEP 668 system Python)
export PYTHON
bash scripts/setup.sh
# Threads: dualattn uses the cores that are free when it starts (see docs/demo.md, "Threads"); when other jobs
# keep a CPU busy, its idle OpenMP threads sleep rather than spin (the entry point decides; an OMP_WAIT_POLICY or
# OMP_NUM_THREADS of your own is kept).
exec "$PYTHON" -m dualattn demo --preset "${PRESET:-default}" --out "${OUT:-demo-out}" "$@"
