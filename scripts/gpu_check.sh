#!/usr/bin/env bash
# Builds kiln with CUDA on a GPU machine, runs the CUDA test suite and the GPU benchmarks with
# their PyTorch baselines, and ends with one summary: PASS/FAIL of every step, then every
# benchmark row. Needs nvcc, CMake, Ninja and a python with a CUDA build of torch (PYTHON, default
# python3); Catch2's and nlohmann/json's headers may come from .device/include (scripts/gpu_bundle.sh
# puts them there), and OpenBLAS and zlib are used where present. Logs go to $OUT, or build-gpu/logs.
#   ./scripts/gpu_check.sh            tests and benchmarks
#   ./scripts/gpu_check.sh tests      tests only
#   ./scripts/gpu_check.sh bench      benchmarks only (a second call where one call has a time limit)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
what="${1:-all}"
case "$what" in all | tests | bench) ;; *) echo "gpu_check: unknown mode '$what' (expected all, tests or bench)"; exit 2 ;; esac
python="${PYTHON:-python3}"
log_dir="${OUT:-build-gpu/logs}"
mkdir -p "$log_dir"
# What the machine lacks comes from .device/ (scripts/gpu_bundle.sh) or is left out of the build:
# without OpenBLAS the CPU reference multiplies with portable loops, without zlib gzip is refused.
extra=()
[ -f .device/include/catch2/catch.hpp ] && extra+=("-DKILN_CATCH2_INCLUDE_DIR=$PWD/.device/include")
[ -f .device/include/nlohmann/json.hpp ] && extra+=("-DKILN_JSON_INCLUDE_DIR=$PWD/.device/include")
pkg-config --exists openblas 2>/dev/null || extra+=(-DKILN_BLAS=none)
echo '#include <zlib.h>' | c++ -fsyntax-only -x c++ - 2>/dev/null || extra+=(-DKILN_WITH_ZLIB=OFF)
nvidia-smi -L || { echo "gpu_check: no GPU visible"; exit 1; }
targets=()
[ "$what" != bench ] && targets+=(test_cuda test_train)
[ "$what" != tests ] && targets+=(bench_cuda_matmul bench_cuda_attention bench_cuda_gpt)
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DKILN_TEST_PYTHON="$(command -v "$python")" \
  "${extra[@]}" > "$log_dir/configure.log" 2>&1 || { tail -40 "$log_dir/configure.log"; exit 1; }
cmake --build build-gpu -j "$(nproc)" --target "${targets[@]}" > "$log_dir/build.log" 2>&1 ||
  { grep -E "error" -A5 "$log_dir/build.log" | head -60; exit 1; }

status=0
results=()
run() {  # run NAME COMMAND...: runs, logs to NAME.log, records PASS/FAIL (SKIP for exit 77) and seconds
  local name=$1 code=0 start=$SECONDS; shift
  echo "== $name"
  "$@" > "$log_dir/$name.log" 2>&1 || code=$?
  local took="$((SECONDS - start)) s"
  case $code in
    0) results+=("| $name | PASS | $took |") ;;
    77) results+=("| $name | SKIP: $(head -1 "$log_dir/$name.log") | $took |"); status=1 ;;
    *) results+=("| $name | FAIL (exit $code; see $name.log) | $took |"); status=1 ;;
  esac
  tail -5 "$log_dir/$name.log"
}
if [ "$what" != bench ]; then
  run test_cuda ./build-gpu/tests/cuda/test_cuda
  # The trainer on the GPU against the CPU (training.device "cuda").
  run test_train_cuda ./build-gpu/tests/test_train "[cuda]"
fi
if [ "$what" != tests ]; then
  run bench_cuda_matmul ./build-gpu/benchmarks/bench_cuda_matmul
  run bench_cuda_attention ./build-gpu/benchmarks/bench_cuda_attention
  run attention_torch_gpu "$python" benchmarks/attention_torch_gpu.py
  run gpt_gpu env KILN_BUILD_DIR=build-gpu PYTHON="$python" benchmarks/run_gpt_gpu.sh
fi

table() {  # table TITLE LOG...: the Markdown rows of the logs, each distinct line once (shared headers)
  local title=$1; shift
  echo
  echo "$title"
  cat "$@" 2>/dev/null | grep '^|' | awk '!seen[$0]++'
}
echo
echo "== gpu_check summary ($(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader); $("$python" -c 'import torch; print("torch", torch.__version__)' 2>&1 | tail -1))"
echo "| step | result | time |"
echo "|---|---|---|"
printf '%s\n' "${results[@]}"
if [ "$what" != bench ]; then
  # The test counts, and the measured CUDA-vs-CPU differences and mixed-precision gaps (WARN lines).
  grep -E "^(All tests passed|test cases:)|largest|skipped, final scale" "$log_dir/test_cuda.log" |
    sed 's/^ */test_cuda: /'
fi
if [ "$what" != tests ]; then
  table "GEMM (bench_cuda_matmul):" "$log_dir/bench_cuda_matmul.log"
  table "Causal attention, kiln and PyTorch (bench_cuda_attention, attention_torch_gpu.py):" \
    "$log_dir/bench_cuda_attention.log" "$log_dir/attention_torch_gpu.log"
  table "GPT-2 124M training step (benchmarks/run_gpt_gpu.sh):" "$log_dir/gpt_gpu.log"
fi
exit $status
