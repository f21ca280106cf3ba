#!/usr/bin/env bash
# Install the toolkit with its test extras into .venv and run the whole test suite (what CI runs).
# torch is pinned to the CPU build first: a bare `torch` requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q "torch==${TORCH_VERSION:-2.13.0}"
.venv/bin/pip install -q -e '.[test]'
exec .venv/bin/python -m pytest "$@"
