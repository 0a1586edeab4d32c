#!/usr/bin/env bash
# GPU checks for a CUDA machine that has torch but no DeepSpeed, Ray or vLLM (scripts/gpu_check.py
# says what is checked). Two steps:
#   bash scripts/gpu_check.sh prepare   # here, with pip: the wheels the checks need, into .gpu_wheels/
#   bash scripts/gpu_check.sh           # there: installs .gpu_wheels/ into /tmp/site, runs the checks
# The wheels (DeepSpeed built as a pure-Python wheel, and what entropo's learner imports that the
# machine lacks) are for CPython 3.12 on manylinux x86_64, as that machine's python3; ~20 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.gpu_wheels
if [ "${1:-}" = "prepare" ]; then
  PY=${PYTHON:-.venv/bin/python}
  rm -rf "$WHEELS" && mkdir -p "$WHEELS"
  # pure-Python packages and sdists: built or fetched as py3 wheels
  DS_BUILD_OPS=0 "$PY" -m pip wheel --quiet --no-deps -w "$WHEELS" deepspeed==0.19.8 hjson omegaconf==2.3.0 \
    antlr4-python3-runtime==4.9.3 transformers==5.19.0 annotated-types typing-inspection pydantic==2.14.4
  # pydantic's compiled core, and a tokenizers transformers 5.19 accepts, for the machine's Python
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$WHEELS" pydantic-core==2.50.5 tokenizers==0.23.3
  du -sh "$WHEELS"
  exit 0
fi
if [ -d "$WHEELS" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
exec timeout 480 python3 scripts/gpu_check.py "$@"
