// CPU softmax and log-softmax along any dim of a strided view, forward and backward.
//
// Each line along `dim` is one independent problem; lines run in parallel. The forward makes
// three passes over a line: the maximum (subtracted so exp never overflows), the sum of
// exp(x - max), then the write. A line whose elements are adjacent in every operand runs the
// unit-stride instantiation of the same code, which the compiler vectorises; transposed and
// sliced views run the strided one. exp is vector_math::exp, which vectorises where glibc's expf
// (a scalar call) bound the kernel. Line sums accumulate in double, which keeps long f32 rows
// accurate for one widening per element.
// Every loop reads and writes element i together, so out may alias in (and grad_in grad_out).
#include <cmath>
#include <limits>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/loops.h"
#include "kernels/cpu/vector_math.h"
#include "kernels/error.h"

namespace kiln::kernels {
namespace {

// x (n) -> y (n) along one line; strides in elements, fixed to 1 when kUnit.
template <typename T, bool kUnit>
void softmax_line(const T* x, int64_t x_stride, T* y, int64_t y_stride, int64_t n, bool log) {
  using C = compute_t<T>;
  if constexpr (kUnit) x_stride = y_stride = 1;
  C maximum = -std::numeric_limits<C>::infinity();
#pragma omp simd reduction(max : maximum)
  for (int64_t i = 0; i < n; ++i) maximum = std::max(maximum, static_cast<C>(x[i * x_stride]));
  double sum = 0;
  if (log) {
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < n; ++i) sum += vector_math::exp(static_cast<C>(x[i * x_stride]) - maximum);
    // (x - max) is exact near the maximum; folding max into the shift would round it at the
    // scale of |max|, which for large logits is coarser than the result.
    C log_sum = static_cast<C>(std::log(sum));
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      y[i * y_stride] = static_cast<T>((static_cast<C>(x[i * x_stride]) - maximum) - log_sum);
    }
    return;
  }
  if constexpr (std::is_same_v<T, C>) {
    // y holds exp(x - max) exactly, so the last pass rescales it instead of calling exp again.
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < n; ++i) {
      C e = vector_math::exp(x[i * x_stride] - maximum);
      y[i * y_stride] = e;
      sum += e;
    }
    C scale = static_cast<C>(1.0 / sum);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i * y_stride] *= scale;
  } else {
    // A 16-bit y would round exp(x - max) before the rescale, so exp is evaluated again.
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < n; ++i) sum += vector_math::exp(static_cast<C>(x[i * x_stride]) - maximum);
    C scale = static_cast<C>(1.0 / sum);
    for (int64_t i = 0; i < n; ++i) {
      y[i * y_stride] = static_cast<T>(vector_math::exp(static_cast<C>(x[i * x_stride]) - maximum) * scale);
    }
  }
}

// grad_out, y (n) -> grad_in (n) along one line, y the forward output:
//   softmax:     grad_in = y * (grad_out - sum(grad_out * y))
//   log_softmax: grad_in = grad_out - exp(y) * sum(grad_out)
template <typename T, bool kUnit>
void softmax_backward_line(const T* grad_out, int64_t g_stride, const T* y, int64_t y_stride,
                           T* grad_in, int64_t gi_stride, int64_t n, bool log) {
  using C = compute_t<T>;
  if constexpr (kUnit) g_stride = y_stride = gi_stride = 1;
  double sum = 0;
  if (log) {
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < n; ++i) sum += static_cast<C>(grad_out[i * g_stride]);
    C total = static_cast<C>(sum);
    for (int64_t i = 0; i < n; ++i) {
      C g = static_cast<C>(grad_out[i * g_stride]);
      grad_in[i * gi_stride] = static_cast<T>(g - vector_math::exp(static_cast<C>(y[i * y_stride])) * total);
    }
    return;
  }
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) {
    sum += static_cast<C>(grad_out[i * g_stride]) * static_cast<C>(y[i * y_stride]);
  }
  C dot = static_cast<C>(sum);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    C g = static_cast<C>(grad_out[i * g_stride]);
    grad_in[i * gi_stride] = static_cast<T>(static_cast<C>(y[i * y_stride]) * (g - dot));
  }
}

void check_dim(const char* op, const View& in, int dim) {
  KILN_CHECK(dim >= 0 && dim < in.ndim, op, ": dim ", dim, " is out of range for a view with ",
             in.ndim, " dims");
}

}  // namespace

// in (..., n, ...) -> out (same sizes), normalised along dim.
void CpuBackend::softmax(const View& in, const View& out, int dim, bool log) {
  const char* op = log ? "log_softmax" : "softmax";
  check_dim(op, in, dim);
  dispatch_floating(in.dtype, op, [&]<typename T>() {
    constexpr int64_t element = sizeof(T);
    cpu::for_each_line<2>({&out, &in}, dim, [&](auto p, auto s, auto lengths) {
      T* y = reinterpret_cast<T*>(p[0]);
      const T* x = reinterpret_cast<const T*>(p[1]);
      if (s[0] == element && s[1] == element) {
        softmax_line<T, true>(x, 1, y, 1, lengths[0], log);
      } else {
        softmax_line<T, false>(x, s[1] / element, y, s[0] / element, lengths[0], log);
      }
    });
  });
}

// grad_out, out (..., n, ...) -> grad_in (same sizes).
void CpuBackend::softmax_backward(const View& grad_out, const View& out, const View& grad_in,
                                  int dim, bool log) {
  const char* op = log ? "log_softmax_backward" : "softmax_backward";
  check_dim(op, out, dim);
  dispatch_floating(out.dtype, op, [&]<typename T>() {
    constexpr int64_t element = sizeof(T);
    cpu::for_each_line<3>({&grad_in, &grad_out, &out}, dim, [&](auto p, auto s, auto lengths) {
      T* gi = reinterpret_cast<T*>(p[0]);
      const T* g = reinterpret_cast<const T*>(p[1]);
      const T* y = reinterpret_cast<const T*>(p[2]);
      if (s[0] == element && s[1] == element && s[2] == element) {
        softmax_backward_line<T, true>(g, 1, y, 1, gi, 1, lengths[0], log);
      } else {
        softmax_backward_line<T, false>(g, s[1] / element, y, s[2] / element, gi, s[0] / element,
                                        lengths[0], log);
      }
    });
  });
}

}  // namespace kiln::kernels
