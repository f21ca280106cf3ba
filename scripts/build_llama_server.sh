#!/usr/bin/env bash
# Build llama.cpp's own `llama-server` from the llama.cpp that the installed llama-cpp-python vendors, so that
# `benchmarks/serve_latency.py --anchor llama-server BIN` compares our server with llama.cpp's on the same kernels.
# Usage: bash scripts/build_llama_server.sh [WORKDIR]   (default /tmp/llama-server-build; prints the binary's path)
# Takes ~5 min of two cores: run it once, under the shared lock on shared machines (`flock /work/heavy.lock ...`).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${1:-/tmp/llama-server-build}
PY=${PYTHON:-python}
VER=$("$PY" -c "import importlib.metadata as m; print(m.version('llama_cpp_python'))")
mkdir -p "$WORK"
cd "$WORK"
SDIST="llama_cpp_python-$VER.tar.gz"
[ -f "$SDIST" ] || "$PY" -m pip download "llama-cpp-python==$VER" --no-deps --no-binary :all: -d . >&2
SRC="llama_cpp_python-$VER/vendor/llama.cpp"
[ -d "$SRC" ] || tar xzf "$SDIST" "llama_cpp_python-$VER/vendor"
# The same CPU flags as our llama-cpp-python build (AMX off: it segfaults here); no curl (models are local files).
# shellcheck disable=SC2046
cmake -S "$SRC" -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF $(bash "$HERE/llama_cmake_args.sh") >&2
cmake --build build --target llama-server -j "$(nproc)" >&2
ls "$WORK/build/bin/llama-server"
