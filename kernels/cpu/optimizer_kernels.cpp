// CPU optimizer kernels: one fused, OpenMP-parallel pass per parameter (see the header for the
// update rules).
//
// Rounding follows torch.optim's single-tensor path op for op, so that f32 trajectories agree
// with PyTorch to the last bit in most elements rather than drifting by ulps through the
// cancellations of momentum-style updates. Measured on torch's CPU kernels: add_(x, alpha) is
// fma(alpha, x, self); addcmul_(a, b, value) is fma(value * a, b, self); addcdiv_(a, b, value)
// is self + (value * a) / b, unfused; mul_ rounds. multiply_add() spells out the fused ones,
// and floating-point contraction is switched off for this file so that the compiler fuses
// nothing else.
//
// Loop-invariant options (nesterov, amsgrad, weight decay on/off, ...) become template
// arguments through with_flags, so each inner loop is branch-free straight-line arithmetic.
// `omp simd` states what the header promises (the buffers do not alias), which the compiler
// cannot see through the lambda captures, so every update loop vectorises.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "kernels/cpu/optimizer_kernels.h"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/loops.h"
#include "kernels/error.h"

namespace kiln::kernels::cpu {
namespace {

// a * b + c, rounded once where the CPU has FMA (as torch's vectorised kernels are), else twice.
template <typename T>
inline T multiply_add(T a, T b, T c) {
#if defined(__FMA__)
  return std::fma(a, b, c);
#else
  return a * b + c;
#endif
}

// Calls body(std::bool_constant<flags>...) with each runtime flag turned into a constant.
template <typename Body>
void with_flags(Body&& body) {
  body();
}
template <typename Body, typename... Rest>
void with_flags(Body&& body, bool flag, Rest... rest) {
  if (flag) {
    with_flags([&](auto... constants) { body(std::true_type{}, constants...); }, rest...);
  } else {
    with_flags([&](auto... constants) { body(std::false_type{}, constants...); }, rest...);
  }
}

// Each loop below names the torch op every line mirrors.

template <typename T>
void sgd_impl(T* __restrict param, const T* __restrict grad, T* __restrict buffer, int64_t n,
              const SgdHyper& hyper) {
  const T lr = static_cast<T>(-hyper.lr);
  const T momentum = static_cast<T>(hyper.momentum);
  const T keep = static_cast<T>(1.0 - hyper.dampening);
  const T weight_decay = static_cast<T>(hyper.weight_decay);
  with_flags(
      [&](auto decay, auto use_momentum, auto first, auto nesterov) {
        parallel_for(n, kParallelGrain, [&](int64_t begin, int64_t end) {
#pragma omp simd
          for (int64_t i = begin; i < end; ++i) {
            T d = grad[i];
            if constexpr (decay) d = multiply_add(weight_decay, param[i], d);  // d.add(p, alpha=wd)
            if constexpr (use_momentum) {
              T b;
              if constexpr (first) {
                b = d;  // torch.clone(d)
              } else {
                b = multiply_add(keep, d, buffer[i] * momentum);  // buf.mul_(m).add_(d, alpha=1-damp)
              }
              buffer[i] = b;
              if constexpr (nesterov) {
                d = multiply_add(momentum, b, d);  // d.add(buf, alpha=m)
              } else {
                d = b;
              }
            }
            param[i] = multiply_add(lr, d, param[i]);  // p.add_(d, alpha=-lr)
          }
        });
      },
      hyper.weight_decay != 0, hyper.momentum != 0, hyper.first_step, hyper.nesterov);
}

template <typename T>
void adagrad_impl(T* __restrict param, const T* __restrict grad, T* __restrict sum, int64_t n,
                  const AdagradHyper& hyper) {
  const T clr = static_cast<T>(-hyper.clr);
  const T eps = static_cast<T>(hyper.eps);
  const T weight_decay = static_cast<T>(hyper.weight_decay);
  with_flags(
      [&](auto decay) {
        parallel_for(n, kParallelGrain, [&](int64_t begin, int64_t end) {
#pragma omp simd
          for (int64_t i = begin; i < end; ++i) {
            T g = grad[i];
            if constexpr (decay) g = multiply_add(weight_decay, param[i], g);  // g.add(p, alpha=wd)
            T s = multiply_add(g, g, sum[i]);                                   // sum.addcmul_(g, g)
            sum[i] = s;
            param[i] = param[i] + (clr * g) / (std::sqrt(s) + eps);  // p.addcdiv_(g, std, value=-clr)
          }
        });
      },
      hyper.weight_decay != 0);
}

template <typename T>
void rmsprop_impl(T* __restrict param, const T* __restrict grad, T* __restrict square_avg, T* __restrict grad_avg,
                  T* __restrict buffer, int64_t n, const RmspropHyper& hyper) {
  const T lr = static_cast<T>(-hyper.lr);
  const T alpha = static_cast<T>(hyper.alpha);
  const T one_minus_alpha = static_cast<T>(1.0 - hyper.alpha);
  const T eps = static_cast<T>(hyper.eps);
  const T weight_decay = static_cast<T>(hyper.weight_decay);
  const T momentum = static_cast<T>(hyper.momentum);
  with_flags(
      [&](auto decay, auto centered, auto use_momentum) {
        parallel_for(n, kParallelGrain, [&](int64_t begin, int64_t end) {
#pragma omp simd
          for (int64_t i = begin; i < end; ++i) {
            T g = grad[i];
            if constexpr (decay) g = multiply_add(weight_decay, param[i], g);  // g.add(p, alpha=wd)
            // sq.mul_(alpha).addcmul_(g, g, value=1-alpha)
            T sq = multiply_add(one_minus_alpha * g, g, square_avg[i] * alpha);
            square_avg[i] = sq;
            T avg;
            if constexpr (centered) {
              T ga = multiply_add(one_minus_alpha, g, grad_avg[i] * alpha);  // ga.mul_(alpha).add_(g, alpha=1-alpha)
              grad_avg[i] = ga;
              avg = std::sqrt(multiply_add(-ga, ga, sq)) + eps;  // sq.addcmul(ga, ga, value=-1).sqrt_().add_(eps)
            } else {
              avg = std::sqrt(sq) + eps;  // sq.sqrt().add_(eps)
            }
            if constexpr (use_momentum) {
              T b = buffer[i] * momentum + g / avg;  // buf.mul_(m).addcdiv_(g, avg)
              buffer[i] = b;
              param[i] = multiply_add(lr, b, param[i]);  // p.add_(buf, alpha=-lr)
            } else {
              param[i] = param[i] + (lr * g) / avg;  // p.addcdiv_(g, avg, value=-lr)
            }
          }
        });
      },
      hyper.weight_decay != 0, hyper.centered, hyper.momentum > 0);
}

template <typename T>
void adam_impl(T* __restrict param, const T* __restrict grad, T* __restrict exp_avg, T* __restrict exp_avg_sq,
               T* __restrict max_exp_avg_sq, int64_t n, const AdamHyper& hyper) {
  const T beta1 = static_cast<T>(hyper.beta1);
  const T one_minus_beta1 = static_cast<T>(1.0 - hyper.beta1);
  const T beta2 = static_cast<T>(hyper.beta2);
  const T one_minus_beta2 = static_cast<T>(1.0 - hyper.beta2);
  const T eps = static_cast<T>(hyper.eps);
  const T weight_decay = static_cast<T>(hyper.weight_decay);
  const T decay_factor = static_cast<T>(1.0 - hyper.lr * hyper.weight_decay);
  const T step_size = static_cast<T>(-(hyper.lr / hyper.bias_correction1));
  const T correction2_sqrt = static_cast<T>(std::sqrt(hyper.bias_correction2));
  bool decay = hyper.weight_decay != 0;
  with_flags(
      [&](auto coupled, auto decoupled, auto amsgrad) {
        parallel_for(n, kParallelGrain, [&](int64_t begin, int64_t end) {
#pragma omp simd
          for (int64_t i = begin; i < end; ++i) {
            T p = param[i];
            T g = grad[i];
            if constexpr (decoupled) p = p * decay_factor;                // p.mul_(1 - lr * wd)
            if constexpr (coupled) g = multiply_add(weight_decay, p, g);  // g.add(p, alpha=wd)
            T m = multiply_add(one_minus_beta1, g, exp_avg[i] * beta1);  // m.mul_(b1).add_(g, alpha=1-b1)
            T v = multiply_add(one_minus_beta2 * g, g, exp_avg_sq[i] * beta2);  // v.mul_(b2).addcmul_(g, g, 1-b2)
            exp_avg[i] = m;
            exp_avg_sq[i] = v;
            if constexpr (amsgrad) {
              T previous = max_exp_avg_sq[i];
              v = (v > previous || v != v) ? v : previous;  // torch.maximum: NaN propagates
              max_exp_avg_sq[i] = v;
            }
            // denom = (v.sqrt() / sqrt(bc2)).add_(eps);  p.addcdiv_(m, denom, value=-lr/bc1)
            param[i] = p + (step_size * m) / (std::sqrt(v) / correction2_sqrt + eps);
          }
        });
      },
      decay && !hyper.decoupled_weight_decay, decay && hyper.decoupled_weight_decay, hyper.amsgrad);
}

// Elements per partial sum: the blocks, not the threads, fix the order of the additions.
constexpr int64_t kSumBlock = 8192;

template <typename T>
double sum_of_squares_impl(const T* x, int64_t n) {
  if (n <= 0) return 0.0;
  int64_t blocks = (n + kSumBlock - 1) / kSumBlock;
  std::vector<double> partial(static_cast<size_t>(blocks), 0.0);
  parallel_for(blocks, std::max<int64_t>(1, kParallelGrain / kSumBlock), [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      int64_t first = block * kSumBlock;
      int64_t last = std::min(n, first + kSumBlock);
      double total = 0.0;
#pragma omp simd reduction(+ : total)
      for (int64_t i = first; i < last; ++i) {
        double value = static_cast<double>(x[i]);
        total += value * value;
      }
      partial[static_cast<size_t>(block)] = total;
    }
  });
  double total = 0.0;
  for (double value : partial) total += value;
  return total;
}

template <typename T>
void scale_impl(T* __restrict x, int64_t n, double factor) {
  const T f = static_cast<T>(factor);
  parallel_for(n, kParallelGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) x[i] = x[i] * f;
  });
}

