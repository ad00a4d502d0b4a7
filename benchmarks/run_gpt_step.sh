#!/usr/bin/env bash
# One GPT training step, kiln and PyTorch on the same machine (issue: nn benchmarks).
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${OMP_NUM_THREADS:-$(nproc)}"
OMP_NUM_THREADS=$threads ${KILN_BUILD_DIR:-build}/benchmarks/bench_gpt_step
OMP_NUM_THREADS=$threads ${KILN_BUILD_DIR:-build}/benchmarks/bench_gpt_step --checkpointing
OMP_NUM_THREADS=$threads /usr/bin/python3 benchmarks/gpt_step_torch.py
