// CUDA memory kernels on one device: strided copy with dtype conversion, fill and arange.
//
// A copy within one dtype moves bits: cudaMemcpyAsync when both views are contiguous, else one
// strided kernel per element size. A converting copy goes through the source's compute type,
// exactly as the CPU's does, so casts give the same bits on both backends. Views on different
// devices (host <-> device, device <-> device) are transfer.cpp's business.
#include <cstring>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/launch.cuh"

namespace kiln::kernels {
namespace gpu {
namespace {

// dst (any sizes) = src converted, both walked through one layout.
template <typename Dst, typename Src>
__global__ void convert_kernel(Layout<2> layout, int64_t n, bool flat, Dst* dst, const Src* src) {
  for (int64_t i = thread_index(); i < n; i += thread_count()) {
    int64_t offset[2] = {i, i};
    if (!flat) layout.offsets(i, offset);
    dst[offset[0]] = static_cast<Dst>(static_cast<compute_t<Src>>(src[offset[1]]));
  }
}

template <typename Bits>
__global__ void move_kernel(Layout<2> layout, int64_t n, Bits* dst, const Bits* src) {
  for (int64_t i = thread_index(); i < n; i += thread_count()) {
    int64_t offset[2];
    layout.offsets(i, offset);
    dst[offset[0]] = src[offset[1]];
  }
}

template <typename Bits>
__global__ void fill_kernel(Layout<1> layout, int64_t n, bool flat, Bits* out, Bits value) {
  for (int64_t i = thread_index(); i < n; i += thread_count()) {
    int64_t offset[1] = {i};
    if (!flat) layout.offsets(i, offset);
    out[offset[0]] = value;
  }
}

// out[i] = start + i * step; the CPU's compiler contracts this to one fused multiply-add, and
// so does this kernel, explicitly, so both round once.
template <typename T>
__global__ void arange_kernel(int64_t n, T* out, double start, double step) {
  for (int64_t i = thread_index(); i < n; i += thread_count()) {
    out[i] = static_cast<T>(static_cast<compute_t<T>>(fma(static_cast<double>(i), step, start)));
  }
}

}  // namespace
}  // namespace gpu

using gpu::Layout;

void copy_across_devices(const View& src, const View& dst);  // transfer.cpp

void CudaBackend::copy(const View& src, const View& dst) {
  if (src.device != dst.device) return copy_across_devices(src, dst);
  cudaStream_t stream = gpu::stream_for("copy", dst);
  int64_t n = dst.numel();
  if (n == 0) return;
  Layout<2> layout = gpu::make_layout<2>({&dst, &src});
  if (src.dtype == dst.dtype) {
    if (layout.flat_step(0) == 1 && layout.flat_step(1) == 1) {
      KILN_CUDA_CHECK(cudaMemcpyAsync(dst.data, src.data, static_cast<size_t>(n) * dtype_size(dst.dtype),
                                      cudaMemcpyDeviceToDevice, stream));
      return;
    }
    gpu::dispatch_bits(dst.dtype, [&]<typename Bits>() {
      gpu::move_kernel<<<gpu::grid_for(n), gpu::kBlock, 0, stream>>>(layout, n, dst.as<Bits>(), src.as<Bits>());
    });
    KILN_CUDA_CHECK_LAUNCH();
    return;
  }
  bool flat = layout.flat_step(0) == 1 && layout.flat_step(1) == 1;
  dispatch_all(dst.dtype, "copy", [&]<typename Dst>() {
    dispatch_all(src.dtype, "copy", [&]<typename Src>() {
      // Same-dtype copies moved bits above: no kernel for them.
      if constexpr (!std::is_same_v<Dst, Src>) gpu::convert_kernel<<<gpu::grid_for(n), gpu::kBlock, 0, stream>>>(layout, n, flat, dst.as<Dst>(), src.as<Src>());
    });
  });
  KILN_CUDA_CHECK_LAUNCH();
}

void CudaBackend::fill(const View& out, double value) {
  cudaStream_t stream = gpu::stream_for("fill", out);
  int64_t n = out.numel();
  if (n == 0) return;
  Layout<1> layout = gpu::make_layout<1>({&out});
  bool flat = layout.flat_step(0) == 1;
  // The value is converted once, on the host, exactly as the CPU backend converts it.
  dispatch_all(out.dtype, "fill", [&]<typename T>() {
    T filled = static_cast<T>(static_cast<compute_t<T>>(value));
    using Bits = gpu::bits_t<sizeof(T)>;
    Bits bits;
    std::memcpy(&bits, &filled, sizeof(T));
    gpu::fill_kernel<<<gpu::grid_for(n), gpu::kBlock, 0, stream>>>(layout, n, flat, out.as<Bits>(), bits);
  });
  KILN_CUDA_CHECK_LAUNCH();
}

void CudaBackend::arange(const View& out, double start, double step) {
  KILN_CHECK(out.is_contiguous(), "arange: output must be contiguous");
  cudaStream_t stream = gpu::stream_for("arange", out);
  int64_t n = out.numel();
  if (n == 0) return;
  dispatch_numeric(out.dtype, "arange", [&]<typename T>() {
    gpu::arange_kernel<<<gpu::grid_for(n), gpu::kBlock, 0, stream>>>(n, out.as<T>(), start, step);
  });
  KILN_CUDA_CHECK_LAUNCH();
}

}  // namespace kiln::kernels
