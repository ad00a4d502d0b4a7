// CUDA random kernels: uniform and normal fills and dropout, on the same Philox streams as the
// CPU backend.
//
// Element i of the output is element i of the stream in the row-major logical order of `out`,
// whatever its strides, and is computed by the same functions of kernels/philox.h, so a tensor
// drawn on the GPU equals the one drawn on the CPU: uniforms and dropout masks bit for bit in
// every dtype. One thread takes one Philox counter, i.e. four narrow (or two wide, f64) elements.
//
// The CPU computes low + range * u and mean + stddev * n in double, which g++ contracts to one
// fused multiply-add; these kernels call fma() explicitly, so both sides round once. Normals
// also go through log, sin and cos, whose CUDA versions may differ from glibc's in the last bit
// of a double: f32 (and 16-bit) normals then still round to the same value, f64 ones may differ
// by an ulp.
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/philox.h"

namespace kiln::kernels {
namespace gpu {
namespace {

__device__ __forceinline__ int64_t element_offset(const Layout<1>& layout, bool flat, int64_t i) {
  int64_t offset[1] = {i};
  if (!flat) layout.offsets(i, offset);
  return offset[0];
}

// out (any sizes) = low + range * u_i, u_i uniform in [0, 1).
template <typename T>
__global__ void uniform_kernel(Layout<1> layout, int64_t n, bool flat, T* out, double low, double range, uint64_t seed,
                               uint64_t offset) {
  constexpr bool kWide = std::is_same_v<T, double>;
  constexpr int64_t kPerCounter = kWide ? 2 : 4;
  int64_t counters = (n + kPerCounter - 1) / kPerCounter;
  for (int64_t q = thread_index(); q < counters; q += thread_count()) {
    Philox4 r = philox4x32(seed, offset + static_cast<uint64_t>(q));
#pragma unroll
    for (int lane = 0; lane < kPerCounter; ++lane) {
      int64_t i = q * kPerCounter + lane;
      if (i >= n) break;
      double u = kWide ? uniform_double(r.word[2 * lane], r.word[2 * lane + 1])
                       : static_cast<double>(uniform_float(r.word[lane]));
      out[element_offset(layout, flat, i)] = static_cast<T>(static_cast<compute_t<T>>(fma(range, u, low)));
    }
  }
}

// out (any sizes) = mean + stddev * n_i, n_i standard normal.
template <typename T>
__global__ void normal_kernel(Layout<1> layout, int64_t n, bool flat, T* out, double mean, double stddev, uint64_t seed,
                              uint64_t offset) {
  for (int64_t i = thread_index(); i < n; i += thread_count()) {
    double value = fma(stddev, normal_at(seed, offset, i), mean);
    out[element_offset(layout, flat, i)] = static_cast<T>(static_cast<compute_t<T>>(value));
  }
}

// in (n) -> out (n) = u_i >= p ? in_i * scale : 0, u_i on the narrow stream for every dtype.
template <typename T>
__global__ void dropout_kernel(int64_t n, const T* in, T* out, double p, compute_t<T> scale, uint64_t seed,
                               uint64_t offset) {
  using C = compute_t<T>;
  int64_t counters = (n + 3) / 4;
  for (int64_t q = thread_index(); q < counters; q += thread_count()) {
    Philox4 r = philox4x32(seed, offset + static_cast<uint64_t>(q));
#pragma unroll
    for (int lane = 0; lane < 4; ++lane) {
      int64_t i = q * 4 + lane;
      if (i >= n) break;
      bool keep = static_cast<double>(uniform_float(r.word[lane])) >= p;
      out[i] = static_cast<T>(keep ? static_cast<C>(in[i]) * scale : C(0));
    }
  }
}

}  // namespace
}  // namespace gpu

void CudaBackend::uniform(const View& out, double low, double high, uint64_t seed, uint64_t offset) {
  dispatch_floating(out.dtype, "uniform", [&]<typename T>() {
    cudaStream_t stream = gpu::stream_for("uniform", out);
    int64_t n = out.numel();
    if (n == 0) return;
    gpu::Layout<1> layout = gpu::make_layout<1>({&out});
    int64_t counters = std::is_same_v<T, double> ? (n + 1) / 2 : (n + 3) / 4;
    gpu::uniform_kernel<T><<<gpu::grid_for(counters), gpu::kBlock, 0, stream>>>(
        layout, n, layout.flat_step(0) == 1, out.as<T>(), low, high - low, seed, offset);
    KILN_CUDA_CHECK_LAUNCH();
  });
}

void CudaBackend::normal(const View& out, double mean, double stddev, uint64_t seed, uint64_t offset) {
  dispatch_floating(out.dtype, "normal", [&]<typename T>() {
    cudaStream_t stream = gpu::stream_for("normal", out);
    int64_t n = out.numel();
    if (n == 0) return;
    gpu::Layout<1> layout = gpu::make_layout<1>({&out});
    gpu::normal_kernel<T><<<gpu::grid_for(n), gpu::kBlock, 0, stream>>>(layout, n, layout.flat_step(0) == 1,
                                                                         out.as<T>(), mean, stddev, seed, offset);
    KILN_CUDA_CHECK_LAUNCH();
  });
}

void CudaBackend::dropout(const View& in, const View& out, double p, uint64_t seed, uint64_t offset) {
  KILN_CHECK(in.is_contiguous() && out.is_contiguous(), "dropout: in and out must be contiguous");
  dispatch_floating(in.dtype, "dropout", [&]<typename T>() {
    using C = compute_t<T>;
    cudaStream_t stream = gpu::stream_for("dropout", in);
    int64_t n = in.numel();
    if (n == 0) return;
    // p == 1 keeps nothing (u < 1 always), so the infinite scale is never multiplied in.
    C scale = static_cast<C>(1.0 / (1.0 - p));
    gpu::dropout_kernel<T><<<gpu::grid_for((n + 3) / 4), gpu::kBlock, 0, stream>>>(n, in.as<T>(), out.as<T>(), p,
                                                                                    scale, seed, offset);
    KILN_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace kiln::kernels
