// CUDA indexing kernels: index_select, index_add, gather and scatter_add.
//
// As on the CPU, the four ops are two kernels. Reading ops compute, for every position p of
// out, out[p] = in[p with its coordinate along dim replaced by index[p]]: one thread per output
// element, moving bits; index_select is gather with its 1-D index broadcast over the other dims
// (stride 0). Writing ops are the mirror image with +=, one thread per index element; colliding
// indices are resolved with atomic adds: native ones for f32, f64, i32 and i64 (the order of
// additions to one element is then unspecified, which changes f32/f64 sums by rounding only),
// and for bf16/f16 a compare-and-swap on the 32-bit word holding the element, which adds the
// f32 contribution and rounds once, as the CPU's load-add-store does.
//
// Index values are data: a kernel finds the first out-of-range index (in row-major order of
// the index view), the host reads it back and throws the CPU's message before any kernel
// trusts the indices. Negative indices are errors, as in PyTorch's versions of these ops.
#include <limits>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/launch.cuh"

namespace kiln::kernels {
namespace gpu {
namespace {

template <typename I>
__global__ void find_bad_index_kernel(Layout<1> layout, int64_t n, const I* index, int64_t size,
                                      unsigned long long* first_bad) {
  for (int64_t p = thread_index(); p < n; p += thread_count()) {
    int64_t offset[1];
    layout.offsets(p, offset);
    if (static_cast<uint64_t>(static_cast<int64_t>(index[offset[0]])) >= static_cast<uint64_t>(size)) {
      atomicMin(first_bad, static_cast<unsigned long long>(p));
    }
  }
}

template <typename I>
void check_indices(const char* op, const View& index, int dim, int64_t size, cudaStream_t stream) {
  int64_t n = index.numel();
  if (n == 0) return;
  Layout<1> layout = make_layout<1>({&index});
  kiln::cuda::DeviceBuffer flag(sizeof(unsigned long long));
  KILN_CUDA_CHECK(cudaMemsetAsync(flag.data(), 0xff, sizeof(unsigned long long), stream));
  find_bad_index_kernel<I><<<grid_for(n), kBlock, 0, stream>>>(layout, n, index.as<I>(), size,
                                                               flag.as<unsigned long long>());
  KILN_CUDA_CHECK_LAUNCH();
  unsigned long long position = read_back(flag.as<unsigned long long>(), stream);
  if (position == std::numeric_limits<unsigned long long>::max()) return;
  int64_t offset = 0, remaining = static_cast<int64_t>(position);
  for (int d = layout.ndim - 1; d >= 0; --d) {
    offset += (remaining % layout.sizes[d]) * layout.strides[0][d];
    remaining /= layout.sizes[d];
  }
  int64_t value = read_back(index.as<I>() + offset, stream);
  KILN_FAIL(op, ": index ", value, " is out of range for dim ", dim, " with size ", size);
}

// out (..., N, ...) = base (in with dim's stride 0) + index * step; operands: out, base, index.
template <typename Bits, typename I>
__global__ void gather_kernel(Layout<3> layout, int64_t n, int64_t step, Bits* out, const Bits* base, const I* index) {
  for (int64_t p = thread_index(); p < n; p += thread_count()) {
    int64_t offset[3];
    layout.offsets(p, offset);
    out[offset[0]] = base[offset[1] + static_cast<int64_t>(index[offset[2]]) * step];
  }
}

// *address += value, rounding once in the element's dtype.
template <typename T>
__device__ __forceinline__ void atomic_add(T* address, compute_t<T> value) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, int32_t>) {
    atomicAdd(address, value);
  } else if constexpr (std::is_same_v<T, int64_t>) {
    atomicAdd(reinterpret_cast<unsigned long long*>(address), static_cast<unsigned long long>(value));
  } else {
    // bf16 / f16: swap the 16 bits inside their aligned 32-bit word.
    uintptr_t where = reinterpret_cast<uintptr_t>(address);
    unsigned* word = reinterpret_cast<unsigned*>(where & ~uintptr_t{3});
    unsigned shift = (where & 2) ? 16 : 0;
    unsigned old = *word, assumed;
    do {
      assumed = old;
      T current;
      current.bits = static_cast<uint16_t>(assumed >> shift);
      T next(static_cast<float>(current) + value);
      unsigned replaced = (assumed & ~(0xffffu << shift)) | (static_cast<unsigned>(next.bits) << shift);
      old = atomicCAS(word, assumed, replaced);
    } while (old != assumed);
  }
}

// out[p with dim := index[p]] += scale * src[p] for every position p of index; operands:
// index, src, out (with dim's stride 0).
template <typename T, typename I>
__global__ void scatter_add_kernel(Layout<3> layout, int64_t n, int64_t out_step, const I* index, const T* src, T* out,
                                   compute_t<T> scale) {
  for (int64_t p = thread_index(); p < n; p += thread_count()) {
    int64_t offset[3];
    layout.offsets(p, offset);
    atomic_add(out + offset[2] + static_cast<int64_t>(index[offset[0]]) * out_step, scale * load(src + offset[1]));
  }
}

// A 0-d view as a 1-d view of one element, so dim 0 of a scalar means what it does in PyTorch.
View at_least_1d(const View& view) {
  View result = view;
  if (result.ndim == 0) {
    result.ndim = 1;
    result.sizes[0] = 1;
    result.strides[0] = 0;
  }
  return result;
}

void check_dim(const char* op, int dim, const View& view) {
  KILN_CHECK(dim >= 0 && dim < view.ndim, op, ": dim ", dim, " is out of range for a ", view.ndim, "-d tensor");
}

// The 1-D index of index_select/index_add as a view with like's sizes: its own stride along
// dim and stride 0 on every other dim.
View broadcast_index(const View& index, const View& like, int dim) {
  View result = index;
  result.ndim = like.ndim;
  for (int d = 0; d < like.ndim; ++d) {
    result.sizes[d] = like.sizes[d];
    result.strides[d] = 0;
  }
  result.strides[dim] = index.strides[0];
  return result;
}

// in (..., V, ...), index (..., N, ...) -> out (..., N, ...) along dim.
template <typename I>
void gather_along(const View& in, int dim, const View& index, const View& out, cudaStream_t stream) {
  int64_t n = out.numel();
  if (n == 0) return;
  View base = in;
  for (int d = 0; d < out.ndim; ++d) base.sizes[d] = out.sizes[d];
  base.strides[dim] = 0;
  Layout<3> layout = make_layout<3>({&out, &base, &index});
  dispatch_bits(out.dtype, [&]<typename Bits>() {
    gather_kernel<Bits, I><<<grid_for(n), kBlock, 0, stream>>>(layout, n, in.strides[dim], out.as<Bits>(),
                                                                base.as<Bits>(), index.as<I>());
  });
  KILN_CUDA_CHECK_LAUNCH();
}

// out (..., V, ...) [index (..., N, ...) along dim] += alpha * src (..., N, ...).
template <typename I>
void scatter_add_along(const char* op, const View& out, int dim, const View& index, const View& src, double alpha,
                       cudaStream_t stream) {
  dispatch_numeric(out.dtype, op, [&]<typename T>() {
    int64_t n = index.numel();
    if (n == 0) return;
    View src_here = src, out_base = out;
    for (int d = 0; d < index.ndim; ++d) src_here.sizes[d] = out_base.sizes[d] = index.sizes[d];
    out_base.strides[dim] = 0;
    Layout<3> layout = make_layout<3>({&index, &src_here, &out_base});
    scatter_add_kernel<T, I><<<grid_for(n), kBlock, 0, stream>>>(layout, n, out.strides[dim], index.as<I>(),
                                                                  src.as<T>(), out.as<T>(),
                                                                  static_cast<compute_t<T>>(alpha));
    KILN_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace
}  // namespace gpu

// in (..., V, ...), index (N) -> out (..., N, ...) along dim.
void CudaBackend::index_select(const View& in_view, int dim, const View& index_view, const View& out_view) {
  View in = gpu::at_least_1d(in_view), index = gpu::at_least_1d(index_view), out = gpu::at_least_1d(out_view);
  gpu::check_dim("index_select", dim, in);
  cudaStream_t stream = gpu::stream_for("index_select", in);
  dispatch_index(index.dtype, "index_select", [&]<typename I>() {
    gpu::check_indices<I>("index_select", index, dim, in.sizes[dim], stream);
    gpu::gather_along<I>(in, dim, gpu::broadcast_index(index, out, dim), out, stream);
  });
}

// out (..., V, ...) += alpha * src (..., N, ...) scattered along dim by index (N).
void CudaBackend::index_add(const View& out_view, int dim, const View& index_view, const View& src_view,
                            double alpha) {
  View out = gpu::at_least_1d(out_view), index = gpu::at_least_1d(index_view), src = gpu::at_least_1d(src_view);
  gpu::check_dim("index_add", dim, out);
  cudaStream_t stream = gpu::stream_for("index_add", out);
  dispatch_index(index.dtype, "index_add", [&]<typename I>() {
    gpu::check_indices<I>("index_add", index, dim, out.sizes[dim], stream);
    gpu::scatter_add_along<I>("index_add", out, dim, gpu::broadcast_index(index, src, dim), src, alpha, stream);
  });
}

// in (..., V, ...), index (..., N, ...) -> out (..., N, ...), out and index the same sizes.
void CudaBackend::gather(const View& in_view, int dim, const View& index_view, const View& out_view) {
  View in = gpu::at_least_1d(in_view), index = gpu::at_least_1d(index_view), out = gpu::at_least_1d(out_view);
  gpu::check_dim("gather", dim, in);
  cudaStream_t stream = gpu::stream_for("gather", in);
  dispatch_index(index.dtype, "gather", [&]<typename I>() {
    gpu::check_indices<I>("gather", index, dim, in.sizes[dim], stream);
    gpu::gather_along<I>(in, dim, index, out, stream);
  });
}

// out (..., V, ...) += src (..., N, ...) scattered along dim by index (..., N, ...); src may be
// larger than index on every dim and out on every dim but dim (only index's extent is used).
void CudaBackend::scatter_add(const View& out_view, int dim, const View& index_view, const View& src_view) {
  View out = gpu::at_least_1d(out_view), index = gpu::at_least_1d(index_view), src = gpu::at_least_1d(src_view);
  gpu::check_dim("scatter_add", dim, out);
  cudaStream_t stream = gpu::stream_for("scatter_add", out);
  dispatch_index(index.dtype, "scatter_add", [&]<typename I>() {
    gpu::check_indices<I>("scatter_add", index, dim, out.sizes[dim], stream);
    gpu::scatter_add_along<I>("scatter_add", out, dim, index, src, 1.0, stream);
  });
}

}  // namespace kiln::kernels
