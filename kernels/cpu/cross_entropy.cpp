// CPU fused softmax cross-entropy over the rows of logits (N, C) with integer targets.
//
// The forward keeps only each row's loss and logsumexp; the backward recomputes the
// probabilities as exp(x - logsumexp) while it writes the gradient, so the (N, C) probability
// matrix, the largest activation of a language model, is never stored. Label smoothing s uses
// PyTorch's target distribution q = (1 - s) onehot(t) + s / C, whose loss per row is
//   (1 - s) (lse - x_t) + s (lse - mean_c x_c).
// Targets are data, so they are checked before the parallel loop (loop bodies must not throw).
// The per-row values (loss, logsumexp, grad_loss) are read and written in their own views'
// dtypes, so 16-bit logits may keep an f32 logsumexp and f32 loss. exp is vector_math::exp, so
// the loops over the classes vectorise (glibc's expf is a scalar call).
#include <cmath>
#include <limits>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/loops.h"
#include "kernels/cpu/vector_math.h"
#include "kernels/error.h"

namespace kiln::kernels {
namespace {

using LoadScalar = double (*)(const char*);
using StoreScalar = void (*)(char*, double);

// Per-row accessors resolved once, before the parallel loop, so a bad dtype throws out here.
LoadScalar scalar_loader(const View& v, const char* op) {
  return dispatch_floating(v.dtype, op, [&]<typename S>() -> LoadScalar {
    return [](const char* address) { return static_cast<double>(cpu::load<S>(address)); };
  });
}
StoreScalar scalar_storer(const View& v, const char* op) {
  return dispatch_floating(v.dtype, op, [&]<typename S>() -> StoreScalar {
    return [](char* address, double value) { cpu::store<S>(address, static_cast<compute_t<S>>(value)); };
  });
}

// Byte address of element i of a 1-D view (a stride of 0 broadcasts one value to every row).
char* row_address(const View& v, int64_t i) {
  return static_cast<char*>(v.data) + i * v.strides[0] * static_cast<int64_t>(dtype_size(v.dtype));
}

template <typename I>
void check_targets(const char* op, const View& targets, int64_t classes, int64_t ignore_index) {
  for (int64_t row = 0; row < targets.sizes[0]; ++row) {
    int64_t target = *reinterpret_cast<const I*>(row_address(targets, row));
    KILN_CHECK(target == ignore_index || (target >= 0 && target < classes), op, ": target ",
               target, " of row ", row, " is out of range for ", classes,
               " classes (expected 0 <= target < ", classes, " or ignore_index ", ignore_index, ")");
  }
}

struct RowLoss {
  double logsumexp;
  double mean_logit;  // only when smoothing
};

// x (C) -> logsumexp and, when asked, the mean logit; strides in elements, 1 when kUnit.
template <typename T, bool kUnit>
RowLoss row_loss(const T* x, int64_t stride, int64_t classes, bool want_mean) {
  using C = compute_t<T>;
  if constexpr (kUnit) stride = 1;
  C maximum = -std::numeric_limits<C>::infinity();
  double total = 0;
  if (want_mean) {
#pragma omp simd reduction(max : maximum) reduction(+ : total)
    for (int64_t c = 0; c < classes; ++c) {
      C value = static_cast<C>(x[c * stride]);
      maximum = std::max(maximum, value);
      total += value;
    }
  } else {
#pragma omp simd reduction(max : maximum)
    for (int64_t c = 0; c < classes; ++c) maximum = std::max(maximum, static_cast<C>(x[c * stride]));
  }
  double sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t c = 0; c < classes; ++c) sum += vector_math::exp(static_cast<C>(x[c * stride]) - maximum);
  return {maximum + std::log(sum), total / static_cast<double>(classes)};
}

// grad_logits (C) = grad * (exp(x - lse) - q) for one row; strides in elements, 1 when kUnit.
template <typename T, bool kUnit>
void row_gradient(const T* x, int64_t x_stride, T* grad, int64_t grad_stride, int64_t classes,
                  int64_t target, double logsumexp, double grad_loss, double smoothing) {
  using C = compute_t<T>;
  if constexpr (kUnit) x_stride = grad_stride = 1;
  C lse = static_cast<C>(logsumexp);
  C scale = static_cast<C>(grad_loss);
  C uniform = static_cast<C>(smoothing / static_cast<double>(classes));
  for (int64_t c = 0; c < classes; ++c) {
    grad[c * grad_stride] = static_cast<T>(scale * (vector_math::exp(static_cast<C>(x[c * x_stride]) - lse) - uniform));
  }
  // The target's entry is recomputed rather than adjusted so a 16-bit grad is rounded once.
  C p_target = vector_math::exp(static_cast<C>(x[target * x_stride]) - lse);
  grad[target * grad_stride] = static_cast<T>(scale * (p_target - uniform - static_cast<C>(1.0 - smoothing)));
}

int64_t rows_per_chunk(int64_t classes) {
  return std::max<int64_t>(1, cpu::kParallelGrain / std::max<int64_t>(1, classes));
}

}  // namespace

