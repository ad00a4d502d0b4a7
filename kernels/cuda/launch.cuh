// Launch machinery shared by the CUDA kernels: strided layouts passed to kernels by value, grid
// sizes, typed loads and stores, and the stream and scratch memory of one backend call.
//
// A Layout describes N operands that share one set of sizes, each with its own strides; size-1
// dims are dropped and adjacent dims merged wherever every operand allows, so a kernel on
// contiguous (or merely reshaped) operands decomposes its index over one dim instead of eight.
// Kernels decompose flat row-major positions with 32-bit division whenever the values fit,
// which is several times cheaper than the 64-bit kind.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <type_traits>

#include "kernels/cuda/caching_allocator.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/stream.h"
#include "kernels/view.h"

namespace kiln::kernels::gpu {

// Threads per block of the elementwise and reduction kernels.
constexpr int kBlock = 256;
// Grid-stride loops cover any size with at most this many blocks.
constexpr int64_t kMaxBlocks = 65535;

// The first flat index of this thread and the stride of a grid-stride loop.
__device__ __forceinline__ int64_t thread_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t thread_count() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

// `linear / size` and `linear % size`, in 32 bits when both fit.
__device__ __forceinline__ int64_t divide(int64_t& linear, int64_t size) {
  if (((static_cast<uint64_t>(linear) | static_cast<uint64_t>(size)) >> 32) == 0) {
    uint32_t l = static_cast<uint32_t>(linear), s = static_cast<uint32_t>(size);
    uint32_t quotient = l / s;
    linear = quotient;
    return l - quotient * s;
  }
  int64_t quotient = linear / size;
  int64_t remainder = linear - quotient * size;
  linear = quotient;
  return remainder;
}

template <int N>
struct Layout {
  int ndim = 0;
  int64_t sizes[kMaxDims] = {};
  int64_t strides[N][kMaxDims] = {};  // elements

  __host__ __device__ int64_t numel() const {
    int64_t n = 1;
    for (int d = 0; d < ndim; ++d) n *= sizes[d];
    return n;
  }

  // 1 when operand k is row-major contiguous, 0 when it repeats one element, -1 otherwise.
  int64_t flat_step(int k) const {
    bool contiguous = true, repeated = true;
    int64_t expected = 1;
    for (int d = ndim - 1; d >= 0; --d) {
      contiguous = contiguous && strides[k][d] == expected;
      repeated = repeated && strides[k][d] == 0;
      expected *= sizes[d];
    }
    return contiguous ? 1 : (repeated ? 0 : -1);
  }

  // Element offsets of every operand at flat row-major position `linear`. The unrolled loop
  // keeps the parameter arrays in constant memory (a dynamic index would copy them to local).
  __device__ __forceinline__ void offsets(int64_t linear, int64_t (&offset)[N]) const {
#pragma unroll
    for (int k = 0; k < N; ++k) offset[k] = 0;
#pragma unroll
    for (int d = kMaxDims - 1; d >= 0; --d) {
      if (d < ndim) {
        int64_t i = divide(linear, sizes[d]);
#pragma unroll
        for (int k = 0; k < N; ++k) offset[k] += i * strides[k][d];
      }
    }
  }
};

// The layout of operands sharing views[0]'s sizes (any of them may have stride-0 dims).
template <int N>
Layout<N> make_layout(const std::array<const View*, N>& views) {
  Layout<N> layout;
  const View& first = *views[0];
  for (int d = 0; d < first.ndim; ++d) {
    if (first.sizes[d] == 1) continue;
    bool merge = layout.ndim > 0;
    for (int k = 0; k < N && merge; ++k) {
      merge = layout.strides[k][layout.ndim - 1] == views[k]->strides[d] * first.sizes[d];
    }
    int target = merge ? layout.ndim - 1 : layout.ndim;
    layout.sizes[target] = merge ? layout.sizes[target] * first.sizes[d] : first.sizes[d];
    for (int k = 0; k < N; ++k) layout.strides[k][target] = views[k]->strides[d];
    if (!merge) ++layout.ndim;
  }
  return layout;
}

// Blocks for `items` work items of `threads` threads each, capped for grid-stride loops.
inline unsigned grid_for(int64_t items, int threads = kBlock) {
  return static_cast<unsigned>(std::clamp<int64_t>((items + threads - 1) / threads, 1, kMaxBlocks));
}

// Streaming multiprocessors of the current device (sizes the grids of reductions).
inline int multiprocessors() {
  thread_local int device = -1, count = 0;
  int now = kiln::cuda::current_device();
  if (now != device) {
    KILN_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, now));
    device = now;
  }
  return count;
}

// The current stream for a kernel on `view`, after checking that the view lives on the
// current device (its memory was allocated there, and the kernel will run there).
inline cudaStream_t stream_for(const char* op, const View& view) {
  return kiln::cuda::stream_for(op, view.device).handle();
}

// Copies one value from device memory to the host, waiting for the stream to reach it.
template <typename T>
T read_back(const T* device_value, cudaStream_t stream) {
  T value;
  KILN_CUDA_CHECK(cudaMemcpyAsync(&value, device_value, sizeof(T), cudaMemcpyDeviceToHost, stream));
  KILN_CUDA_CHECK(cudaStreamSynchronize(stream));
  return value;
}

// a * b rounded on its own: nvcc would otherwise contract a * b + c into one fma, which rounds
// once where the CPU kernel (or the unfused ops) round twice.
__device__ __forceinline__ float multiply_rounded(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double multiply_rounded(double a, double b) { return __dmul_rn(a, b); }

template <typename T>
__device__ __forceinline__ compute_t<T> load(const T* address) {
  return static_cast<compute_t<T>>(*address);
}
template <typename T, typename Value>
__device__ __forceinline__ void store(T* address, Value value) {
  *address = static_cast<T>(value);
}

// Per-row statistics (losses, logsumexp, mean, rstd) may have their own floating dtype; these
// read and write element i of such a vector as the CPU kernels do: through compute_t<S>.
__device__ inline double load_scalar(const void* base, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::f64: return static_cast<const double*>(base)[i];
    case DType::bf16: return static_cast<float>(static_cast<const bf16*>(base)[i]);
    case DType::f16: return static_cast<float>(static_cast<const f16*>(base)[i]);
    default: return static_cast<const float*>(base)[i];
  }
}
__device__ inline void store_scalar(void* base, DType dtype, int64_t i, double value) {
  switch (dtype) {
    case DType::f64: static_cast<double*>(base)[i] = value; return;
    case DType::bf16: static_cast<bf16*>(base)[i] = bf16(static_cast<float>(value)); return;
    case DType::f16: static_cast<f16*>(base)[i] = f16(static_cast<float>(value)); return;
    default: static_cast<float*>(base)[i] = static_cast<float>(value); return;
  }
}

// The unsigned integer type of an element size, for kernels that move elements unchanged.
template <size_t kBytes>
using bits_t = std::conditional_t<kBytes == 1, uint8_t,
               std::conditional_t<kBytes == 2, uint16_t, std::conditional_t<kBytes == 4, uint32_t, uint64_t>>>;

// Calls body.template operator()<B>() with B the unsigned type of `dtype`'s size.
template <typename Body>
void dispatch_bits(DType dtype, Body&& body) {
  switch (dtype_size(dtype)) {
    case 1: return body.template operator()<uint8_t>();
    case 2: return body.template operator()<uint16_t>();
    case 4: return body.template operator()<uint32_t>();
    default: return body.template operator()<uint64_t>();
  }
}

}  // namespace kiln::kernels::gpu
