// kiln's fused attention on the GPU (scaled_dot_product_attention, kernels/cuda/attention.cu),
// causal, forward and forward + backward, in bf16 and f32. benchmarks/attention_torch_gpu.py
// runs PyTorch's scaled_dot_product_attention on the same shapes and prints the same table.
//
// Shapes follow the FlashAttention papers' benchmark: 16k tokens per batch (B = 16384 / T) and a
// model width of 2048 (H = 2048 / D), T = 1024 and 4096, D = 64 and 128; q, k and v contiguous
// (B, H, T, D) leaves, and the forward + backward gets a fixed random output gradient.
// FLOPs are counted as those papers count them: the forward's two matmuls are 4 B H T^2 D,
// halved for causal masking; the backward is 2.5 times the forward (five matmuls, one of them a
// recomputation), so forward + backward is 3.5 times the forward.
// Times are medians of wall time around the calls and a device synchronisation.
//   bench_cuda_attention
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "bench_util.h"
#include "kernels/backend.h"
#include "kernels/cuda/stream.h"
#include "kiln.h"

using namespace kiln;

namespace {

const Device kGpu = Device::cuda(0);

struct Shape4 {
  int64_t batch, heads, length, dim;
};

double forward_flop(const Shape4& s) {
  return 4.0 * static_cast<double>(s.batch * s.heads) * static_cast<double>(s.length) * static_cast<double>(s.length) *
         static_cast<double>(s.dim) / 2.0;
}

// Median seconds per call of `body`, synchronising the device after each.
double median_seconds(const std::function<void()>& body, int repeats) {
  return bench::median_seconds([&] {
    body();
    cuda::synchronize_device();
  }, repeats, 1);
}

}  // namespace

int main() try {
  if (!cuda::is_available()) {
    std::printf("bench_cuda_attention: no GPU: %s\n", kernels::unavailable_reason(DeviceType::CUDA).c_str());
    return 1;
  }
  std::puts("| implementation | T | D | B x H | dtype | pass | ms | TFLOP/s |");
  std::puts("|---|---|---|---|---|---|---|---|");
  Generator generator(0);
  for (DType dtype : {DType::bf16, DType::f32}) {
    for (int64_t length : {1024, 4096}) {
      for (int64_t dim : {64, 128}) {
        Shape4 s{16384 / length, 2048 / dim, length, dim};
        TensorOptions options = TensorOptions(dtype).device(kGpu);
        Shape shape{s.batch, s.heads, s.length, s.dim};
        std::vector<Tensor> inputs;
        for (int i = 0; i < 3; ++i) inputs.push_back(randn(shape, options, &generator).set_requires_grad(true));
        Tensor output_grad = randn(shape, options, &generator);
        auto forward = [&] { return scaled_dot_product_attention(inputs[0], inputs[1], inputs[2], true); };
        // Few repeats at T = 4096: each call is long enough to time alone.
        const int repeats = length >= 4096 ? 3 : 7;
        double forward_s = median_seconds([&] { forward(); }, repeats);
        double training_s = median_seconds([&] {
          for (Tensor& input : inputs) input.set_grad(Tensor());
          forward().backward(output_grad);
        }, repeats);
        struct Pass {
          const char* name;
          double seconds, flop;
        };
        for (Pass pass : {Pass{"forward", forward_s, forward_flop(s)},
                          Pass{"forward + backward", training_s, 3.5 * forward_flop(s)}}) {
          bench::row({"kiln", std::to_string(length), std::to_string(dim),
                      std::to_string(s.batch) + " x " + std::to_string(s.heads), dtype_name(dtype), pass.name,
                      bench::format("%.2f", pass.seconds * 1e3),
                      bench::format("%.1f", pass.flop / pass.seconds / 1e12)});
        }
      }
    }
  }
  return 0;
} catch (const Error& error) {
  std::fprintf(stderr, "%s\n", error.what());
  return 1;
}
