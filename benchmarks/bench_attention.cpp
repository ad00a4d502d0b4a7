// Fused flash-style attention against the plain path it replaces (attention_reference: matmul,
// causal mask, softmax, matmul, with the T x T scores materialised), forward + backward, causal,
// f32, B = 1, H = 6, D = 64. Reports the median wall time of several runs and the peak bytes the
// allocator handed out beyond the inputs (outputs, gradients, activations and kernel scratch).
#include <omp.h>

#include "bench_util.h"
#include "kiln.h"

using namespace kiln;

namespace {

using Attention = Tensor (*)(const Tensor&, const Tensor&, const Tensor&, bool, std::optional<double>);

// One forward + backward from fresh leaves over the same data, so gradients never accumulate.
void forward_backward(Attention attention, const std::vector<Tensor>& inputs, const Tensor& weight) {
  std::vector<Tensor> leaves;
  for (const Tensor& input : inputs) leaves.push_back(input.detach().set_requires_grad(true));
  attention(leaves[0], leaves[1], leaves[2], true, std::nullopt).backward(weight);
}

}  // namespace

int main() {
  const int64_t batch = 1, heads = 6, dim = 64;
  std::printf("B %ld, H %ld, D %ld, causal, f32, forward + backward; threads %d\n\n", static_cast<long>(batch),
              static_cast<long>(heads), static_cast<long>(dim), omp_get_max_threads());
  std::puts("| T | path | time (ms) | peak extra memory (MiB) | fused speedup | fused memory saving |");
  std::puts("|---|---|---|---|---|---|");
  for (int64_t length : {256, 1024, 2048}) {
    Shape shape{batch, heads, length, dim};
    std::vector<Tensor> inputs = {randn(shape), randn(shape), randn(shape)};
    Tensor weight = randn(shape);
    int repeats = length >= 2048 ? 5 : 11;
    double seconds[2], peak_mib[2];
    Attention paths[2] = {scaled_dot_product_attention, attention_reference};
    for (int p = 0; p < 2; ++p) {
      reset_peak_memory();
      int64_t before = memory_stats().current_bytes;
      forward_backward(paths[p], inputs, weight);
      peak_mib[p] = static_cast<double>(memory_stats().peak_bytes - before) / (1 << 20);
      seconds[p] = bench::median_seconds([&] { forward_backward(paths[p], inputs, weight); }, repeats, 1);
    }
    const char* names[2] = {"fused (scaled_dot_product_attention)", "reference (attention_reference)"};
    for (int p = 0; p < 2; ++p) {
      bench::row({std::to_string(length), names[p], bench::format("%.2f", seconds[p] * 1e3),
                  bench::format("%.1f", peak_mib[p]), p == 0 ? bench::format("%.2fx", seconds[1] / seconds[0]) : "",
                  p == 0 ? bench::format("%.1fx", peak_mib[1] / peak_mib[0]) : ""});
    }
  }
  return 0;
}
