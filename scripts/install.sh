#!/usr/bin/env bash
# Creates .venv and installs entropo with its test tools. Idempotent: re-running it is quick.
# On a CPU machine torch is installed first and pinned to the CPU build, so that nothing
# below pulls CUDA packages. Set ENTROPO_TORCH to another spec (e.g. "torch") on a GPU host.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${ENTROPO_VENV:-.venv}
TORCH_SPEC=${ENTROPO_TORCH:-torch==2.13.0}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[install] creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
stamp="$VENV/.entropo-installed"
want="$(cat setup.py scripts/install.sh | sha256sum | cut -d' ' -f1) $TORCH_SPEC"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[install] installing $TORCH_SPEC first (CPU build on this machine)"
"$VENV/bin/python" -m pip install --quiet "$TORCH_SPEC"
echo "[install] installing entropo and its dependencies"
"$VENV/bin/python" -m pip install --quiet -e ".[dev]"
echo "$want" > "$stamp"