template <typename T>
void clamp_impl(T* __restrict x, int64_t n, double low, double high) {
  const T lo = static_cast<T>(low);
  const T hi = static_cast<T>(high);
  parallel_for(n, kParallelGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      T value = x[i];
      value = value < lo ? lo : value;
      x[i] = value > hi ? hi : value;
    }
  });
}

template <typename T>
bool all_finite_impl(const T* x, int64_t n) {
  int64_t blocks = (n + kSumBlock - 1) / kSumBlock;
  std::vector<char> bad(static_cast<size_t>(std::max<int64_t>(blocks, 0)), 0);
  parallel_for(blocks, std::max<int64_t>(1, kParallelGrain / kSumBlock), [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      int64_t first = block * kSumBlock;
      int64_t last = std::min(n, first + kSumBlock);
      int count = 0;
#pragma omp simd reduction(+ : count)
      for (int64_t i = first; i < last; ++i) count += !(x[i] - x[i] == T(0));  // inf - inf and NaN give NaN
      bad[static_cast<size_t>(block)] = count != 0;
    }
  });
  for (char flag : bad) {
    if (flag) return false;
  }
  return true;
}

}  // namespace

void sgd_update(float* param, const float* grad, float* momentum_buffer, int64_t n, const SgdHyper& hyper) {
  sgd_impl(param, grad, momentum_buffer, n, hyper);
}
void sgd_update(double* param, const double* grad, double* momentum_buffer, int64_t n, const SgdHyper& hyper) {
  sgd_impl(param, grad, momentum_buffer, n, hyper);
}

