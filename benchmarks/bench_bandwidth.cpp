// Memory-bound kernels against the machine's copy bandwidth: memcpy (the ceiling), softmax,
// layer_norm, a chain of three elementwise ops (mul, add, gelu) run as three kernels, and a
// pre-norm block's residual add + layer_norm, fused (add_layer_norm) against add then layer_norm,
// forward and forward + backward. GB/s counts the bytes each kernel must read and write once.
#include <omp.h>

#include <cstring>

#include "bench_util.h"
#include "kiln.h"

using namespace kiln;

int main() {
  const int64_t rows = 8192, cols = 1024;  // 32 MiB of f32 per tensor: far beyond the caches
  const double tensor_bytes = static_cast<double>(rows * cols) * 4.0;
  Tensor x = randn({rows, cols}), y = randn({rows, cols}), z = randn({rows, cols});
  Tensor weight = ones({cols}), bias = zeros({cols});
  Tensor target = empty({rows, cols});

  double copy = bench::median_seconds([&] {
    std::memcpy(target.raw_data(), x.raw_data(), static_cast<size_t>(tensor_bytes));
  });
  double softmax_time = bench::median_seconds([&] { softmax(x, -1); });
  double norm_time = bench::median_seconds([&] { layer_norm(x, weight, bias); });
  double chain_time = bench::median_seconds([&] { gelu(add(mul(x, y), z), GeluApproximation::tanh); });
  auto [unfused_time, fused_time] = bench::paired_median_seconds([&] { layer_norm(add(x, y), weight, bias); },
                                                                  [&] { add_layer_norm(x, y, weight, bias); });

  // Forward and backward of h = x + u, y = layer_norm(h), with both h and y used downstream (as in
  // a block: h feeds the next residual add). The loss's own ops cost the same on both sides.
  Tensor leaf_x = x.detach(), leaf_u = y.detach(), grad_h = randn({rows, cols}), grad_y = randn({rows, cols});
  leaf_x.set_requires_grad(true);
  leaf_u.set_requires_grad(true);
  auto backward_through = [&](const Tensor& h, const Tensor& normed) {
    run_backward({h, normed}, {grad_h, grad_y}, false);
    leaf_x.set_grad(Tensor());
    leaf_u.set_grad(Tensor());
  };
  auto [unfused_step, fused_step] = bench::paired_median_seconds(
      [&] {
        Tensor h = add(leaf_x, leaf_u);
        backward_through(h, layer_norm(h, weight, bias));
      },
      [&] {
        ResidualNorm r = add_layer_norm(leaf_x, leaf_u, weight, bias);
        backward_through(r.sum, r.normed);
      });

  std::printf("tensor (%ld, %ld) f32, %.0f MiB; threads %d\n\n", static_cast<long>(rows), static_cast<long>(cols),
              tensor_bytes / (1 << 20), omp_get_max_threads());
  std::puts("| kernel | bytes moved | time (ms) | GB/s | of memcpy |");
  std::puts("|---|---|---|---|---|");
  auto report = [&](const char* name, double bytes, double seconds) {
    double rate = bytes / seconds / 1e9, ceiling = 2.0 * tensor_bytes / copy / 1e9;
    bench::row({name, bench::format("%.0f MiB", bytes / (1 << 20)), bench::format("%.2f", seconds * 1e3),
                bench::format("%.1f", rate), bench::format("%.0f%%", 100.0 * rate / ceiling)});
  };
  report("memcpy (read + write)", 2.0 * tensor_bytes, copy);
  report("softmax (last dim)", 2.0 * tensor_bytes, softmax_time);
  report("layer_norm (last dim)", 2.0 * tensor_bytes, norm_time);
  // mul reads 2 writes 1, add reads 2 writes 1, gelu reads 1 writes 1.
  report("mul + add + gelu (3 kernels)", 8.0 * tensor_bytes, chain_time);
  // add reads 2 writes 1, layer_norm reads 1 writes 1; fused: reads x and u, writes h and y.
  report("add, then layer_norm (2 kernels)", 5.0 * tensor_bytes, unfused_time);
  report("add_layer_norm (fused)", 4.0 * tensor_bytes, fused_time);
  // Backward adds: the norm reads dy and h and writes dh, then dh + (h's other gradient) is one
  // more add (3); fused: reads dy, h's other gradient and h, writes dh.
  report("add, then layer_norm, fwd + bwd", 11.0 * tensor_bytes, unfused_step);
  report("add_layer_norm (fused), fwd + bwd", 8.0 * tensor_bytes, fused_step);
  std::printf("\nfused / unfused time: forward %.2f, forward + backward %.2f\n", fused_time / unfused_time,
              fused_step / unfused_step);
  return 0;
}
