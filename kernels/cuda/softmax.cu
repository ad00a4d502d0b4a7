// CUDA softmax and log-softmax along any dim of a strided view, forward and backward.
//
// Each line along `dim` is one problem for a group of threads (group_reduce.cuh): lanes are
// adjacent threads when the line is contiguous (the usual last-dim softmax), and the groups
// are when the lines are (a softmax over dim 0 of a row-major matrix), so either way a warp
// reads consecutive memory. The forward makes the CPU's three passes: the maximum (subtracted
// so exp never overflows), the sum of exp(x - max) in double, then the write; the backward
// makes one reduction and one write. Every pass reads and writes element i in the same thread,
// so out may alias in (and grad_in grad_out), as on the CPU.
#include <cmath>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/group_reduce.cuh"

namespace kiln::kernels {
namespace gpu {
namespace {

// The lines of up to three operands of equal sizes (operand 0 the output).
struct Lines {
  Layout<3> starts;      // over the dims other than `dim`: each line's first element per operand
  int64_t stride[3] = {};  // along dim, elements
  int64_t length = 0;
  int64_t count = 0;
  Groups groups;
};

Lines lines_of(const View& first, const View& second, const View& third, int dim) {
  Lines lines;
  View starts[3] = {first, second, third};
  for (View& v : starts) v.sizes[dim] = 1;
  lines.starts = make_layout<3>({&starts[0], &starts[1], &starts[2]});
  for (int k = 0; k < 3; ++k) lines.stride[k] = (k == 0 ? first : k == 1 ? second : third).strides[dim];
  lines.length = first.sizes[dim];
  lines.count = lines.length == 0 ? 0 : first.numel() / lines.length;
  bool lines_adjacent = lines.starts.ndim > 0 && lines.starts.strides[1][lines.starts.ndim - 1] == 1;
  lines.groups = groups_for(lines.length, lines.stride[1] == 1 || !lines_adjacent || lines.count == 1);
  return lines;
}

// in (..., n, ...) -> out along dim; operands: out, in, (in).
template <typename T>
__global__ void softmax_kernel(Lines lines, T* out, const T* in, bool log) {
  using C = compute_t<T>;
  __shared__ GroupScratch<C> maxima;
  __shared__ GroupScratch<double> sums;
  int64_t line = static_cast<int64_t>(blockIdx.x) * lines.groups.count() + lines.groups.group();
  bool valid = line < lines.count;
  int64_t offset[3] = {0, 0, 0};
  if (valid) lines.starts.offsets(line, offset);
  const T* x = in + offset[1];
  T* y = out + offset[0];
  int64_t xs = lines.stride[1], ys = lines.stride[0], n = valid ? lines.length : 0;
  int lane = lines.groups.lane(), step = lines.groups.size;

  C maximum = -INFINITY;
  for (int64_t i = lane; i < n; i += step) maximum = Max<C>{}(maximum, load(x + i * xs));
  maximum = group_reduce(maximum, maxima.values(), lines.groups, Max<C>{});
  double sum = 0;
  for (int64_t i = lane; i < n; i += step) sum += std::exp(load(x + i * xs) - maximum);
  sum = group_reduce(sum, sums.values(), lines.groups, Sum<double>{});
  if (log) {
    // (x - max) is exact near the maximum; folding max into the shift would round it at the
    // scale of |max|.
    C log_sum = static_cast<C>(std::log(sum));
    for (int64_t i = lane; i < n; i += step) store(y + i * ys, (load(x + i * xs) - maximum) - log_sum);
  } else {
    C scale = static_cast<C>(1.0 / sum);
    for (int64_t i = lane; i < n; i += step) store(y + i * ys, std::exp(load(x + i * xs) - maximum) * scale);
  }
}

// grad_out, y -> grad_in along dim; operands: grad_in, grad_out, y.
//   softmax:     grad_in = y * (grad_out - sum(grad_out * y))
//   log_softmax: grad_in = grad_out - exp(y) * sum(grad_out)
template <typename T>
__global__ void softmax_backward_kernel(Lines lines, T* grad_in, const T* grad_out, const T* out, bool log) {
  using C = compute_t<T>;
  __shared__ GroupScratch<double> sums;
  int64_t line = static_cast<int64_t>(blockIdx.x) * lines.groups.count() + lines.groups.group();
  bool valid = line < lines.count;
  int64_t offset[3] = {0, 0, 0};
  if (valid) lines.starts.offsets(line, offset);
  T* gi = grad_in + offset[0];
  const T* g = grad_out + offset[1];
  const T* y = out + offset[2];
  int64_t is = lines.stride[0], gs = lines.stride[1], ys = lines.stride[2], n = valid ? lines.length : 0;
  int lane = lines.groups.lane(), step = lines.groups.size;

  double sum = 0;
  for (int64_t i = lane; i < n; i += step) sum += log ? load(g + i * gs) : load(g + i * gs) * load(y + i * ys);
  C total = static_cast<C>(group_reduce(sum, sums.values(), lines.groups, Sum<double>{}));
  for (int64_t i = lane; i < n; i += step) {
    C go = load(g + i * gs), value = load(y + i * ys);
    store(gi + i * is, log ? go - std::exp(value) * total : value * (go - total));
  }
}

void check_dim(const char* op, const View& in, int dim) {
  KILN_CHECK(dim >= 0 && dim < in.ndim, op, ": dim ", dim, " is out of range for a view with ", in.ndim, " dims");
}

unsigned blocks_for(const Lines& lines) {
  int64_t per_block = kBlock / lines.groups.size;
  int64_t blocks = (lines.count + per_block - 1) / per_block;
  KILN_CHECK(blocks <= INT32_MAX, "softmax: ", lines.count, " lines are too many for one launch");
  return static_cast<unsigned>(blocks);
}

}  // namespace
}  // namespace gpu

void CudaBackend::softmax(const View& in, const View& out, int dim, bool log) {
  const char* op = log ? "log_softmax" : "softmax";
  gpu::check_dim(op, in, dim);
  dispatch_floating(in.dtype, op, [&]<typename T>() {
    cudaStream_t stream = gpu::stream_for(op, in);
    gpu::Lines lines = gpu::lines_of(out, in, in, dim);
    if (lines.count == 0) return;
    gpu::softmax_kernel<<<gpu::blocks_for(lines), gpu::kBlock, 0, stream>>>(lines, out.as<T>(), in.as<T>(), log);
    KILN_CUDA_CHECK_LAUNCH();
  });
}

void CudaBackend::softmax_backward(const View& grad_out, const View& out, const View& grad_in, int dim, bool log) {
  const char* op = log ? "log_softmax_backward" : "softmax_backward";
  gpu::check_dim(op, out, dim);
  dispatch_floating(out.dtype, op, [&]<typename T>() {
    cudaStream_t stream = gpu::stream_for(op, out);
    gpu::Lines lines = gpu::lines_of(grad_in, grad_out, out, dim);
    if (lines.count == 0) return;
    gpu::softmax_backward_kernel<<<gpu::blocks_for(lines), gpu::kBlock, 0, stream>>>(
        lines, grad_in.as<T>(), grad_out.as<T>(), out.as<T>(), log);
    KILN_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace kiln::kernels
