#!/usr/bin/env bash
# Install the toolkit into .venv: `bash scripts/install.sh [EXTRAS]` (default EXTRAS: all).
#
# - torch: kept if the venv already has one (e.g. your CUDA build); otherwise torch==$TORCH_VERSION (2.13.0),
#   which on machines like our CI is a CPU wheel on local disk. A bare `torch` requirement would pull a multi-GB
#   CUDA build onto a CPU-only machine.
# - llama-cpp-python compiles from source (~4 min on 2 cores). llama.cpp's default -march=native build enables AMX on
#   some Intel CPUs and segfaults at the first decode, so scripts/llama_cmake_args.sh names the x86 vector units this
#   CPU has (AVX2, FMA, ..., AVX512 and its VBMI/VNNI/BF16 extensions where present) explicitly and never AMX; the
#   portable AVX2 set where /proc/cpuinfo is unreadable; llama.cpp's defaults on non-x86 CPUs. Set CMAKE_ARGS
#   yourself to override (e.g. "-DGGML_CUDA=on"); MEDGEMMA_SKIP_LLAMACPP=1 skips it.
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
    if [ -z "${CMAKE_ARGS:-}" ]; then
        CMAKE_ARGS=$(bash scripts/llama_cmake_args.sh)
        echo "llama-cpp-python: building for this CPU with CMAKE_ARGS=\"${CMAKE_ARGS:-<llama.cpp defaults>}\""
    else
        echo "llama-cpp-python: building with your CMAKE_ARGS=\"$CMAKE_ARGS\""
    fi
    # --no-cache-dir: pip's wheel cache ignores CMAKE_ARGS and would reuse a build made for other flags.
    CMAKE_ARGS="$CMAKE_ARGS" .venv/bin/pip install -q --no-cache-dir "llama-cpp-python==0.3.36"
fi
.venv/bin/pip install -q -e ".[${EXTRAS}]"