void adagrad_update(float* param, const float* grad, float* sum, int64_t n, const AdagradHyper& hyper) {
  adagrad_impl(param, grad, sum, n, hyper);
}
void adagrad_update(double* param, const double* grad, double* sum, int64_t n, const AdagradHyper& hyper) {
  adagrad_impl(param, grad, sum, n, hyper);
}

void rmsprop_update(float* param, const float* grad, float* square_avg, float* grad_avg, float* momentum_buffer,
                    int64_t n, const RmspropHyper& hyper) {
  rmsprop_impl(param, grad, square_avg, grad_avg, momentum_buffer, n, hyper);
}
void rmsprop_update(double* param, const double* grad, double* square_avg, double* grad_avg,
                    double* momentum_buffer, int64_t n, const RmspropHyper& hyper) {
  rmsprop_impl(param, grad, square_avg, grad_avg, momentum_buffer, n, hyper);
}

void adam_update(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, float* max_exp_avg_sq,
                 int64_t n, const AdamHyper& hyper) {
  adam_impl(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, n, hyper);
}
void adam_update(double* param, const double* grad, double* exp_avg, double* exp_avg_sq, double* max_exp_avg_sq,
                 int64_t n, const AdamHyper& hyper) {
  adam_impl(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, n, hyper);
}

