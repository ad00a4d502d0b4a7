// Fused normalisation over the last dim, forward and backward in one kernel each.
#pragma once

#include "autograd/tensor.h"

namespace kiln {

// (x - mean) / sqrt(var + eps) * weight + bias over the last dim; weight and bias optional.
Tensor layer_norm(const Tensor& x, const Tensor& weight = Tensor(), const Tensor& bias = Tensor(), double eps = 1e-5);
// x / sqrt(mean(x^2) + eps) * weight over the last dim; weight optional.
Tensor rms_norm(const Tensor& x, const Tensor& weight = Tensor(), double eps = 1e-6);

}  // namespace kiln
