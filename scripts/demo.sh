#!/usr/bin/env bash
# Installs what the demo needs (idempotent), then runs the main job on the embedded default data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec python3 -m dualattn demo --preset "${PRESET:-default}" --out "${OUT:-demo-out}" "$@"
