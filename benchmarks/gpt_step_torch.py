#!/usr/bin/python3
"""One GPT training step in PyTorch (the same model as bench_gpt_step.cpp: GPT-2 layout,
d=384, L=6, H=6, T=256, B=8, vocab 65, AdamW), reporting tokens/s from the median of 10 steps.
Debian's torch 1.13 has no fused attention, so attention is the explicit masked softmax."""
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

B, T, V, D, L, H = 8, 256, 65, 384, 6, 6


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.qkv, self.proj = nn.Linear(D, 3 * D), nn.Linear(D, D)
        self.fc, self.fc_proj = nn.Linear(D, 4 * D), nn.Linear(4 * D, D)
        self.register_buffer("mask", torch.ones(T, T, dtype=torch.bool).tril())

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, H, d // H).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(d // H)
        att = att.masked_fill(~self.mask[:t, :t], float("-inf")).softmax(-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.fc_proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, D), nn.Embedding(T, D)
        self.blocks = nn.ModuleList(Block() for _ in range(L))
        self.ln_f = nn.LayerNorm(D)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        logits = F.linear(self.ln_f(x), self.wte.weight)
        return F.cross_entropy(logits.view(-1, V), targets.view(-1))


def main():
    torch.manual_seed(0)
    model = GPT()
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
