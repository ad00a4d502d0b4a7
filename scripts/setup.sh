#!/usr/bin/env bash
# Installs kiln's build and test dependencies from Debian 12's archive (only what is missing).
# Called by scripts/train.sh and scripts/test.sh; safe to run again.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git
  libopenblas-openmp-dev      # BLAS, OpenMP build: one thread pool with kiln's kernels
  libopenmpi-dev openmpi-bin  # the MPI backend and mpirun
  nlohmann-json3-dev          # configs, safetensors headers
  catch2                      # the test framework (v2)
  zlib1g-dev                  # gzip decompression for the Fashion-MNIST IDX files
  dataset-fashion-mnist       # Fashion-MNIST in IDX format (/usr/share/datasets/fashion-mnist)
  python3-torch python3-numpy # the reference oracle for parity tests (Debian's /usr/bin/python3)
  gnuplot-nox                 # kiln-compare's PNG plots (optional: without it the plots are skipped)
)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "kiln setup: installing ${missing[*]}"
  sudo_cmd=()
  if [ "$(id -u)" -ne 0 ]; then
    sudo_cmd=(sudo)
  fi
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The run-file tests (tests/test_checkpoint.cpp, tests/test_train_logs.cpp) read kiln's
# checkpoints and event files with the real readers: the `safetensors` and `tensorboard` PyPI
# packages, installed for the python3 first on PATH (Debian packages neither).
if ! python3 -c 'import tensorboard, safetensors' 2>/dev/null; then
  echo "kiln setup: pip-installing safetensors and tensorboard for $(command -v python3)"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore safetensors tensorboard ||
    echo "kiln setup: warning: pip install failed (offline?); test_run_files will fail until it succeeds" >&2
fi
# Loading a checkpoint with torch needs safetensors.torch under Debian's /usr/bin/python3 (the
# python with torch), which is externally managed (PEP 668): so safetensors alone (no deps; its
# wheel is abi3) goes into a private directory that tests/reference/read_safetensors.py puts on
# sys.path. Debian's torch and numpy stay untouched.
debian_site="${KILN_DEBIAN_SITE:-$HOME/.cache/kiln/debian-python-site}"
if ! PYTHONPATH="$debian_site" /usr/bin/python3 -c 'import safetensors.torch' 2>/dev/null; then
  echo "kiln setup: pip-installing safetensors into $debian_site for /usr/bin/python3"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --upgrade \
    --target "$debian_site" safetensors ||
    echo "kiln setup: warning: pip install failed (offline?); test_run_files will fail until it succeeds" >&2
fi
