#!/usr/bin/env python3
"""PyTorch's fused attention on the GPU, the baseline of bench_cuda_attention.cpp:
F.scaled_dot_product_attention(q, k, v, is_causal=True) on the same shapes (16k tokens per batch,
B = 16384 / T; width 2048, H = 2048 / D; T 1024 and 4096; D 64 and 128; contiguous (B, H, T, D)
leaves), forward and forward + backward with a fixed random output gradient, bf16 and f32, FLOPs
counted as there (forward 4 B H T^2 D / 2 for causal, backward 2.5 times the forward), times the
median wall time around the call and a device synchronisation. Prints bench_cuda_attention's table.
  attention_torch_gpu.py
  attention_torch_gpu.py --device cpu --smoke    tiny shapes on the CPU: checks that the script runs"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from torch_gpt import causal_attention


def median_seconds(body, device, repeats, warmup=1):
    for _ in range(warmup):
        body()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        body()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, for checking the script on a CPU")
    args = parser.parse_args()
    device = torch.device(args.device)
    tokens, width, lengths, dims = (512, 128, (64, 128), (32, 64)) if args.smoke else (16384, 2048, (1024, 4096), (64, 128))
    kernel = "sdpa" if hasattr(F, "scaled_dot_product_attention") else "explicit softmax (no sdpa in this torch)"
    name = f"pytorch {torch.__version__} {kernel}"
    torch.manual_seed(0)
    print("| implementation | T | D | B x H | dtype | pass | ms | TFLOP/s |")
    print("|---|---|---|---|---|---|---|---|")
    for dtype, dtype_name in ((torch.bfloat16, "bf16"), (torch.float32, "f32")):
        for length in lengths:
            for dim in dims:
                batch, heads = tokens // length, width // dim
                shape = (batch, heads, length, dim)
                q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
                output_grad = torch.randn(shape, device=device, dtype=dtype)

                def forward_backward():
                    q.grad = k.grad = v.grad = None
                    causal_attention(q, k, v).backward(output_grad)

                # Few repeats at T = 4096: each call is long enough to time alone (as in kiln's).
                repeats = 3 if length >= 4096 else 7
                forward_s = median_seconds(lambda: causal_attention(q, k, v), device, repeats)
                training_s = median_seconds(forward_backward, device, repeats)
                forward_flop = 4 * batch * heads * length * length * dim / 2
                for pass_name, seconds, flop in (("forward", forward_s, forward_flop),
                                                 ("forward + backward", training_s, 3.5 * forward_flop)):
                    print(f"| {name} | {length} | {dim} | {batch} x {heads} | {dtype_name} | {pass_name} | "
                          f"{seconds * 1e3:.2f} | {flop / seconds / 1e12:.1f} |")


if __name__ == "__main__":
    main()
