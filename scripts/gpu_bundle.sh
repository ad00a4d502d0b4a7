#!/usr/bin/env bash
# Copies what the GPU machine lacks into .device/ (ignored by git) so that scripts/gpu_check.sh
# can build there: the header-only Catch2 and nlohmann/json. (Without OpenBLAS or zlib there,
# gpu_check.sh configures kiln with -DKILN_BLAS=none and -DKILN_WITH_ZLIB=OFF.)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .device/include/catch2
cp /usr/include/catch2/catch.hpp .device/include/catch2/
cp -r /usr/include/nlohmann .device/include/
echo ".device/ ready: $(du -sh .device | cut -f1)"
