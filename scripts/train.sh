#!/usr/bin/env bash
# Installs entropo (CPU build of torch on this machine), then runs the default training job.
# Extra arguments go to `entropo train` (a YAML recipe and/or key=value overrides).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# DeepSpeed compiles a small op on first use; one cache per virtualenv, so that two checkouts
# (or CI's fresh clone) never rebuild each other's copy back and forth.
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.venv/torch_extensions}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false
if ! .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  export DS_ACCELERATOR=cpu
fi
exec .venv/bin/entropo train "$@"
