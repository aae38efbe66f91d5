#!/usr/bin/env bash
# CMake build of csrc/ against libtorch, the C++ tests (ctest) and the nvcc compile check of
# csrc/cuda (device code only; torch is a CPU build here). Usage: .ci/build_check.sh [build dir]
# Env: MAX_JOBS (default 2), KPRUNE_REQUIRE_NVCC=1 to fail when nvcc is missing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${1:-$ROOT/build/cmake}"
JOBS="${MAX_JOBS:-2}"
PYTHON="${PYTHON:-python}"
export PATH="$PATH:/usr/local/cuda/bin"

TORCH_PREFIX="$("$PYTHON" -c 'import torch; print(torch.utils.cmake_prefix_path)')"
if ! command -v nvcc >/dev/null 2>&1; then
  if [[ "${KPRUNE_REQUIRE_NVCC:-0}" == "1" ]]; then echo "build_check: nvcc not found" >&2; exit 1; fi
  echo "build_check: nvcc not found, the CUDA compile check is skipped"
fi

cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" -DKPRUNE_CUDA_CHECK=ON
cmake --build "$BUILD" -j "$JOBS"
ctest --test-dir "$BUILD" --output-on-failure
if command -v nvcc >/dev/null 2>&1; then
  ls "$BUILD"/cuda_check/*.o >/dev/null  # the compile check ran (part of the default build target)
  echo "build_check: CUDA sources compile with $(nvcc --version | tail -1)"
fi
echo "build_check: OK"
