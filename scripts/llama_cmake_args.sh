#!/usr/bin/env bash
# Print the CMAKE_ARGS for building llama-cpp-python on this CPU: `bash scripts/llama_cmake_args.sh [CPUINFO [ARCH]]`
# (defaults: /proc/cpuinfo and `uname -m`). scripts/install.sh uses it when CMAKE_ARGS is not set.
#
# Why explicit flags instead of llama.cpp's default -march=native: on Intel CPUs with AMX, -march=native also
# compiles ggml's AMX kernels, which segfaulted at the first decode (ggml_backend_amx_mul_mat). Here every x86
# feature is switched on only if every "flags" line of CPUINFO lists it, and AMX is always off. Option names are
# those of ggml/CMakeLists.txt in the llama.cpp vendored by llama-cpp-python 0.3.36; GGML_AVX512 compiles with
# -mavx512f/cd/vl/dq/bw, so it needs all five. x86 without a readable CPUINFO gets the portable AVX2 set; other
# architectures (aarch64, arm64, ...) print nothing, so llama.cpp's own defaults apply.
set -euo pipefail
CPUINFO=${1:-/proc/cpuinfo}
ARCH=${2:-$(uname -m)}
PORTABLE="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
NO_AMX="-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"

case "$ARCH" in
    x86_64 | amd64 | AMD64 | i686 | i386) ;;
    *) exit 0 ;;
esac

# The features every core has: the intersection of all "flags" lines (hybrid and multi-socket machines list one each).
FLAGS=""
if [ -r "$CPUINFO" ]; then
    FLAGS=$(awk -F: '/^flags[[:space:]]*:/ { n++; split($2, f, " "); for (i in f) seen[f[i]]++ }
        END { for (k in seen) if (seen[k] == n) print k }' "$CPUINFO" | sort | tr '\n' ' ')
fi
if [ -z "$FLAGS" ]; then
    echo "$PORTABLE $NO_AMX"
    exit 0
fi

has() { # has FEATURE...: every one is in FLAGS
    local f
    for f in "$@"; do
        case " $FLAGS " in *" $f "*) ;; *) return 1 ;; esac
    done
}
onoff() { if has "$@"; then echo ON; else echo OFF; fi; }

AVX512=$(onoff avx512f avx512cd avx512vl avx512dq avx512bw)
ext() { if [ "$AVX512" = ON ]; then onoff "$@"; else echo OFF; fi; }  # AVX512 extensions need AVX512 itself
ARGS="-DGGML_NATIVE=OFF"
ARGS+=" -DGGML_SSE42=$(onoff sse4_2) -DGGML_AVX=$(onoff avx) -DGGML_AVX2=$(onoff avx2)"
ARGS+=" -DGGML_FMA=$(onoff fma) -DGGML_F16C=$(onoff f16c) -DGGML_BMI2=$(onoff bmi2)"
ARGS+=" -DGGML_AVX_VNNI=$(onoff avx_vnni)"
ARGS+=" -DGGML_AVX512=$AVX512 -DGGML_AVX512_VBMI=$(ext avx512vbmi)"
ARGS+=" -DGGML_AVX512_VNNI=$(ext avx512_vnni) -DGGML_AVX512_BF16=$(ext avx512_bf16)"
echo "$ARGS $NO_AMX"
