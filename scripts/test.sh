#!/usr/bin/env bash
# Installs what the tests need, then runs them. Extra arguments go to pytest.
# pytest's exit code 5 ("no tests ran") is a failure here, never a pass.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh || exit 1
export HF_HUB_OFFLINE=1 DS_ACCELERATOR=cpu TOKENIZERS_PARALLELISM=false
.venv/bin/python -m ruff check . || exit 1
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "scripts/test.sh: pytest ran no test; that is a failure" >&2
  exit 1
fi
exit "$rc"
