// CUDA fused softmax cross-entropy over the rows of logits (N, C) with integer targets.
//
// The forward gives each row to a group of threads (group_reduce.cuh) that reduces the row's
// maximum, sum of exp(x - max) in double and, with label smoothing, sum of logits, and keeps
// only the row's loss and logsumexp. The backward needs no reduction: every element of
// grad_logits is grad_loss * (exp(x - lse) - q) from its row's saved logsumexp, so it runs
// elementwise over (N, C) and the probabilities are never stored. Formulas, label smoothing
// q = (1 - s) onehot(t) + s / C and ignore_index are the CPU backend's.
//
// Targets are data: a kernel finds the first row whose target is out of range, the host reads
// that row back and throws the CPU's message before any kernel trusts the targets.
#include <cmath>
#include <limits>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/group_reduce.cuh"

namespace kiln::kernels {
namespace gpu {
namespace {

struct Rows {
  int64_t count = 0, classes = 0;
  int64_t row_stride = 0, class_stride = 0;  // logits (and grad_logits in the backward)
  int64_t grad_row_stride = 0, grad_class_stride = 0;
  int64_t target_stride = 0;
  int64_t loss_stride = 0, lse_stride = 0, grad_loss_stride = 0;
  DType loss_dtype = DType::f32, lse_dtype = DType::f32, grad_loss_dtype = DType::f32;
  int64_t ignore_index = -100;
  double smoothing = 0;
};

// Writes the lowest row whose target is neither ignore_index nor in [0, classes).
template <typename I>
__global__ void find_bad_target_kernel(Rows rows, const I* targets, unsigned long long* first_bad) {
  for (int64_t row = thread_index(); row < rows.count; row += thread_count()) {
    int64_t target = targets[row * rows.target_stride];
    if (target != rows.ignore_index && (target < 0 || target >= rows.classes)) {
      atomicMin(first_bad, static_cast<unsigned long long>(row));
    }
  }
}

template <typename I>
void check_targets(const char* op, const Rows& rows, const View& targets, cudaStream_t stream) {
  if (rows.count == 0) return;
  kiln::cuda::DeviceBuffer flag(sizeof(unsigned long long));
  KILN_CUDA_CHECK(cudaMemsetAsync(flag.data(), 0xff, sizeof(unsigned long long), stream));
  find_bad_target_kernel<I><<<grid_for(rows.count), kBlock, 0, stream>>>(rows, targets.as<I>(),
                                                                          flag.as<unsigned long long>());
  KILN_CUDA_CHECK_LAUNCH();
  unsigned long long row = read_back(flag.as<unsigned long long>(), stream);
  if (row == std::numeric_limits<unsigned long long>::max()) return;
  int64_t target = read_back(targets.as<I>() + static_cast<int64_t>(row) * rows.target_stride, stream);
  KILN_FAIL(op, ": target ", target, " of row ", row, " is out of range for ", rows.classes,
            " classes (expected 0 <= target < ", rows.classes, " or ignore_index ", rows.ignore_index, ")");
}

// logits (N, C), targets (N) -> loss (N), logsumexp (N), one group per row.
template <typename T, typename I>
__global__ void cross_entropy_kernel(Rows rows, Groups groups, const T* logits, const I* targets, void* loss,
                                     void* logsumexp) {
  using C = compute_t<T>;
  __shared__ GroupScratch<C> maxima;
  __shared__ GroupScratch<double> sums;
  int64_t row = static_cast<int64_t>(blockIdx.x) * groups.count() + groups.group();
  bool valid = row < rows.count;
  const T* x = logits + (valid ? row : 0) * rows.row_stride;
  int64_t n = valid ? rows.classes : 0, cs = rows.class_stride;
  int lane = groups.lane();
  bool smoothing = rows.smoothing != 0.0;

  C maximum = -INFINITY;
  double total = 0;
  for (int64_t c = lane; c < n; c += groups.size) {
    C value = load(x + c * cs);
    maximum = Max<C>{}(maximum, value);
    total += value;
  }
  maximum = group_reduce(maximum, maxima.values(), groups, Max<C>{});
  if (smoothing) total = group_reduce(total, sums.values(), groups, Sum<double>{});
  double sum = 0;
  for (int64_t c = lane; c < n; c += groups.size) sum += std::exp(load(x + c * cs) - maximum);
  sum = group_reduce(sum, sums.values(), groups, Sum<double>{});
  if (!valid || lane != 0) return;

  double lse = static_cast<double>(maximum) + std::log(sum);
  store_scalar(logsumexp, rows.lse_dtype, row * rows.lse_stride, lse);
  int64_t target = targets[row * rows.target_stride];
  double value = 0;
  if (target != rows.ignore_index) {
    double nll = lse - static_cast<double>(load(x + target * cs));
    double mean_logit = total / static_cast<double>(rows.classes);
    value = smoothing ? (1.0 - rows.smoothing) * nll + rows.smoothing * (lse - mean_logit) : nll;
  }
  store_scalar(loss, rows.loss_dtype, row * rows.loss_stride, value);
}

// logits (N, C), targets, logsumexp, grad_loss (N) -> grad_logits (N, C), elementwise.
template <typename T, typename I>
__global__ void cross_entropy_backward_kernel(Rows rows, const T* logits, const I* targets, const void* logsumexp,
                                              const void* grad_loss, T* grad_logits) {
  using C = compute_t<T>;
  int64_t n = rows.count * rows.classes;
  for (int64_t i = thread_index(); i < n; i += thread_count()) {
    int64_t row = i / rows.classes, c = i - row * rows.classes;
    T* grad = grad_logits + row * rows.grad_row_stride + c * rows.grad_class_stride;
    int64_t target = targets[row * rows.target_stride];
    if (target == rows.ignore_index) {
      store(grad, C(0));
      continue;
    }
    C lse = static_cast<C>(load_scalar(logsumexp, rows.lse_dtype, row * rows.lse_stride));
    C scale = static_cast<C>(load_scalar(grad_loss, rows.grad_loss_dtype, row * rows.grad_loss_stride));
    C uniform = static_cast<C>(rows.smoothing / static_cast<double>(rows.classes));
    C p = std::exp(load(logits + row * rows.row_stride + c * rows.class_stride) - lse);
    // The target's entry subtracts 1 - s in one expression, so a 16-bit grad is rounded once.
    store(grad, c == target ? scale * (p - uniform - static_cast<C>(1.0 - rows.smoothing)) : scale * (p - uniform));
  }
}

Rows rows_of(const View& logits, const View& targets, int64_t ignore_index, double smoothing) {
  Rows rows;
  rows.count = logits.sizes[0];
  rows.classes = logits.sizes[1];
  rows.row_stride = logits.strides[0];
  rows.class_stride = logits.strides[1];
  rows.target_stride = targets.strides[0];
  rows.ignore_index = ignore_index;
  rows.smoothing = smoothing;
  return rows;
}

// The per-row vectors must be floating, with the CPU backend's error otherwise.
void check_floating(const View& v, const char* op) {
  dispatch_floating(v.dtype, op, []<typename S>() {});
}

}  // namespace
}  // namespace gpu

void CudaBackend::cross_entropy(const View& logits, const View& targets, const View& loss, const View& logsumexp,
                                int64_t ignore_index, double label_smoothing) {
  const char* op = "cross_entropy";
  gpu::check_floating(loss, op);
  gpu::check_floating(logsumexp, op);
  gpu::Rows rows = gpu::rows_of(logits, targets, ignore_index, label_smoothing);
  rows.loss_stride = loss.strides[0];
  rows.lse_stride = logsumexp.strides[0];
  rows.loss_dtype = loss.dtype;
  rows.lse_dtype = logsumexp.dtype;
  cudaStream_t stream = gpu::stream_for(op, logits);
  dispatch_index(targets.dtype, op, [&]<typename I>() {
    gpu::check_targets<I>(op, rows, targets, stream);
    dispatch_floating(logits.dtype, op, [&]<typename T>() {
      if (rows.count == 0) return;
      gpu::Groups groups = gpu::groups_for(rows.classes, true);
      int64_t blocks = (rows.count + groups.count() - 1) / groups.count();
      gpu::cross_entropy_kernel<T, I><<<static_cast<unsigned>(blocks), gpu::kBlock, 0, stream>>>(
          rows, groups, logits.as<T>(), targets.as<I>(), loss.data, logsumexp.data);
      KILN_CUDA_CHECK_LAUNCH();
    });
  });
}

void CudaBackend::cross_entropy_backward(const View& logits, const View& targets, const View& logsumexp,
                                         const View& grad_loss, const View& grad_logits, int64_t ignore_index,
                                         double label_smoothing) {
  const char* op = "cross_entropy_backward";
  gpu::check_floating(logsumexp, op);
  gpu::check_floating(grad_loss, op);
  gpu::Rows rows = gpu::rows_of(logits, targets, ignore_index, label_smoothing);
  rows.grad_row_stride = grad_logits.strides[0];
  rows.grad_class_stride = grad_logits.strides[1];
  rows.lse_stride = logsumexp.strides[0];
  rows.grad_loss_stride = grad_loss.strides[0];
  rows.lse_dtype = logsumexp.dtype;
  rows.grad_loss_dtype = grad_loss.dtype;
  cudaStream_t stream = gpu::stream_for(op, logits);
  dispatch_index(targets.dtype, op, [&]<typename I>() {
    gpu::check_targets<I>(op, rows, targets, stream);
    dispatch_floating(logits.dtype, op, [&]<typename T>() {
      int64_t n = rows.count * rows.classes;
      if (n == 0) return;
      gpu::cross_entropy_backward_kernel<T, I><<<gpu::grid_for(n), gpu::kBlock, 0, stream>>>(
          rows, logits.as<T>(), targets.as<I>(), logsumexp.data, grad_loss.data, grad_logits.as<T>());
      KILN_CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace kiln::kernels
