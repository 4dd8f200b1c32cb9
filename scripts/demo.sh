#!/usr/bin/env bash
# Installs what the demo needs (idempotent), then runs the main job on the embedded default data.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python-env.sh
PYTHON="$(dualattn_python)"  # the interpreter setup.sh installs into (.venv on a PEP 668 system Python)
export PYTHON
bash scripts/setup.sh
exec "$PYTHON" -m dualattn demo --preset "${PRESET:-default}" --out "${OUT:-demo-out}" "$@"
