// Fused optimizer updates on CUDA: SGD, AdaGrad, RMSProp, Adam/AdamW, one grid-stride pass
// each that reads a parameter, its gradient and its state once and writes them once.
//
// Every line mirrors kernels/cpu/optimizer_kernels.cpp (and through it torch.optim's
// single-tensor path): the same operations in the same order, fma exactly where the CPU kernel
// uses one, hyperparameters rounded to the buffer type first. With IEEE division and square
// root (nvcc's defaults; kiln does not pass --use_fast_math) a CUDA step should give the CPU
// step's bits; tests/cuda/test_cuda_optimizer.cpp checks it on a GPU.
#include <cmath>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/error.h"

namespace kiln::kernels {
namespace gpu {
namespace {

// Flags of one update, fixed per launch (uniform across the grid, so no divergence).
struct Flags {
  bool decay = false, momentum = false, first = false, nesterov = false, centered = false;
  bool coupled = false, decoupled = false, amsgrad = false;
};

template <typename T>
struct SgdScalars {
  T lr, momentum, keep, weight_decay;
};

template <typename T>
__global__ void sgd_kernel(T* param, const T* grad, T* buffer, int64_t n, SgdScalars<T> s, Flags flags) {
  for (int64_t i = thread_index(); i < n; i += thread_count()) {
    T d = grad[i];
    if (flags.decay) d = fma(s.weight_decay, param[i], d);  // d.add(p, alpha=wd)
    if (flags.momentum) {
      T b = flags.first ? d : fma(s.keep, d, buffer[i] * s.momentum);  // buf.mul_(m).add_(d, alpha=1-damp)
      buffer[i] = b;
      d = flags.nesterov ? fma(s.momentum, b, d) : b;  // d.add(buf, alpha=m)
    }
    param[i] = fma(s.lr, d, param[i]);  // p.add_(d, alpha=-lr)
  }
}

template <typename T>
__global__ void adagrad_kernel(T* param, const T* grad, T* sum, int64_t n, T clr, T eps, T weight_decay, Flags flags) {
  for (int64_t i = thread_index(); i < n; i += thread_count()) {
    T g = grad[i];
    if (flags.decay) g = fma(weight_decay, param[i], g);  // g.add(p, alpha=wd)
    T total = fma(g, g, sum[i]);                           // sum.addcmul_(g, g)
    sum[i] = total;
    param[i] = param[i] + (clr * g) / (sqrt(total) + eps);  // p.addcdiv_(g, std, value=-clr)
  }
}

template <typename T>
struct RmspropScalars {
  T lr, alpha, one_minus_alpha, eps, weight_decay, momentum;
};

template <typename T>
__global__ void rmsprop_kernel(T* param, const T* grad, T* square_avg, T* grad_avg, T* buffer, int64_t n,
                               RmspropScalars<T> s, Flags flags) {
  for (int64_t i = thread_index(); i < n; i += thread_count()) {
    T g = grad[i];
    if (flags.decay) g = fma(s.weight_decay, param[i], g);          // g.add(p, alpha=wd)
    T sq = fma(s.one_minus_alpha * g, g, square_avg[i] * s.alpha);  // sq.mul_(alpha).addcmul_(g, g, 1-alpha)
    square_avg[i] = sq;
    T avg;
    if (flags.centered) {
      T ga = fma(s.one_minus_alpha, g, grad_avg[i] * s.alpha);  // ga.mul_(alpha).add_(g, alpha=1-alpha)
      grad_avg[i] = ga;
      avg = sqrt(fma(-ga, ga, sq)) + s.eps;  // sq.addcmul(ga, ga, value=-1).sqrt_().add_(eps)
    } else {
      avg = sqrt(sq) + s.eps;  // sq.sqrt().add_(eps)
    }
    if (flags.momentum) {
      T b = multiply_rounded(buffer[i], s.momentum) + g / avg;  // buf.mul_(m).addcdiv_(g, avg)
      buffer[i] = b;
      param[i] = fma(s.lr, b, param[i]);  // p.add_(buf, alpha=-lr)
    } else {
      param[i] = param[i] + (s.lr * g) / avg;  // p.addcdiv_(g, avg, value=-lr)
    }
  }
}

template <typename T>
struct AdamScalars {
  T beta1, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, decay_factor, step_size, correction2_sqrt;
};

template <typename T>
__global__ void adam_kernel(T* param, const T* grad, T* exp_avg, T* exp_avg_sq, T* max_exp_avg_sq, int64_t n,
                            AdamScalars<T> s, Flags flags) {
  for (int64_t i = thread_index(); i < n; i += thread_count()) {
    T p = param[i];
    T g = grad[i];
    if (flags.decoupled) p = p * s.decay_factor;           // p.mul_(1 - lr * wd)
    if (flags.coupled) g = fma(s.weight_decay, p, g);      // g.add(p, alpha=wd)
    T m = fma(s.one_minus_beta1, g, exp_avg[i] * s.beta1);  // m.mul_(b1).add_(g, alpha=1-b1)
    T v = fma(s.one_minus_beta2 * g, g, exp_avg_sq[i] * s.beta2);  // v.mul_(b2).addcmul_(g, g, 1-b2)
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    if (flags.amsgrad) {
      T previous = max_exp_avg_sq[i];
      v = (v > previous || v != v) ? v : previous;  // torch.maximum: NaN propagates
      max_exp_avg_sq[i] = v;
    }
    // denom = (v.sqrt() / sqrt(bc2)).add_(eps);  p.addcdiv_(m, denom, value=-lr/bc1)
    param[i] = p + (s.step_size * m) / (sqrt(v) / s.correction2_sqrt + s.eps);
  }
}

// Runs body(T{}) for an f32 or f64 update, after checking the buffers.
template <typename Body>
void with_update_type(const char* op, const View& param, const View& grad, Body&& body) {
  KILN_CHECK(grad.dtype == param.dtype && grad.numel() == param.numel(), op, ": the gradient's dtype or size differs");
  if (param.dtype == DType::f32) {
    body(float{});
  } else {
    KILN_CHECK(param.dtype == DType::f64, op, ": expected f32 or f64 buffers, got ", dtype_name(param.dtype));
    body(double{});
  }
}

template <typename T>
T* data_or_null(const View& view) {
  return view.data ? view.as<T>() : nullptr;
}

}  // namespace
}  // namespace gpu

void CudaBackend::sgd_update(const View& param, const View& grad, const View& momentum_buffer, const SgdHyper& hyper) {
  gpu::with_update_type("sgd_update", param, grad, [&](auto value) {
    using T = decltype(value);
    const int64_t n = param.numel();
    if (n == 0) return;
    gpu::SgdScalars<T> s{static_cast<T>(-hyper.lr), static_cast<T>(hyper.momentum),
                         static_cast<T>(1.0 - hyper.dampening), static_cast<T>(hyper.weight_decay)};
    gpu::Flags flags;
    flags.decay = hyper.weight_decay != 0;
    flags.momentum = hyper.momentum != 0;
    flags.first = hyper.first_step;
    flags.nesterov = hyper.nesterov;
    cudaStream_t stream = gpu::stream_for("sgd_update", param);
    gpu::sgd_kernel<T><<<gpu::grid_for(n), gpu::kBlock, 0, stream>>>(param.as<T>(), grad.as<T>(),
                                                                     gpu::data_or_null<T>(momentum_buffer), n, s, flags);
    KILN_CUDA_CHECK_LAUNCH();
  });
}

void CudaBackend::adagrad_update(const View& param, const View& grad, const View& sum, const AdagradHyper& hyper) {
  gpu::with_update_type("adagrad_update", param, grad, [&](auto value) {
    using T = decltype(value);
    const int64_t n = param.numel();
    if (n == 0) return;
    gpu::Flags flags;
    flags.decay = hyper.weight_decay != 0;
    cudaStream_t stream = gpu::stream_for("adagrad_update", param);
    gpu::adagrad_kernel<T><<<gpu::grid_for(n), gpu::kBlock, 0, stream>>>(
        param.as<T>(), grad.as<T>(), sum.as<T>(), n, static_cast<T>(-hyper.clr), static_cast<T>(hyper.eps),
        static_cast<T>(hyper.weight_decay), flags);
    KILN_CUDA_CHECK_LAUNCH();
  });
}

void CudaBackend::rmsprop_update(const View& param, const View& grad, const View& square_avg, const View& grad_avg,
                                 const View& momentum_buffer, const RmspropHyper& hyper) {
  gpu::with_update_type("rmsprop_update", param, grad, [&](auto value) {
    using T = decltype(value);
    const int64_t n = param.numel();
    if (n == 0) return;
    gpu::RmspropScalars<T> s{static_cast<T>(-hyper.lr),         static_cast<T>(hyper.alpha),
                             static_cast<T>(1.0 - hyper.alpha), static_cast<T>(hyper.eps),
                             static_cast<T>(hyper.weight_decay), static_cast<T>(hyper.momentum)};
    gpu::Flags flags;
    flags.decay = hyper.weight_decay != 0;
    flags.centered = hyper.centered;
    flags.momentum = hyper.momentum > 0;
    cudaStream_t stream = gpu::stream_for("rmsprop_update", param);
    gpu::rmsprop_kernel<T><<<gpu::grid_for(n), gpu::kBlock, 0, stream>>>(
        param.as<T>(), grad.as<T>(), square_avg.as<T>(), gpu::data_or_null<T>(grad_avg),
        gpu::data_or_null<T>(momentum_buffer), n, s, flags);
    KILN_CUDA_CHECK_LAUNCH();
  });
}

void CudaBackend::adam_update(const View& param, const View& grad, const View& exp_avg, const View& exp_avg_sq,
                              const View& max_exp_avg_sq, const AdamHyper& hyper) {
  gpu::with_update_type("adam_update", param, grad, [&](auto value) {
    using T = decltype(value);
    const int64_t n = param.numel();
    if (n == 0) return;
    gpu::AdamScalars<T> s{static_cast<T>(hyper.beta1),
                          static_cast<T>(1.0 - hyper.beta1),
                          static_cast<T>(hyper.beta2),
                          static_cast<T>(1.0 - hyper.beta2),
                          static_cast<T>(hyper.eps),
                          static_cast<T>(hyper.weight_decay),
                          static_cast<T>(1.0 - hyper.lr * hyper.weight_decay),
                          static_cast<T>(-(hyper.lr / hyper.bias_correction1)),
                          static_cast<T>(std::sqrt(hyper.bias_correction2))};
    const bool decay = hyper.weight_decay != 0;
    gpu::Flags flags;
    flags.coupled = decay && !hyper.decoupled_weight_decay;
    flags.decoupled = decay && hyper.decoupled_weight_decay;
    flags.amsgrad = hyper.amsgrad;
    cudaStream_t stream = gpu::stream_for("adam_update", param);
    gpu::adam_kernel<T><<<gpu::grid_for(n), gpu::kBlock, 0, stream>>>(
        param.as<T>(), grad.as<T>(), exp_avg.as<T>(), exp_avg_sq.as<T>(), gpu::data_or_null<T>(max_exp_avg_sq), n, s,
        flags);
    KILN_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace kiln::kernels
