# Sourced by setup.sh, demo.sh and test.sh (needs the repository root as the working directory):
# `dualattn_python` prints the interpreter all three use.
#
# - $PYTHON (default python3) as is, when it runs in a virtual environment or may install packages;
# - when it is externally managed (PEP 668: a stock Debian/Ubuntu Python refuses `pip install` with
#   "externally-managed-environment"), the repository's own .venv, made from it on first use
#   (python3 -m venv .venv) and reused afterwards.

dualattn_python() {
    local base="${PYTHON:-python3}"
    if ! command -v "$base" >/dev/null 2>&1; then
        echo "error: no Python interpreter '$base' found (set PYTHON=/path/to/python3)" >&2
        return 1
    fi
    if ! "$base" scripts/externally_managed.py; then
        command -v "$base"
        return 0
    fi
    if [ ! -x .venv/bin/python ]; then
        echo "setup: $base is externally managed (PEP 668): installing into a virtual environment in .venv" >&2
        if ! "$base" -m venv .venv >&2; then
            echo "error: could not create .venv with '$base -m venv' (on Debian/Ubuntu: apt install python3-venv)," \
                 "or activate a virtual environment of your own and run this again" >&2
            rm -rf .venv
            return 1
        fi
    fi
    echo "$PWD/.venv/bin/python"
}
