#!/usr/bin/python3
"""PyTorch reference implementations of kiln's transformer models, for parity tests.

Usage: torch_models.py CONFIG.json INPUTS.safetensors RESULTS.safetensors

CONFIG.json is kiln's TransformerConfig JSON. INPUTS holds the model's parameters under kiln's
names plus "tokens" and "targets" (B, T) i64. RESULTS receives "loss", "cross_entropy",
"logits" and "grad/<name>" for every parameter. The model is written functionally over the
parameter dictionary, following the same definitions as kiln (pre-norm blocks, fused qkv,
RoPE on interleaved pairs, GQA by repeating kv heads, SwiGLU, MoE routing with capacity).
"""
import json
import math
import sys

import torch
import torch.nn.functional as F

from torch_reference import load_safetensors, save_safetensors


def rope(x, positions, theta):
    # x (B, T, H, D): pairs (2i, 2i+1) rotated by positions[t] * theta^(-2i/D)
    d = x.shape[-1]
    inv = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angle = positions.to(torch.float64)[:, None] * inv[None, :]          # (T, D/2)
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2)


def linear(p, name, x):
    return F.linear(x, p[name + ".weight"], p.get(name + ".bias"))


def norm(p, name, x, cfg):
    if cfg["family"] == "llama":
        w = p[name + ".weight"]
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg["norm_eps"]) * w
    return F.layer_norm(x, (x.shape[-1],), p.get(name + ".weight"), p.get(name + ".bias"), cfg["norm_eps"])


def attention(p, name, x, positions, cfg):
    b, t, d = x.shape
    h, hkv = cfg["n_heads"], cfg["n_kv_heads"]
    hd = d // h
    qkv = linear(p, name + ".qkv", x)
    q, k, v = qkv.split([h * hd, hkv * hd, hkv * hd], dim=-1)
    q, k, v = q.view(b, t, h, hd), k.view(b, t, hkv, hd), v.view(b, t, hkv, hd)
    if cfg["family"] == "llama":
        q, k = rope(q, positions, cfg["rope_theta"]), rope(k, positions, cfg["rope_theta"])
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    k, v = k.repeat_interleave(h // hkv, dim=1), v.repeat_interleave(h // hkv, dim=1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(hd)
    mask = torch.ones(t, t, dtype=torch.bool).tril()
    scores = scores.masked_fill(~mask, float("-inf"))
    y = torch.softmax(scores, dim=-1) @ v
    return linear(p, name + ".proj", y.transpose(1, 2).reshape(b, t, d))


def swiglu(p, name, x):
    return linear(p, name + ".down", F.silu(linear(p, name + ".gate", x)) * linear(p, name + ".up", x))


def moe(p, name, x, cfg):
    m = cfg["moe"]
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    n, e, k = x.shape[0], m["n_experts"], m["top_k"]
    logits = linear(p, name + ".router", x)
    if m["scoring"] == "softmax":
        probs = torch.softmax(logits, -1)
        weights, idx = torch.topk(probs, k, dim=-1)
    else:
        scores = torch.sigmoid(logits)
        eligible = scores.detach()
        if m["n_groups"] > 1:
            per = e // m["n_groups"]
            strength = eligible.view(n, m["n_groups"], per).topk(min(2, per), dim=-1).values.sum(-1)
            groups = strength.topk(m["topk_groups"], dim=-1).indices
            gmask = torch.zeros(n, m["n_groups"]).scatter_(1, groups, 1.0) > 0
            emask = gmask.unsqueeze(-1).expand(n, m["n_groups"], per).reshape(n, e)
            eligible = eligible.masked_fill(~emask, 0.0)
        idx = eligible.topk(k, dim=-1).indices
        weights = scores.gather(1, idx)
        probs = scores / scores.sum(-1, keepdim=True)
    if m["normalize_topk"]:
        weights = weights / weights.sum(-1, keepdim=True)
    weights = weights * m["routed_scaling"]
    capacity = math.ceil(m["capacity_factor"] * n * k / e) if m["capacity_factor"] > 0 else n * k
    load = [0] * e
    tokens_of = [[] for _ in range(e)]
    slots_of = [[] for _ in range(e)]
    chosen = idx.tolist()
    for t in range(n):
        for s in range(k):
            ex = chosen[t][s]
            load[ex] += 1
            if load[ex] > capacity:
                continue
            tokens_of[ex].append(t)
            slots_of[ex].append(t * k + s)
    out = torch.zeros_like(x)
    flat_w = weights.reshape(-1)
    for ex in range(e):
        if not tokens_of[ex]:
            continue
        ti = torch.tensor(tokens_of[ex])
        y = swiglu(p, f"{name}.experts.{ex}", x[ti]) * flat_w[torch.tensor(slots_of[ex])].unsqueeze(1)
        out = out.index_add(0, ti, y)
    if m["n_shared_experts"] > 0:
        out = out + swiglu(p, name + ".shared", x)
    fractions = torch.tensor([c / (n * k) for c in load], dtype=x.dtype)
    aux = (fractions * probs.mean(0)).sum() * e * m["aux_loss_weight"]
    if m["z_loss_weight"] > 0:
        aux = aux + torch.logsumexp(logits, -1).pow(2).mean() * m["z_loss_weight"]
    return out.reshape(shape), aux


def forward(p, cfg, tokens):
    b, t = tokens.shape
    positions = torch.arange(t)
    x = F.embedding(tokens, p["token_embedding.weight"])
    if cfg["family"] != "llama":
        x = x + F.embedding(positions, p["position_embedding.weight"])
    aux_total = None
    m = cfg["moe"]
    for layer in range(cfg["n_layers"]):
        name = f"blocks.{layer}"
        x = x + attention(p, name + ".attn", norm(p, name + ".norm1", x, cfg), positions, cfg)
        h = norm(p, name + ".norm2", x, cfg)
        if m["n_experts"] > 0 and (layer + 1) % m["every"] == 0:
            y, aux = moe(p, name + ".moe", h, cfg)
            aux_total = aux if aux_total is None else aux_total + aux
        elif cfg["family"] == "llama":
            y = swiglu(p, name + ".mlp", h)
        else:
            y = linear(p, name + ".mlp.proj", F.gelu(linear(p, name + ".mlp.fc", h), approximate="tanh"))
        x = x + y
    x = norm(p, "final_norm", x, cfg)
    head = p["head.weight"] if "head.weight" in p else p["token_embedding.weight"]
    return F.linear(x, head), aux_total


def main():
    config_path, inputs_path, results_path = sys.argv[1:4]
    with open(config_path) as f:
        cfg = json.load(f)
    tensors = load_safetensors(inputs_path)
    tokens, targets = tensors.pop("tokens"), tensors.pop("targets")
    params = {name: t.clone().requires_grad_(True) for name, t in tensors.items()}
    logits, aux = forward(params, cfg, tokens)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    loss = ce if aux is None else ce + aux
    loss.backward()
    results = {"loss": loss.detach(), "cross_entropy": ce.detach(), "logits": logits.detach()}
    for name, t in params.items():
        results["grad/" + name] = t.grad if t.grad is not None else torch.zeros_like(t)
    save_safetensors(results_path, results)


if __name__ == "__main__":
    main()
