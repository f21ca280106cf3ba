#!/usr/bin/env bash
# Install the toolkit into .venv: `bash scripts/install.sh [EXTRAS]` (default EXTRAS: all).
#
# - torch: kept if the venv already has one (e.g. your CUDA build); otherwise torch==$TORCH_VERSION (2.13.0),
#   which on machines like our CI is a CPU wheel on local disk. A bare `torch` requirement would pull a multi-GB
#   CUDA build onto a CPU-only machine.
# - llama-cpp-python compiles from source (~4 min on 2 cores). The default -march=native build enables AMX on some
#   CPUs and segfaults at the first decode, so we build a portable AVX2 one. For an accelerated build on your own
#   machine set CMAKE_ARGS yourself (e.g. "-DGGML_CUDA=on"); MEDGEMMA_SKIP_LLAMACPP=1 skips it.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${1:-all}
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    .venv/bin/pip install -q "torch==${TORCH_VERSION:-2.13.0}"
fi
if [ "${MEDGEMMA_SKIP_LLAMACPP:-0}" != 1 ] && ! .venv/bin/python -c "import llama_cpp" >/dev/null 2>&1; then
    CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON}" \
        .venv/bin/pip install -q --no-cache-dir "llama-cpp-python==0.3.36"
fi
.venv/bin/pip install -q -e ".[${EXTRAS}]"
