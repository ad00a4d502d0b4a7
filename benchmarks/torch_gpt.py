"""The GPT-2-layout model the PyTorch baselines train (gpt_step_torch.py, baby_gpt_torch.py on the
CPU, gpt_torch_gpu.py on a GPU): pre-norm blocks, tanh GELU MLP 4d wide, learned positions, tied
embeddings, GPT-2 initialisation. Attention is F.scaled_dot_product_attention (causal, fused)
where torch has it (2.0 and later); Debian's torch 1.13 has not, and there it is the explicit
masked softmax."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def layer_norm(d, bias):
    norm = nn.LayerNorm(d)
    if not bias:
        norm.bias = None
    return norm


def causal_attention(q, k, v):
    """q, k, v (B, H, T, D) -> (B, H, T, D), causal."""
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    t = q.shape[-2]
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    mask = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
    return scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v


class Block(nn.Module):
    def __init__(self, d, heads, bias):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = layer_norm(d, bias), layer_norm(d, bias)
        self.qkv, self.proj = nn.Linear(d, 3 * d, bias=bias), nn.Linear(d, d, bias=bias)
        self.fc, self.fc_proj = nn.Linear(d, 4 * d, bias=bias), nn.Linear(4 * d, d, bias=bias)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        x = x + self.proj(causal_attention(q, k, v).transpose(1, 2).reshape(b, t, d))
        return x + self.fc_proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, vocab, d, layers, heads, block_size, bias=True):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(block_size, d)
        self.blocks = nn.ModuleList(Block(d, heads, bias) for _ in range(layers))
        self.ln_f = layer_norm(d, bias)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * layers))
            elif p.dim() == 2:
                nn.init.normal_(p, 0.0, 0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = F.linear(self.ln_f(x), self.wte.weight)
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))
