#!/usr/bin/python3
"""The default main job's setting in PyTorch, for docs/PERFORMANCE.md: nanoGPT's "baby GPT" on
the same char-level shards kiln-prepare writes (configs/shakespeare_char.json): GPT-2 layout
without biases, tied embeddings, 4 layers, 4 heads, d_model 128, block 64, batch 12, 2000 steps,
AdamW (lr 2e-3, betas 0.9/0.99, weight decay 0.1 on weights and embeddings), 100 warmup steps
then cosine to 2e-4, clipping at 1.0, no dropout. Batches are drawn as kiln's loader draws them
(a seeded random order of the block-aligned windows) and the validation loss is the mean over
the same 40 batches from the start of val.bin.

  /usr/bin/python3 benchmarks/baby_gpt_torch.py data/cache/shakespeare_char [--lr 2e-3] [--steps 2000]
"""
import argparse
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from torch_gpt import GPT

L, H, D, T, B = 4, 4, 128, 64, 12


def read_shard(path):
    header = np.fromfile(path, dtype="<i4", count=256)
    assert header[0] == 20240520 and header[1] == 1, f"{path}: not an llm.c uint16 shard"
    return np.fromfile(path, dtype="<u2", offset=256 * 4, count=int(header[2])).astype(np.int64)


def windows(tokens, order):
    """Inputs and targets of the block-aligned windows `order` (B, T) each."""
    starts = np.asarray(order) * T
    x = np.stack([tokens[s:s + T] for s in starts])
    y = np.stack([tokens[s + 1:s + T + 1] for s in starts])
    return torch.from_numpy(x), torch.from_numpy(y)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("data_dir")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    train = read_shard(Path(args.data_dir) / "train.bin")
    val = read_shard(Path(args.data_dir) / "val.bin")
    vocab = int(max(train.max(), val.max())) + 1

    # All cores unless OMP_NUM_THREADS says otherwise (torch counts physical cores by default).
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count())))
    torch.manual_seed(1337)
    rng = np.random.default_rng(1337)
    model = GPT(vocab, D, L, H, T, bias=False)
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.99))
    min_lr, warmup = args.lr / 10, 100

    def lr_at(step):
        if step < warmup:
            return args.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, args.steps - warmup)
        return min_lr + 0.5 * (args.lr - min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))

    train_windows = (len(train) - 1) // T
    order, position = rng.permutation(train_windows), 0
    start = time.perf_counter()
    for step in range(args.steps):
        if position + B > len(order):
            order, position = rng.permutation(train_windows), 0
        x, y = windows(train, order[position:position + B])
        position += B
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 250 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}  {time.perf_counter() - start:.0f} s", flush=True)
    seconds = time.perf_counter() - start

    model.eval()
    with torch.no_grad():
        losses = [model(*windows(val, range(i * B, (i + 1) * B))).item() for i in range(40)]
    print(f"pytorch {torch.__version__}, {torch.get_num_threads()} threads: val loss {np.mean(losses):.4f} "
          f"after {args.steps} steps, training took {seconds:.0f} s ({args.steps * B * T / seconds:.0f} tokens/s)")


if __name__ == "__main__":
    main()
