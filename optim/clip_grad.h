// Gradient clipping and non-finite gradient detection over named parameters.
//
// clip_grad_norm scales every gradient by max_norm / (total_norm + 1e-6) when that is below 1,
// where total_norm is the L2 norm of all gradients together, exactly as
// torch.nn.utils.clip_grad_norm_; the squared norm is accumulated in double whatever the
// gradient dtype. Parameters without a gradient are skipped.
//
// In a distributed run each process holds part of the gradients (ZeRO shards, tensor-parallel
// slices): reduce_squared_norm maps the local sum of squares to the global one (an all-reduce),
// so every rank computes the same norm and the same scale.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "autograd/parameter.h"

namespace kiln::optim {

struct ClipGradNormOptions {
  // local sum of squared gradient elements -> global sum; identity when unset.
  std::function<double(double local_squared_norm)> reduce_squared_norm;
  // A NaN or infinite total norm throws kiln::Error naming the parameters with non-finite
  // gradients (the default); when false it is returned and the gradients are left unchanged,
  // so that the caller can skip the step.
  bool error_if_nonfinite = true;
};

// The global L2 norm of every defined gradient (after reduce_squared_norm), without clipping.
double grad_norm(const NamedParameters& parameters,
                 const std::function<double(double)>& reduce_squared_norm = nullptr);
// Clips the gradients in place to a global L2 norm of max_norm; returns the norm before clipping.
double clip_grad_norm(const NamedParameters& parameters, double max_norm, const ClipGradNormOptions& options = {});
// Clamps every gradient element to [-clip_value, clip_value] in place (NaN stays NaN).
void clip_grad_value(const NamedParameters& parameters, double clip_value);
// The names of the parameters whose gradient holds a NaN or an infinity, in order.
std::vector<std::string> nonfinite_gradients(const NamedParameters& parameters);

}  // namespace kiln::optim
