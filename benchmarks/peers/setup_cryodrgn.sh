#!/usr/bin/env bash
# cryoDRGN in its own virtual environment (never a dependency of eqcryo), pinned, CPU torch:
#   bash benchmarks/peers/setup_cryodrgn.sh        -> benchmarks/peers/.venv-cryodrgn/bin/cryodrgn
# torch is pinned first so that pip takes the CPU wheel and no CUDA packages.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="$HERE/.venv-cryodrgn"
CRYODRGN_VERSION="${CRYODRGN_VERSION:-4.3.1}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
if [ ! -x "$VENV/bin/cryodrgn" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "torch==$TORCH_VERSION"
  "$VENV/bin/pip" install -q "cryodrgn==$CRYODRGN_VERSION" "torch==$TORCH_VERSION"
fi
"$VENV/bin/python" -c "import cryodrgn, torch; print('cryodrgn', cryodrgn.__version__, 'torch', torch.__version__)"
