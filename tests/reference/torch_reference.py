#!/usr/bin/python3
"""PyTorch half of kiln's parity tests.

Usage: torch_reference.py MANIFEST.json INPUTS.safetensors RESULTS.safetensors

For every case in the manifest: load the inputs, apply each input's transform (transpose or
slice, to make non-contiguous operands exactly as the C++ side did), run OPS[op](*inputs,
**params), and write each output and the gradient of L = sum_j sum(out_j * w_j) with respect to
every input that requires grad. Runs under Debian's python3-torch (CPU).
"""
import json
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

DTYPES = {"F32": np.float32, "F64": np.float64, "I32": np.int32, "I64": np.int64, "BOOL": np.bool_,
          "F16": np.float16}
CODES = {np.dtype(v): k for k, v in DTYPES.items()}


def load_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    base = 8 + length
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        array = np.frombuffer(data[base + begin:base + end], dtype=DTYPES[entry["dtype"]])
        tensors[name] = torch.from_numpy(array.reshape(entry["shape"]).copy())
    return tensors


def save_safetensors(path, tensors):
    header, chunks, offset = {}, [], 0
    for name, tensor in tensors.items():
        array = tensor.detach().cpu().contiguous().numpy()  # (ascontiguousarray would turn 0-d into 1-d)
        raw = array.tobytes()
        header[name] = {"dtype": CODES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in chunks:
            f.write(raw)


def transform(tensor, spec):
    if not spec:
        return tensor
    if "transpose" in spec:
        return tensor.transpose(*spec["transpose"])
    if "slice" in spec:
        dim, start, end, step = spec["slice"]
        index = [slice(None)] * tensor.dim()
        index[dim] = slice(start, end, step)
        return tensor[tuple(index)]
    raise ValueError(f"unknown transform {spec}")


def reduce_all_or(fn_all, fn_dims):
    def run(x, dims=None, keepdim=False, **kw):
        if not dims:
            return fn_all(x, **kw) if not keepdim else fn_dims(x, tuple(range(x.dim())), keepdim=True, **kw)
        return fn_dims(x, tuple(dims), keepdim=keepdim, **kw)
    return run


def var(x, dims=None, correction=1.0, keepdim=False):
    d = tuple(dims) if dims else tuple(range(x.dim()))
    return torch.var(x, dim=d, unbiased=bool(correction), keepdim=keepdim)


def rms_norm(x, w=None, eps=1e-6):
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y * w if w is not None else y


def attention(q, k, v, causal=True, scale=None):
    """softmax(q k^T scale + mask) v written out (torch 1.13 has no F.scaled_dot_product_attention).
    q (B, Hq, Tq, D), k, v (B, Hkv, Tk, D); query head h reads kv head h // (Hq // Hkv); the causal
    mask is bottom-right aligned: query i sees keys j <= Tk - Tq + i."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = q @ k.transpose(-2, -1) * (scale if scale is not None else q.shape[-1] ** -0.5)
    if causal:
        tq, tk = q.shape[2], k.shape[2]
        hidden = torch.ones(tq, tk, dtype=torch.bool).triu(tk - tq + 1)
        scores = scores.masked_fill(hidden, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def rope(x, positions, theta=10000.0):
    """x (B, T, H, D): pair (2i, 2i+1) of token t rotated by positions[t] * theta^(-2i/D)."""
    dim = x.shape[-1]
    frequencies = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angle = positions.to(torch.float64)[:, None] * frequencies[None, :]  # (T, D/2)
    cos, sin = angle.cos().to(x.dtype)[None, :, None, :], angle.sin().to(x.dtype)[None, :, None, :]
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)


OPS = {
    # elementwise
    "add": lambda a, b, alpha=1.0: torch.add(a, b, alpha=alpha),
    "sub": lambda a, b, alpha=1.0: torch.sub(a, b, alpha=alpha),
    "mul": torch.mul,
    "div": torch.div,
    "pow": torch.pow,
    "pow_scalar": lambda a, exponent: torch.pow(a, exponent),
    "maximum": torch.maximum,
    "minimum": torch.minimum,
    "neg": torch.neg,
    "exp": torch.exp,
    "log": torch.log,
    "sqrt": torch.sqrt,
    "rsqrt": torch.rsqrt,
    "abs": torch.abs,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "gelu": lambda x, approximate="none": F.gelu(x, approximate=approximate),
    "silu": F.silu,
    "sin": torch.sin,
    "cos": torch.cos,
    "reciprocal": torch.reciprocal,
    "sign": torch.sign,
    "square": torch.square,
    "clamp": lambda x, low=None, high=None: torch.clamp(x, low, high),
    "where": torch.where,
    "masked_fill": lambda x, mask, value: x.masked_fill(mask, value),
    "eq": torch.eq, "ne": torch.ne, "lt": torch.lt, "le": torch.le, "gt": torch.gt, "ge": torch.ge,
    "logical_and": torch.logical_and, "logical_or": torch.logical_or, "logical_not": torch.logical_not,
    # reductions
    "sum": reduce_all_or(torch.sum, torch.sum),
    "mean": reduce_all_or(torch.mean, torch.mean),
    "var": var,
    "logsumexp": lambda x, dims, keepdim=False: torch.logsumexp(x, dim=tuple(dims), keepdim=keepdim),
    "amax": lambda x, dims=None, keepdim=False: torch.amax(x, dim=tuple(dims or range(x.dim())), keepdim=keepdim),
    "amin": lambda x, dims=None, keepdim=False: torch.amin(x, dim=tuple(dims or range(x.dim())), keepdim=keepdim),
    "max_dim": lambda x, dim, keepdim=False: tuple(torch.max(x, dim=dim, keepdim=keepdim)),
    "min_dim": lambda x, dim, keepdim=False: tuple(torch.min(x, dim=dim, keepdim=keepdim)),
    "argmax": lambda x, dim=None, keepdim=False: torch.argmax(x, dim=dim, keepdim=keepdim),
    "argmin": lambda x, dim=None, keepdim=False: torch.argmin(x, dim=dim, keepdim=keepdim),
    # matrix products
    "matmul": torch.matmul,
    "linear": F.linear,
    # shape
    "cat": lambda *xs, dim=0: torch.cat(xs, dim=dim),
    "stack": lambda *xs, dim=0: torch.stack(xs, dim=dim),
    "split": lambda x, split_size, dim=0: tuple(torch.split(x, split_size, dim=dim)),
    "chunk": lambda x, chunks, dim=0: tuple(torch.chunk(x, chunks, dim=dim)),
    # views
    "reshape": lambda x, shape: x.reshape(shape),
    "permute": lambda x, dims: x.permute(*dims),
    "expand": lambda x, shape: x.expand(*shape),
    "select": lambda x, dim, index: x.select(dim, index),
    "narrow": lambda x, dim, start, length: x.narrow(dim, start, length),
    "unsqueeze": lambda x, dim: x.unsqueeze(dim),
    "squeeze": lambda x: x.squeeze(),
    # indexing
    "index_select": lambda x, index, dim: torch.index_select(x, dim, index),
    "index_add": lambda x, index, source, dim, alpha=1.0: torch.index_add(x, dim, index, source, alpha=alpha),
    "gather": lambda x, index, dim: torch.gather(x, dim, index),
    "scatter_add": lambda x, index, source, dim: torch.scatter_add(x, dim, index, source),
    "embedding": lambda indices, weight, padding_idx=None: F.embedding(indices, weight, padding_idx=padding_idx),
    "one_hot": lambda indices, num_classes=-1: F.one_hot(indices, num_classes),
    "topk": lambda x, k, dim=-1, largest=True, sorted=True: tuple(torch.topk(x, k, dim=dim, largest=largest, sorted=sorted)),
    "sort": lambda x, dim=-1, descending=False: tuple(torch.sort(x, dim=dim, descending=descending, stable=True)),
    "argsort": lambda x, dim=-1, descending=False: torch.sort(x, dim=dim, descending=descending, stable=True)[1],
    # softmax, losses, norms
    "softmax": lambda x, dim: torch.softmax(x, dim),
    "log_softmax": lambda x, dim: torch.log_softmax(x, dim),
    "cross_entropy": lambda logits, targets, ignore_index=-100, label_smoothing=0.0, reduction="mean":
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=ignore_index,
                        label_smoothing=label_smoothing, reduction=reduction).reshape(
                            targets.shape if reduction == "none" else ()),
    "layer_norm": lambda x, w=None, b=None, eps=1e-5: F.layer_norm(x, (x.shape[-1],), w, b, eps),
    "rms_norm": rms_norm,
    "add_layer_norm": lambda x, update, w=None, b=None, eps=1e-5:
        (x + update, F.layer_norm(x + update, (x.shape[-1],), w, b, eps)),
    "add_rms_norm": lambda x, update, w=None, eps=1e-6: (x + update, rms_norm(x + update, w, eps)),
    # attention
    "attention": attention,
    "rope": rope,
    # dtype conversions (compared exactly)
    "to_bf16": lambda x: x.to(torch.bfloat16).to(torch.float32),
    "to_f16": lambda x: x.to(torch.float16).to(torch.float32),
}


def main():
    manifest_path, inputs_path, results_path = sys.argv[1:4]
    with open(manifest_path) as f:
        manifest = json.load(f)
    tensors = load_safetensors(inputs_path)
    results = {}
    for case in manifest:
        name = case["name"]
        leaves = []
        for spec in case["inputs"]:
            leaf = tensors[spec["key"]].clone()
            if spec["requires_grad"]:
                leaf.requires_grad_(True)
            leaves.append(leaf)
        operands = [transform(leaf, spec["transform"]) for leaf, spec in zip(leaves, case["inputs"])]
        out = OPS[case["op"]](*operands, **case["params"])
        outputs = list(out) if isinstance(out, (tuple, list)) else [out]
        if len(outputs) != case["outputs"]:
            raise SystemExit(f"{name}: torch returned {len(outputs)} outputs, kiln {case['outputs']}")
        loss = None
        for j, o in enumerate(outputs):
            results[f"{name}/out{j}"] = o
            if o.is_floating_point() and o.requires_grad:
                term = (o * tensors[f"{name}/w{j}"].to(o.dtype)).sum()
                loss = term if loss is None else loss + term
        wanted = [leaf for leaf in leaves if leaf.requires_grad]
        if loss is not None and wanted:
            grads = torch.autograd.grad(loss, wanted, allow_unused=True)
            grads = iter(grads)
            for i, leaf in enumerate(leaves):
                if leaf.requires_grad:
                    g = next(grads)
                    results[f"{name}/grad{i}"] = g if g is not None else torch.zeros_like(leaf)
    save_safetensors(results_path, results)


if __name__ == "__main__":
    main()