// logits (N, C), targets (N) -> loss (N), logsumexp (N). logsumexp is written for every row,
// ignored or not.
void CpuBackend::cross_entropy(const View& logits, const View& targets, const View& loss,
                               const View& logsumexp, int64_t ignore_index,
                               double label_smoothing) {
  const char* op = "cross_entropy";
  int64_t rows = logits.sizes[0], classes = logits.sizes[1];
  StoreScalar store_loss = scalar_storer(loss, op);
  StoreScalar store_lse = scalar_storer(logsumexp, op);
  bool smoothing = label_smoothing != 0.0;
  dispatch_index(targets.dtype, op, [&]<typename I>() {
    check_targets<I>(op, targets, classes, ignore_index);
    dispatch_floating(logits.dtype, op, [&]<typename T>() {
      int64_t class_stride = logits.strides[1];
      cpu::parallel_for(rows, rows_per_chunk(classes), [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
          const T* x = logits.as<T>() + row * logits.strides[0];
          RowLoss r = class_stride == 1 ? row_loss<T, true>(x, 1, classes, smoothing)
                                        : row_loss<T, false>(x, class_stride, classes, smoothing);
          store_lse(row_address(logsumexp, row), r.logsumexp);
          int64_t target = *reinterpret_cast<const I*>(row_address(targets, row));
          double value = 0;
          if (target != ignore_index) {
            double target_logit = static_cast<compute_t<T>>(x[target * class_stride]);
            double nll = r.logsumexp - target_logit;
            double smooth = r.logsumexp - r.mean_logit;
            value = smoothing ? (1.0 - label_smoothing) * nll + label_smoothing * smooth : nll;
          }
          store_loss(row_address(loss, row), value);
        }
      });
    });
  });
}

// logits (N, C), targets (N), logsumexp (N), grad_loss (N) -> grad_logits (N, C).
void CpuBackend::cross_entropy_backward(const View& logits, const View& targets,
                                        const View& logsumexp, const View& grad_loss,
                                        const View& grad_logits, int64_t ignore_index,
                                        double label_smoothing) {
  const char* op = "cross_entropy_backward";
  int64_t rows = logits.sizes[0], classes = logits.sizes[1];
  LoadScalar load_lse = scalar_loader(logsumexp, op);
  LoadScalar load_grad = scalar_loader(grad_loss, op);
  dispatch_index(targets.dtype, op, [&]<typename I>() {
    check_targets<I>(op, targets, classes, ignore_index);
    dispatch_floating(logits.dtype, op, [&]<typename T>() {
      int64_t x_stride = logits.strides[1], grad_stride = grad_logits.strides[1];
      cpu::parallel_for(rows, rows_per_chunk(classes), [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
          const T* x = logits.as<T>() + row * logits.strides[0];
          T* grad = grad_logits.as<T>() + row * grad_logits.strides[0];
          int64_t target = *reinterpret_cast<const I*>(row_address(targets, row));
          if (target == ignore_index) {
            for (int64_t c = 0; c < classes; ++c) grad[c * grad_stride] = T(compute_t<T>(0));
            continue;
          }
          double lse = load_lse(row_address(logsumexp, row));
          double scale = load_grad(row_address(grad_loss, row));
          if (x_stride == 1 && grad_stride == 1) {
            row_gradient<T, true>(x, 1, grad, 1, classes, target, lse, scale, label_smoothing);
          } else {
            row_gradient<T, false>(x, x_stride, grad, grad_stride, classes, target, lse, scale,
                                   label_smoothing);
          }
        }
      });
    });
  });
}

}  // namespace kiln::kernels
