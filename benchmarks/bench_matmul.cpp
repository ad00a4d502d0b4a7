// kiln's matmul against a direct cblas_sgemm call on the same buffers (f32, square sizes).
// The two should be within a few percent: kiln adds only dispatch and a transpose-flag check.
#include <cblas.h>

#include "bench_util.h"
#include "kiln.h"

using namespace kiln;

int main() {
  std::puts("| n | cblas_sgemm GFLOP/s | kiln matmul GFLOP/s | kiln / cblas |");
  std::puts("|---|---|---|---|");
  for (int64_t n : {512, 1024, 2048}) {
    Tensor a = randn({n, n}), b = randn({n, n});
    Tensor c = empty({n, n});
    double flops = 2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n);
    int repeats = n >= 2048 ? 5 : 11;
    double blas = bench::median_seconds([&] {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(n), static_cast<int>(n),
                  static_cast<int>(n), 1.0f, a.data<float>(), static_cast<int>(n), b.data<float>(), static_cast<int>(n),
                  0.0f, c.data<float>(), static_cast<int>(n));
    }, repeats);
    double ours = bench::median_seconds([&] { matmul(a, b); }, repeats);
    bench::row({std::to_string(n), bench::format("%.1f", flops / blas / 1e9), bench::format("%.1f", flops / ours / 1e9),
                bench::format("%.3f", blas / ours)});
  }
  return 0;
}
