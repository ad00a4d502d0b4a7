// Memory-bound kernels against the machine's copy bandwidth: memcpy (the ceiling), softmax,
// layer_norm, and a chain of three elementwise ops (mul, add, gelu) run as three kernels.
// GB/s counts the bytes each kernel must read and write once.
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
  return 0;
}
