#!/usr/bin/env bash
# Installs what the tests need, then runs them. Extra arguments go to pytest.
# pytest's exit code 5 ("no tests ran") is a failure here, never a pass.
# In CI (CI set) or with ENTROPO_REQUIRE_CHROMIUM set, the report's headless-Chromium render
# test must run: Chromium is installed from apt when missing and we are root, and
# ENTROPO_REQUIRE_CHROMIUM=1 turns a still-missing /usr/bin/chromium into a failure, not a skip.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh || exit 1
# DeepSpeed compiles a small op on first use; one cache per virtualenv, so that two checkouts
# (or CI's fresh clone) never rebuild each other's copy back and forth.
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.venv/torch_extensions}
export HF_HUB_OFFLINE=1 DS_ACCELERATOR=cpu TOKENIZERS_PARALLELISM=false
if [ -n "${CI:-}" ]; then
  export ENTROPO_REQUIRE_CHROMIUM=1
fi
if [ -n "${ENTROPO_REQUIRE_CHROMIUM:-}" ] && [ ! -x /usr/bin/chromium ] && [ "$(id -u)" -eq 0 ]; then
  echo "[test] installing chromium for the report render test"
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi
.venv/bin/python -m ruff check . || exit 1
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "scripts/test.sh: pytest ran no test; that is a failure" >&2
  exit 1
fi
exit "$rc"
