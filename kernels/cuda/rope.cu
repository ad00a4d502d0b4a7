// CUDA rotary position embedding (RoPE), forward and backward.
//
// x (B, T, H, D) -> out (B, T, H, D): the pair (x[2i], x[2i+1]) of token t is rotated by the angle
// positions[t] * theta^(-2i/D); the backward is the same rotation by the negative angle
// (`inverse`). As on the CPU, angles are computed in double (positions reach 1e5 and beyond) into a
// (T, D/2) table of cos and sin in the compute type, and then every pair is rotated by one thread.
// The frequencies theta^(-2i/D) come from the host's std::pow, the CPU's very numbers, passed as a
// kernel argument (D <= 512). x and out may be the same memory: a thread reads its pair before
// writing it.
#include <cmath>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/launch.cuh"

namespace kiln::kernels {
namespace gpu {
namespace {

constexpr int64_t kMaxPairs = 256;

struct Frequencies {
  double value[kMaxPairs];
};

// table (T, 2, D/2): the pairs' cosines, then their (signed) sines.
template <typename C>
__global__ void rope_table_kernel(int64_t length, int64_t pairs, const int64_t* positions, int64_t position_stride,
                                  Frequencies frequencies, double sign, C* table) {
  for (int64_t index = thread_index(); index < length * pairs; index += thread_count()) {
    int64_t t = index / pairs, i = index - t * pairs;
    double angle = static_cast<double>(positions[t * position_stride]) * frequencies.value[i];
    table[t * 2 * pairs + i] = static_cast<C>(cos(angle));
    table[t * 2 * pairs + pairs + i] = static_cast<C>(sign * sin(angle));
  }
}

// One thread per pair (b, t, h, i): (a, b) -> (a cos - b sin, a sin + b cos).
template <typename T>
__global__ void rope_rotate_kernel(Layout<2> rows, int64_t count, int64_t length, int64_t heads, int64_t pairs,
                                   const T* x, int64_t x_last, T* out, int64_t out_last, const compute_t<T>* table) {
  using C = compute_t<T>;
  for (int64_t index = thread_index(); index < count * pairs; index += thread_count()) {
    int64_t row = index / pairs, i = index - row * pairs;
    int64_t offset[2];
    rows.offsets(row, offset);
    // Rows are (B, T, H) in row-major order.
    int64_t t = row / heads % length;
    const C* cosines = table + t * 2 * pairs;
    C a = load(x + offset[1] + 2 * i * x_last), b = load(x + offset[1] + (2 * i + 1) * x_last);
    C cosine = cosines[i], sine = cosines[pairs + i];
    store(out + offset[0] + 2 * i * out_last, a * cosine - b * sine);
    store(out + offset[0] + (2 * i + 1) * out_last, a * sine + b * cosine);
  }
}

}  // namespace
}  // namespace gpu

// x (B, T, H, D), positions (T) i64 -> out (B, T, H, D).
void CudaBackend::rope(const View& x, const View& positions, const View& out, double theta, bool inverse) {
  KILN_CHECK(x.ndim == 4 && out.ndim == 4, "rope: x and out must be (B, T, H, D), got ", x.ndim, " and ", out.ndim,
             " dims");
  KILN_CHECK(x.sizes[3] % 2 == 0, "rope: head dim must be even, got ", x.sizes[3]);
  KILN_CHECK(positions.dtype == DType::i64 && positions.ndim == 1 && positions.sizes[0] == x.sizes[1],
             "rope: positions must be i64 of shape (", x.sizes[1], ")");
  dispatch_floating(x.dtype, "rope", [&]<typename T>() {
    using C = compute_t<T>;
    cudaStream_t stream = gpu::stream_for("rope", x);
    int64_t length = x.sizes[1], dim = x.sizes[3], pairs = dim / 2;
    if (x.numel() == 0 || pairs == 0) return;
    KILN_CHECK(pairs <= gpu::kMaxPairs, "rope: head dim ", dim, " is larger than the cuda backend's limit of ",
               2 * gpu::kMaxPairs);
    gpu::Frequencies frequencies;
    for (int64_t i = 0; i < pairs; ++i) {
      frequencies.value[i] = std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(dim));
    }
    kiln::cuda::DeviceBuffer table(static_cast<size_t>(length * dim) * sizeof(C));
    gpu::rope_table_kernel<C><<<gpu::grid_for(length * pairs), gpu::kBlock, 0, stream>>>(
        length, pairs, positions.as<int64_t>(), positions.strides[0], frequencies, inverse ? -1.0 : 1.0, table.as<C>());
    KILN_CUDA_CHECK_LAUNCH();
    // The (B, T, H) rows of x and out, kept unmerged so that t follows from a row's index.
    gpu::Layout<2> rows;
    rows.ndim = 3;
    for (int d = 0; d < 3; ++d) {
      rows.sizes[d] = x.sizes[d];
      rows.strides[0][d] = out.strides[d];
      rows.strides[1][d] = x.strides[d];
    }
    int64_t count = rows.numel();
    gpu::rope_rotate_kernel<T><<<gpu::grid_for(count * pairs), gpu::kBlock, 0, stream>>>(
        rows, count, length, x.sizes[2], pairs, x.as<T>(), x.strides[3], out.as<T>(), out.strides[3], table.as<C>());
    KILN_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace kiln::kernels
