#!/usr/bin/env bash
# Create .venv (when missing) and install eqcryo with its test dependencies.
#
# - If the system Python already has a CUDA-enabled torch, the venv sees it
#   (--system-site-packages) and no torch is installed.
# - Otherwise torch==2.13.0 is installed on its own first. On this project's machines pip
#   resolves that to the local CPU wheel; elsewhere set EQCRYO_TORCH_INDEX to your PyTorch
#   CPU (or CUDA) wheel index so pip never pulls the multi-GB CUDA packages by accident.
# - Everything else is pinned by requirements/constraints.txt.
# Re-running is cheap: a stamp file skips the install when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.eqcryo-installed"

if [ ! -x "$VENV/bin/python" ]; then
    if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        echo "setup: using the system's CUDA torch"
        "$PY" -m venv --system-site-packages "$VENV"
    else
        "$PY" -m venv "$VENV"
    fi
fi
want="$(cat pyproject.toml requirements/constraints.txt | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    exit 0
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "setup: installing torch==2.13.0 (CPU build)"
    if [ -n "${EQCRYO_TORCH_INDEX:-}" ]; then
        "$VENV/bin/python" -m pip install -q "torch==2.13.0" --index-url "$EQCRYO_TORCH_INDEX"
    else
        "$VENV/bin/python" -m pip install -q "torch==2.13.0"
    fi
fi
echo "setup: installing eqcryo and its dependencies"
"$VENV/bin/python" -m pip install -q -e ".[test]" -c requirements/constraints.txt
echo "$want" > "$STAMP"
