#!/usr/bin/env bash
# GPT-2 124M bf16 training on the GPU, kiln and PyTorch in one run (issue #8): bench_cuda_gpt,
# then gpt_torch_gpu.py (eager and compiled), then their rows in one table. Arguments go to both:
#   benchmarks/run_gpt_gpu.sh [--batch 8] [--warmup 3] [--steps 10] [--peak-tflops 989]
# KILN_BUILD_DIR (default build-gpu) and PYTHON (default python3: a CUDA build of torch) choose them.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
output=$(mktemp)
trap 'rm -f "$output"' EXIT
status=0
"${KILN_BUILD_DIR:-build-gpu}/benchmarks/bench_cuda_gpt" "$@" | tee "$output" || status=1
"${PYTHON:-python3}" benchmarks/gpt_torch_gpu.py "$@" | tee -a "$output" || status=1
echo
echo "GPT-2 124M training step, kiln and PyTorch on this GPU:"
grep '^|' "$output" | awk '!seen[$0]++'
exit $status
