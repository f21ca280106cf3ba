#!/usr/bin/env bash
# Install the toolkit with its test extras into .venv and run the whole test suite (what CI runs).
# torch is pinned to the CPU build first: a bare `torch` requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# A real DICOMweb server for tests/test_imaging_dicomweb.py (the tests start it themselves on loopback).
if ! { command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ]; } \
        || [ ! -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null
fi
# Headless Chromium for the web page test (tests/test_serve_web.py); Playwright drives this Debian build.
if ! command -v chromium >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q "torch==${TORCH_VERSION:-2.13.0}"
# llama-cpp-python compiles from source (~4 min on 2 cores). The default -march=native build enables AMX on these
# CPUs and segfaults at the first decode: build a portable AVX2 one, never from pip's cache of a native build.
if ! .venv/bin/python -c "import llama_cpp" >/dev/null 2>&1; then
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON" \
        .venv/bin/pip install -q --no-cache-dir "llama-cpp-python==0.3.36"
fi
.venv/bin/pip install -q -e '.[test]'
exec .venv/bin/python -m pytest "$@"
