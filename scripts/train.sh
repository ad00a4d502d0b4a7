#!/usr/bin/env bash
# The README's first command: installs dependencies, builds kiln, prepares character-level
# tinyshakespeare (or the corpus given as the first argument) and pretrains nanoGPT's "baby GPT"
# (configs/shakespeare_char.json: 4 layers, 4 heads, d_model 128, block 64, global batch 12,
# 2000 steps) data-parallel on 2 ranks, then prints samples from the final checkpoint.
#
# Environment: RANKS (default 2), CONFIG (default configs/shakespeare_char.json). Extra
# kiln-train arguments can follow the corpus, e.g. ./scripts/train.sh "" --set training.max_steps=200
# The run directory (out_dir of the config) is replaced on every call.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh
corpus=$(./scripts/get_data.sh "${1:-}")
shift || true
ranks=${RANKS:-2}
config=${CONFIG:-configs/shakespeare_char.json}
data_dir=data/cache/shakespeare_char
run_dir=runs/shakespeare_char

# Shards are made once per corpus: a marker remembers which corpus they came from.
if [ ! -f "$data_dir/train.bin" ] || [ "$(cat "$data_dir/.corpus" 2> /dev/null)" != "$corpus" ]; then
  ./build/examples/kiln-prepare --out "$data_dir" --tokenizer char "$corpus"
  echo "$corpus" > "$data_dir/.corpus"
fi

launch=()
if command -v mpirun > /dev/null && [ "$ranks" -gt 1 ]; then
  # Open MPI refuses root unless told; --oversubscribe allows more ranks than cores; binding is
  # left to kiln, which gives each rank its share of the cores as OpenMP threads.
  launch=(mpirun -np "$ranks" --oversubscribe --bind-to none)
  [ "$(id -u)" -eq 0 ] && launch+=(--allow-run-as-root)
else
  echo "train.sh: running on one process (mpirun not found or RANKS=1)"
fi

rm -rf "$run_dir"
start=$(date +%s)
"${launch[@]}" ./build/examples/kiln-train --config "$config" --set out_dir="$run_dir" "$@"
echo "train.sh: training took $(( $(date +%s) - start )) s"

echo
echo "==== samples from $run_dir ===="
./build/examples/kiln-generate --checkpoint "$run_dir" --prompt "ROMEO:" --max-tokens 300 \
  --temperature 0.8 --top-k 200 --seed 1 --num-samples 2
