#!/usr/bin/env bash
# Copies what the GPU machine lacks into .device/ (ignored by git) so that scripts/gpu_check.sh
# can build there: Catch2's single header.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .device/include/catch2
cp /usr/include/catch2/catch.hpp .device/include/catch2/
echo ".device/ ready: $(du -sh .device | cut -f1)"
