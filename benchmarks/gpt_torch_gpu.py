#!/usr/bin/env python3
"""GPT-2 124M training steps in PyTorch on the GPU, the baseline of bench_cuda_gpt.cpp: the same
model (torch_gpt.py: 12 layers, d 768, 12 heads, T 1024, vocabulary 50304, tied embeddings,
GPT-2 initialisation, fused scaled_dot_product_attention), bf16 autocast over fp32 parameters,
AdamW (fused where this torch has it) with weight decay on the matrices only, as kiln's
weight_decay_groups, and clipping at 1; one batch of synthetic uniformly random tokens reused every
step. Runs eager and, where torch.compile works here, compiled, and prints bench_cuda_gpt's table
(peak memory is torch.cuda.max_memory_allocated: bytes in tensors, like kiln's allocator peak).
  gpt_torch_gpu.py [--batch 8] [--warmup 3] [--steps 10] [--peak-tflops 989] [--no-compile]
  gpt_torch_gpu.py --device cpu --smoke    a tiny model on the CPU: checks that the script runs"""
import argparse
import inspect
import statistics
import time

import torch

from torch_gpt import GPT

GPT2_124M = dict(vocab=50304, d=768, layers=12, heads=12, block_size=1024)
SMOKE = dict(vocab=64, d=32, layers=2, heads=2, block_size=32)
GPT2_TOKENS = 50257  # the synthetic tokens stay inside GPT-2's real vocabulary, as in bench_cuda_gpt


def fused_adamw(device):
    """Whether this torch has the fused (one kernel for all parameters) AdamW for `device`."""
    return device.type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters


def make_optimizer(model, device):
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": matrices, "weight_decay": 0.1}, {"params": others, "weight_decay": 0.0}]
    options = dict(lr=6e-4, betas=(0.9, 0.95))
    if fused_adamw(device):
        options["fused"] = True
    return torch.optim.AdamW(groups, **options)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(shape, args, device, compiled):
    """Times training steps; returns (median seconds per step, peak GiB or None, parameters, losses)."""
    torch.manual_seed(0)
    model = GPT(shape["vocab"], shape["d"], shape["layers"], shape["heads"], shape["block_size"]).to(device)
    forward = torch.compile(model) if compiled else model
    optimizer = make_optimizer(model, device)
    high = min(GPT2_TOKENS, shape["vocab"])
    idx = torch.randint(0, high, (args.batch, shape["block_size"]), device=device)
    targets = torch.randint(0, high, (args.batch, shape["block_size"]), device=device)
    losses = []

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            loss = forward(idx, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        synchronize(device)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return statistics.median(times), peak, sum(p.numel() for p in model.parameters()), losses


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100 SXM: 989)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="a tiny model, for checking the script on a CPU")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    shape = SMOKE if args.smoke else GPT2_124M
    print(f"pytorch {torch.__version__} GPT-2 on {device}: B {args.batch}, T {shape['block_size']}, bf16 autocast, "
          f"AdamW fused={fused_adamw(device)}, {args.steps} timed steps after {args.warmup}; "
          f"MFU against {args.peak_tflops:.0f} TFLOP/s")
    rows = []
    for mode in ["eager"] if args.no_compile else ["eager", "compiled"]:
        name = f"pytorch {torch.__version__} {mode}"
        size = f"{args.batch} x {shape['block_size']}"
        if mode == "compiled" and not hasattr(torch, "compile"):
            rows.append(f"| {name} | {size} | n/a | n/a | n/a | n/a (this torch has no torch.compile) |")
            continue
        try:
            seconds, peak, parameters, losses = run(shape, args, device, mode == "compiled")
        except Exception as error:  # e.g. a compiler missing offline: said in the row, the eager row stays
            if mode == "eager":
                raise
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:100].replace("|", "/")
            rows.append(f"| {name} | {size} | n/a | n/a | n/a | n/a (torch.compile failed: {reason}) |")
            continue
        tokens_per_second = args.batch * shape["block_size"] / seconds
        # 6 N + 12 L d T model FLOPs per token, as bench_cuda_gpt.cpp counts them.
        flop_per_token = 6 * parameters + 12 * shape["layers"] * shape["d"] * shape["block_size"]
        mfu = flop_per_token * tokens_per_second / (args.peak_tflops * 1e12)
        print(f"{name}: {parameters / 1e6:.2f}M parameters, loss {losses[0]:.3f} at the first step, "
              f"{losses[-1]:.3f} at the last")
        memory = f"{peak:.2f}" if peak is not None else "n/a"
        rows.append(f"| {name} | {size} | {tokens_per_second:.0f} | {seconds * 1e3:.1f} | {memory} | {100 * mfu:.1f}% |")
    print("| implementation | B x T | tokens/s | ms/step | peak memory (GiB) | MFU |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