double sum_of_squares(const float* x, int64_t n) { return sum_of_squares_impl(x, n); }
double sum_of_squares(const double* x, int64_t n) { return sum_of_squares_impl(x, n); }
void scale(float* x, int64_t n, double factor) { scale_impl(x, n, factor); }
void scale(double* x, int64_t n, double factor) { scale_impl(x, n, factor); }
void clamp(float* x, int64_t n, double low, double high) { clamp_impl(x, n, low, high); }
void clamp(double* x, int64_t n, double low, double high) { clamp_impl(x, n, low, high); }
bool all_finite(const float* x, int64_t n) { return all_finite_impl(x, n); }
bool all_finite(const double* x, int64_t n) { return all_finite_impl(x, n); }

}  // namespace kiln::kernels::cpu

namespace kiln::kernels {
namespace {

// The buffer of an optional state view (null when unused), typed.
template <typename T>
T* data_or_null(const View& view) {
  return view.data ? view.as<T>() : nullptr;
}

// Runs body(T{}) with T the element type of an f32 or f64 update.
template <typename Body>
void with_update_type(const char* op, const View& param, Body&& body) {
  if (param.dtype == DType::f32) {
    body(float{});
  } else {
    KILN_CHECK(param.dtype == DType::f64, op, ": expected f32 or f64 buffers, got ", dtype_name(param.dtype));
    body(double{});
  }
}

}  // namespace

void CpuBackend::sgd_update(const View& param, const View& grad, const View& momentum_buffer, const SgdHyper& hyper) {
  with_update_type("sgd_update", param, [&](auto value) {
    using T = decltype(value);
    cpu::sgd_update(param.as<T>(), grad.as<T>(), data_or_null<T>(momentum_buffer), param.numel(), hyper);
  });
}

void CpuBackend::adagrad_update(const View& param, const View& grad, const View& sum, const AdagradHyper& hyper) {
  with_update_type("adagrad_update", param, [&](auto value) {
    using T = decltype(value);
    cpu::adagrad_update(param.as<T>(), grad.as<T>(), sum.as<T>(), param.numel(), hyper);
  });
}

void CpuBackend::rmsprop_update(const View& param, const View& grad, const View& square_avg, const View& grad_avg,
                                const View& momentum_buffer, const RmspropHyper& hyper) {
  with_update_type("rmsprop_update", param, [&](auto value) {
    using T = decltype(value);
    cpu::rmsprop_update(param.as<T>(), grad.as<T>(), square_avg.as<T>(), data_or_null<T>(grad_avg),
                        data_or_null<T>(momentum_buffer), param.numel(), hyper);
  });
}

void CpuBackend::adam_update(const View& param, const View& grad, const View& exp_avg, const View& exp_avg_sq,
                             const View& max_exp_avg_sq, const AdamHyper& hyper) {
  with_update_type("adam_update", param, [&](auto value) {
    using T = decltype(value);
    cpu::adam_update(param.as<T>(), grad.as<T>(), exp_avg.as<T>(), exp_avg_sq.as<T>(), data_or_null<T>(max_exp_avg_sq),
                     param.numel(), hyper);
  });
}

}  // namespace kiln::kernels
