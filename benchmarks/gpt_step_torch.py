#!/usr/bin/python3
"""One GPT training step in PyTorch (the same model as bench_gpt_step.cpp: GPT-2 layout,
d=384, L=6, H=6, T=256, B=8, vocab 65, AdamW), reporting tokens/s from the median of 10 steps.
The model is benchmarks/torch_gpt.py."""
import statistics
import time

import torch

from torch_gpt import GPT

B, T, V, D, L, H = 8, 256, 65, 384, 6, 6


def main():
    torch.manual_seed(0)
    model = GPT(V, D, L, H, T)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    idx, targets = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))
    times = []
    for step in range(12):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        model(idx, targets).backward()
        optimizer.step()
        if step >= 2:
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    print(f"pytorch {torch.__version__}: {B * T / seconds:.0f} tokens/s ({seconds * 1e3:.1f} ms/step), "
          f"{torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
