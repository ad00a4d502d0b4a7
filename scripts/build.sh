#!/usr/bin/env bash
# Configures and builds kiln in ./build (Release). Extra arguments go to cmake's configure step,
# e.g. ./scripts/build.sh -DKILN_ENABLE_CUDA=OFF
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" > build.configure.log 2>&1 || {
  cat build.configure.log
  exit 1
}
rm -f build.configure.log
cmake --build build -j "$(nproc)"
