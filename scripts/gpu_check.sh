#!/usr/bin/env bash
# Builds kiln with CUDA on a GPU machine and runs the CUDA test suite and the GPU benchmarks,
# printing a short table at the end. Needs nvcc, CMake, Ninja, OpenBLAS and a python3 with
# torch; Catch2's header may come from .device/include (scripts/gpu_bundle.sh puts it there).
#   ./scripts/gpu_check.sh            tests and benchmarks
#   ./scripts/gpu_check.sh tests      tests only
set -uo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"
log_dir="${OUT:-build-gpu/logs}"
mkdir -p "$log_dir"
extra=()
[ -f .device/include/catch2/catch.hpp ] && extra+=("-DKILN_CATCH2_INCLUDE_DIR=$PWD/.device/include")
nvidia-smi -L || { echo "gpu_check: no GPU visible"; exit 1; }
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DKILN_TEST_PYTHON="$(command -v python3)" \
  "${extra[@]}" > "$log_dir/configure.log" 2>&1 || { tail -40 "$log_dir/configure.log"; exit 1; }
cmake --build build-gpu -j "$(nproc)" > "$log_dir/build.log" 2>&1 || { grep -E "error" -A5 "$log_dir/build.log" | head -60; exit 1; }

status=0
results=()
run() {  # run NAME COMMAND...: runs, logs, records PASS/FAIL
  local name=$1; shift
  if "$@" > "$log_dir/$name.log" 2>&1; then results+=("$name PASS"); else results+=("$name FAIL"); status=1; fi
  tail -5 "$log_dir/$name.log"
}
run test_cuda ./build-gpu/tests/cuda/test_cuda
if [ "$what" = all ]; then
  for bench in build-gpu/benchmarks/bench_cuda_*; do
    [ -x "$bench" ] && run "$(basename "$bench")" "$bench"
  done
fi
echo
echo "== gpu_check summary ($(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)) =="
printf '%s\n' "${results[@]}"
for bench in "$log_dir"/bench_cuda_*.log; do [ -f "$bench" ] && grep '^|' "$bench"; done
exit $status
