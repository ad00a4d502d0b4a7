#!/usr/bin/env bash
# The README's test command: installs dependencies, builds kiln and runs the whole test suite
# (gradient checks, PyTorch parity, engine, errors, install, and the GPU tests, which report as
# skipped on a machine without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh "$@"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"
ctest --test-dir build --output-on-failure --timeout 1500 -j 2
