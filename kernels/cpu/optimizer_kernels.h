// Fused optimizer updates and gradient-clipping reductions on contiguous CPU buffers.
//
// Each update reads a parameter, its gradient and its optimizer state once and writes them
// once: one pass, no temporaries. The interface is "pointers + element count + a struct of
// scalar hyperparameters" so that the CUDA kernels can mirror it one for one.
//
// Arithmetic runs in the buffer's own type (float for f32, double for f64) with every scalar
// hyperparameter rounded to that type first, rounding each intermediate where torch.optim's
// single-tensor path does (optimizer_kernels.cpp lists the op each line mirrors). Scalars that
// depend on the step (bias corrections, AdaGrad's decayed lr) are computed in double by the
// caller.
//
// All buffers of one call hold `n` elements and do not alias each other.
#pragma once

#include <cstdint>

#include "kernels/optimizer_update.h"

namespace kiln::kernels::cpu {

using kernels::AdagradHyper;
using kernels::AdamHyper;
using kernels::RmspropHyper;
using kernels::SgdHyper;

// SGD:  d = g + weight_decay * p
//       buf = d                                        (first step)
//       buf = momentum * buf + (1 - dampening) * d     (later steps)
//       d = nesterov ? d + momentum * buf : buf        (when momentum != 0)
//       p = p - lr * d
// momentum_buffer may be null when momentum == 0.
void sgd_update(float* param, const float* grad, float* momentum_buffer, int64_t n, const SgdHyper& hyper);
void sgd_update(double* param, const double* grad, double* momentum_buffer, int64_t n, const SgdHyper& hyper);

// AdaGrad: g = g + weight_decay * p;  sum = sum + g * g;  p = p - clr * g / (sqrt(sum) + eps)
// where clr = lr / (1 + (step - 1) * lr_decay) is computed by the caller.
void adagrad_update(float* param, const float* grad, float* sum, int64_t n, const AdagradHyper& hyper);
void adagrad_update(double* param, const double* grad, double* sum, int64_t n, const AdagradHyper& hyper);

// RMSProp: g = g + weight_decay * p
//          sq = alpha * sq + (1 - alpha) * g * g
//          avg = sqrt(sq) + eps, or centered: ga = alpha * ga + (1 - alpha) * g,
//                                             avg = sqrt(sq - ga * ga) + eps
//          momentum > 0: buf = momentum * buf + g / avg;  p = p - lr * buf
//          otherwise:    p = p - lr * g / avg
// grad_avg may be null unless centered; momentum_buffer may be null unless momentum > 0.
void rmsprop_update(float* param, const float* grad, float* square_avg, float* grad_avg, float* momentum_buffer,
                    int64_t n, const RmspropHyper& hyper);
void rmsprop_update(double* param, const double* grad, double* square_avg, double* grad_avg,
                    double* momentum_buffer, int64_t n, const RmspropHyper& hyper);

// Adam / AdamW:
//   decoupled (AdamW): p = p * (1 - lr * weight_decay)
//   coupled (Adam):    g = g + weight_decay * p
//   m = beta1 * m + (1 - beta1) * g
//   v = beta2 * v + (1 - beta2) * g * g
//   amsgrad: v_max = max(v_max, v), used in place of v below
//   p = p - (lr / bias_correction1) * m / (sqrt(v) / sqrt(bias_correction2) + eps)
// bias_correction1 = 1 - beta1^step and bias_correction2 = 1 - beta2^step (or 1 and 1 when bias
// correction is off). max_exp_avg_sq may be null unless amsgrad.
void adam_update(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, float* max_exp_avg_sq,
                 int64_t n, const AdamHyper& hyper);
void adam_update(double* param, const double* grad, double* exp_avg, double* exp_avg_sq, double* max_exp_avg_sq,
                 int64_t n, const AdamHyper& hyper);

// Gradient clipping. sum_of_squares accumulates in double over fixed-size blocks, so the
// result does not depend on the number of threads.
double sum_of_squares(const float* x, int64_t n);
double sum_of_squares(const double* x, int64_t n);
// x = x * factor (factor rounded to x's type, as torch's mul_ does).
void scale(float* x, int64_t n, double factor);
void scale(double* x, int64_t n, double factor);
// x = clamp(x, low, high); NaN stays NaN.
void clamp(float* x, int64_t n, double low, double high);
void clamp(double* x, int64_t n, double low, double high);
// Whether every element is finite (no NaN, no +-inf).
bool all_finite(const float* x, int64_t n);
bool all_finite(const double* x, int64_t n);

}  // namespace kiln::kernels::cpu
